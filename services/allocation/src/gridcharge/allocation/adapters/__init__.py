"""I/O of the allocation service: bus decoding/encoding, store (leader lease, plans), metrics."""
