"""I/O of the gateway: WebSocket server, station registry in the store, command dispatcher, operator API."""
