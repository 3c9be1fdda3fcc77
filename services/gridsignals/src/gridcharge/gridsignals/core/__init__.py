"""Pure logic of the grid-signals service (no I/O): OpenADR objects → limits, VTN reachability, usage reports."""
