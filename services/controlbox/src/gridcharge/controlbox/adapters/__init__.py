"""I/O of the control-box service: Modbus relay input, LPC HTTP/file input, bus codec, metrics."""
