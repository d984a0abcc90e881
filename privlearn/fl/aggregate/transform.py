"""The transform algebra: what flows through a server chain, and how transforms compose."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from privlearn.fl import tree as T

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Updates:
    """`values`: a tree of tensors, stacked [K, ...] while `weights` ([K]) is set, a single
    server-side update once a reducer has set `weights` to None."""

    values: Any
    weights: torch.Tensor | None = None

    @property
    def stacked(self) -> bool:
        return self.weights is not None


@dataclass(frozen=True)
class Transform:
    init: Callable[[Params], Any]
    update: Callable[[Updates, Any, Params], tuple[Updates, Any]]


def check_stage(u: Updates, stacked: bool, who: str) -> None:
    """Refuse a transform placed on the wrong side of the reducer."""
    if u.stacked != stacked:
        where = "before" if stacked else "after"
        raise ValueError(f"{who} must come {where} the reducer (weighted_mean/mean) in chain()")


def chain(*transforms: Transform) -> Transform:
    """Apply transforms in order; the state is the tuple of their states."""

    def init(params: Params) -> tuple:
        return tuple(t.init(params) for t in transforms)

    def update(u: Updates, state: tuple, params: Params) -> tuple[Updates, tuple]:
        new = []
        for t, s in zip(transforms, state, strict=True):
            u, s = t.update(u, s, params)
            new.append(s)
        return u, tuple(new)

    return Transform(init, update)


def stateless(fn: Callable[[Updates, Params], Updates]) -> Transform:
    """A transform without state from a function of (updates, params)."""
    return Transform(lambda params: (), lambda u, s, p: (fn(u, p), s))


def scale(c: float) -> Transform:
    """Multiply the updates by a constant (either side of the reducer)."""
    return stateless(lambda u, p: Updates(T.tree_map(lambda t: c * t, u.values), u.weights))
