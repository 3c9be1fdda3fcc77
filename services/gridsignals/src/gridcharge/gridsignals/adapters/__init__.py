"""I/O of the grid-signals service: the VTN's REST API (httpx), bus records, metrics."""
