"""Telemetry adapters: bus/faust consumers, publisher, HTTP ingest."""
