"""`python -m gridcharge.forecasting`: the forecasting service alone (its container's entry point)."""

from __future__ import annotations

import sys

from gridcharge.forecasting.main import main

if __name__ == "__main__":
    sys.exit(main())
