"""`python -m gridcharge.gridsignals`: the grid-signals service (OpenADR VEN) alone (its container's entry point)."""

from __future__ import annotations

import sys

from gridcharge.gridsignals.main import main

if __name__ == "__main__":
    sys.exit(main())
