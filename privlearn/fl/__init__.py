"""Federated learning: algorithms as pure functions, engines, data partitions, runs."""
