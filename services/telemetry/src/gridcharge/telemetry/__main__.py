"""`python -m gridcharge.telemetry`: the telemetry service alone (its container's entry point)."""

import sys

from gridcharge.telemetry.main import main

sys.exit(main())
