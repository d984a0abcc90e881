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
class Split:
    """A reducer cut where secure aggregation cuts it. `summands(u, state)` maps stacked rows to
    stacked summands row by row (each client computes its own row from its own update and the
    public state); `from_sums(sums, state, params)` reduces from the sums of those summands
    alone, as `update` would from the rows."""

    summands: Callable[[Updates, Any], dict]
    from_sums: Callable[[dict, Any, Params], tuple[Updates, Any]]


@dataclass(frozen=True)
class Transform:
    init: Callable[[Params], Any]
    update: Callable[[Updates, Any, Params], tuple[Updates, Any]]
    split: Split | None = None  # reducers that need only sums (secure aggregation)


def check_stage(u: Updates, stacked: bool, who: str) -> None:
    """Refuse a transform placed on the wrong side of the reducer."""
    if u.stacked != stacked:
        where = "before" if stacked else "after"
        raise ValueError(f"{who} must come {where} the reducer (weighted_mean/mean) in chain()")


def chain(*transforms: Transform) -> Transform:
    """Apply transforms in order; the state is the tuple of their states. A chain whose first
    transform is a splittable reducer is splittable: its sums go through that reducer's
    `from_sums`, then through the rest of the chain."""

    def init(params: Params) -> tuple:
        return tuple(t.init(params) for t in transforms)

    def rest(u: Updates, first: Any, state: tuple, params: Params) -> tuple[Updates, tuple]:
        new = [first]
        for t, s in zip(transforms[1:], state[1:], strict=True):
            u, s = t.update(u, s, params)
            new.append(s)
        return u, tuple(new)

    def update(u: Updates, state: tuple, params: Params) -> tuple[Updates, tuple]:
        u, first = transforms[0].update(u, state[0], params)
        return rest(u, first, state, params)

    head = transforms[0].split if transforms else None
    if head is None:
        return Transform(init, update)

    def from_sums(sums: dict, state: tuple, params: Params) -> tuple[Updates, tuple]:
        u, first = head.from_sums(sums, state[0], params)
        return rest(u, first, state, params)

    return Transform(init, update, Split(lambda u, state: head.summands(u, state[0]), from_sums))


def stateless(fn: Callable[[Updates, Params], Updates]) -> Transform:
    """A transform without state from a function of (updates, params)."""
    return Transform(lambda params: (), lambda u, s, p: (fn(u, p), s))


def scale(c: float) -> Transform:
    """Multiply the updates by a constant (either side of the reducer)."""
    return stateless(lambda u, p: Updates(T.tree_map(lambda t: c * t, u.values), u.weights))
