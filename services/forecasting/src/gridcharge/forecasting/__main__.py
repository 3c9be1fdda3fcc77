"""`python -m gridcharge.forecasting`: the forecasting service alone (its container's entry point)."""

from __future__ import annotations

import sys

from gridcharge.forecasting.main import create_service
from gridcharge.shared.service import run_service


def main() -> int:
    # Alone, the service listens on its own port (8082) unless GRIDCHARGE_HTTP_PORT says otherwise.
    return run_service("forecasting", [create_service], 8082)


if __name__ == "__main__":
    sys.exit(main())
