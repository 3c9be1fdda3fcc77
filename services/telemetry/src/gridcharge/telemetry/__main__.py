"""`python -m gridcharge.telemetry`: the telemetry service alone (its container's entry point)."""

from gridcharge.telemetry.main import main

main()
