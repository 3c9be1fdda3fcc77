"""gridcharge telemetry."""
