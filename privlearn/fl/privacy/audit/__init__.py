"""Leakage audits: what an attacker recovers from a run (images from an update, membership
from a model), and the empirical epsilon lower bound that one training run supports."""
