"""`python -m gridcharge.forecasting`: the forecasting service alone (its container's entry point)."""

from __future__ import annotations

import asyncio
import os
import sys

from gridcharge.forecasting.main import create_service
from gridcharge.shared.errors import ConfigError
from gridcharge.shared.service import load_settings_and_topology, serve


def main() -> int:
    try:
        # Alone, the service listens on its own port (8082) unless GRIDCHARGE_HTTP_PORT says otherwise.
        port = None if os.environ.get("GRIDCHARGE_HTTP_PORT") else 8082
        settings, topology = load_settings_and_topology(http_port=port)
    except ConfigError as exc:
        print(f"gridcharge-forecasting: config error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve([create_service], settings, topology))
    return 0


if __name__ == "__main__":
    sys.exit(main())
