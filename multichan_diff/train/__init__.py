"""Training: the pure train step and its sharding over a device mesh."""
