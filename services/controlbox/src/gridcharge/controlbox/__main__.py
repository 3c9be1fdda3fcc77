"""`python -m gridcharge.controlbox`: the §14a control-box service alone (its container's entry point)."""

from __future__ import annotations

import sys

from gridcharge.controlbox.main import main

if __name__ == "__main__":
    sys.exit(main())
