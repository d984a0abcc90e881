"""Differential privacy for federated learning, its accounting, and the audits that measure
what it buys: central (user-level) DP-FedAvg as server transforms, local (sample-level)
DP-SGD inside the engines, and attacks (gradient inversion, membership inference, one-run
auditing) that turn a run into an empirical privacy lower bound."""
