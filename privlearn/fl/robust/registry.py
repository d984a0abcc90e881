"""Attacks and defences by name, built with checked hyper-parameters.

Each attack or defence module registers its builders with `@attack("name")` or
`@defence("name")`. An attack builder takes the `DataInfo` of the run (what the attacker
knows of the task: classes, input shape, its data) and keyword hyper-parameters; a
defence builder takes keyword hyper-parameters only. Unknown names and unknown or
ill-typed hyper-parameters are errors that list what is known.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from privlearn.fl.robust.threat import Attack, Defence

ATTACKS: dict[str, Callable[..., Attack]] = {}
DEFENCES: dict[str, Callable[..., Defence]] = {}


@dataclass(frozen=True)
class DataInfo:
    """What an attack builder may use: the task's shape and the pooled training data (an
    attacker builds its edge-case set or trigger from data like the task's)."""

    n_classes: int
    input_shape: tuple[int, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    clients: list[np.ndarray]
    seed: int


def attack(name: str) -> Callable:
    def register(builder: Callable[..., Attack]) -> Callable[..., Attack]:
        ATTACKS[name] = builder
        return builder

    return register


def defence(name: str) -> Callable:
    def register(builder: Callable[..., Defence]) -> Callable[..., Defence]:
        DEFENCES[name] = builder
        return builder

    return register


def hyper_parameters(builder: Callable) -> dict[str, Any]:
    """A builder's keyword hyper-parameters and their defaults (the DataInfo is not one)."""
    sig = inspect.signature(builder)
    return {k: p.default for k, p in sig.parameters.items() if k != "info"}


def _build(kind: str, table: dict, name: str, hp: dict, *args: Any) -> Any:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(table))}")
    known = hyper_parameters(table[name])
    unknown = sorted(set(hp) - set(known))
    if unknown:
        listed = ", ".join(f"{k}={v}" for k, v in known.items()) or "none"
        raise ValueError(f"{kind} {name} has no parameter {', '.join(unknown)}; it takes: {listed}")
    for k, v in hp.items():
        default = known[k]
        if isinstance(default, bool) and not isinstance(v, bool):
            raise ValueError(f"{kind} {name}: {k} must be true or false, got {v!r}")
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if numeric and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"{kind} {name}: {k} must be a number, got {v!r}")
    return table[name](*args, **hp)


def build_attack(name: str, info: DataInfo, **hp: Any) -> Attack:
    return _build("attack", ATTACKS, name, hp, info)


def build_defence(name: str, **hp: Any) -> Defence:
    return _build("defence", DEFENCES, name, hp)
