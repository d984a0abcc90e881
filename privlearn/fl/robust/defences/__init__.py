"""Defences, one module per family; importing this package registers them by name."""

from privlearn.fl.robust.defences import (  # noqa: F401
    clipping,
    clustering,
    coordinate,
    distance,
    filtering,
    trust,
)
