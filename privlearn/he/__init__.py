"""CKKS homomorphic encryption, and nothing about machine learning.

The only package in privlearn that imports a crypto library. Layers above it call the
:class:`Evaluator` methods, so every algorithm runs on the simulator and on OpenFHE alike.
"""

from privlearn.he.backend import (
    BackendUnavailableError,
    Ciphertext,
    ClientContext,
    Evaluator,
    HEError,
    LevelError,
    MissingKeyError,
    Operand,
    ParameterMismatchError,
    available_backends,
    is_integer_scalar,
)
from privlearn.he.cost import CostCounter, Counts, TimeModel
from privlearn.he.io import EnvelopeError
from privlearn.he.noise import NoiseModel
from privlearn.he.params import PRESETS, CKKSParams, InsecureParametersError, get_params

__all__ = [
    "PRESETS",
    "BackendUnavailableError",
    "CKKSParams",
    "Ciphertext",
    "ClientContext",
    "CostCounter",
    "Counts",
    "EnvelopeError",
    "Evaluator",
    "HEError",
    "InsecureParametersError",
    "LevelError",
    "MissingKeyError",
    "NoiseModel",
    "Operand",
    "ParameterMismatchError",
    "TimeModel",
    "available_backends",
    "get_params",
    "is_integer_scalar",
]
