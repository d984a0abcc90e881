"""Packed encrypted matrices and their products: HETAL's DiagABT and DiagATB (as published and
with fewer key switches), the baselines HETAL compared against, and their closed-form costs.

Depends on :mod:`privlearn.he` only.
"""

from privlearn.linalg.cost import Cost, Dims
from privlearn.linalg.matmul import (
    ALGORITHMS,
    Algorithm,
    diag_abt,
    diag_atb,
    dims_of,
    keyed_evaluator,
    rotation_keys,
)
from privlearn.linalg.packing import (
    BlockShape,
    EncMatrix,
    Layout,
    hetal_block_shape,
    padded_classes,
)

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "BlockShape",
    "Cost",
    "Dims",
    "EncMatrix",
    "Layout",
    "diag_abt",
    "diag_atb",
    "dims_of",
    "hetal_block_shape",
    "padded_classes",
    "keyed_evaluator",
    "rotation_keys",
]
