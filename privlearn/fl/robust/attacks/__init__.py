"""Attacks, one module per family; importing this package registers them by name."""

from privlearn.fl.robust.attacks import data, model, step  # noqa: F401
