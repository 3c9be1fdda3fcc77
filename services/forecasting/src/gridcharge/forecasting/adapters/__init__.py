"""I/O adapters of the forecasting service (weather HTTP client, topology, bus/store)."""
