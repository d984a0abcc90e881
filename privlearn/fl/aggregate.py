"""Server-side aggregation as composable transforms (Optax style), and update screening.

A `Transform` is an `(init, update)` pair. `update(u, state, params)` maps `Updates` to
`Updates`: stacked per-client rows (with weights) before a reducer such as
`weighted_mean()`, one server step after it. `chain` composes them, so robust aggregators,
clipping and DP noise slot in between without touching the algorithms:

    server = chain(clip_by_norm(1.0), weighted_mean(), adam(lr=0.01))

Screening (`screen`) is not a transform: a rejected client must vanish from *every* part of
its update (model delta, control variates, statistics), so the runner drops its rows before
any algorithm code sees them.
"""

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


def _need(u: Updates, stacked: bool, who: str) -> None:
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


def _stateless(fn: Callable[[Updates, Params], Updates]) -> Transform:
    return Transform(lambda params: (), lambda u, s, p: (fn(u, p), s))


def weighted_mean() -> Transform:
    """Reduce client rows to sum_k w_k u_k / sum_k w_k (FedAvg's sample-weighted average)."""

    def fn(u: Updates, params: Params) -> Updates:
        _need(u, True, "weighted_mean")
        w = u.weights / u.weights.sum()
        return Updates(T.weighted_sum(u.values, w))

    return _stateless(fn)


def mean() -> Transform:
    """Reduce client rows to their unweighted mean."""

    def fn(u: Updates, params: Params) -> Updates:
        _need(u, True, "mean")
        return Updates(T.tree_map(lambda t: t.mean(0), u.values))

    return _stateless(fn)


def clip_by_norm(max_norm: float) -> Transform:
    """Scale each client's row down to L2 norm <= max_norm (all leaves together)."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")

    def fn(u: Updates, params: Params) -> Updates:
        _need(u, True, "clip_by_norm")
        norms = T.flat_rows(u.values).norm(dim=1)
        factor = (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
        return Updates(
            T.tree_map(lambda t: t * factor.view((-1,) + (1,) * (t.dim() - 1)), u.values), u.weights
        )

    return _stateless(fn)


def scale(c: float) -> Transform:
    """Multiply the server update by a constant."""
    return _stateless(lambda u, p: Updates(T.tree_map(lambda t: c * t, u.values), u.weights))


def sgd(lr: float = 1.0) -> Transform:
    """Server step = lr * mean update (lr = 1: plain FedAvg; the server step size eta_g)."""

    def fn(u: Updates, params: Params) -> Updates:
        _need(u, False, "sgd")
        return Updates(T.tree_map(lambda t: lr * t, u.values))

    return _stateless(fn)


def momentum(lr: float = 1.0, beta: float = 0.9) -> Transform:
    """FedAvgM (Hsu et al. 2019): v <- beta v + delta; step = lr v."""

    def update(u: Updates, v: Any, params: Params) -> tuple[Updates, Any]:
        _need(u, False, "momentum")
        v = T.tree_map(lambda a, d: beta * a + d, v, u.values)
        return Updates(T.tree_map(lambda a: lr * a, v)), v

    return Transform(lambda params: T.zeros_like(params), update)


def _adaptive(kind: str, lr: float, beta1: float, beta2: float, tau: float) -> Transform:
    """Reddi et al. 2021, Algorithm 2: m <- b1 m + (1-b1) d; v per kind; step = lr m/(sqrt v + tau).

    v starts at tau^2 as the paper requires (v_-1 >= tau^2); there is no bias correction."""

    def init(params: Params) -> dict:
        return {
            "m": T.zeros_like(params),
            "v": T.tree_map(lambda t: torch.full_like(t, tau**2), params),
        }

    def update(u: Updates, s: dict, params: Params) -> tuple[Updates, dict]:
        _need(u, False, f"fed{kind}")
        d = u.values
        m = T.tree_map(lambda a, g: beta1 * a + (1 - beta1) * g, s["m"], d)
        if kind == "adagrad":
            v = T.tree_map(lambda a, g: a + g * g, s["v"], d)
        elif kind == "adam":
            v = T.tree_map(lambda a, g: beta2 * a + (1 - beta2) * g * g, s["v"], d)
        else:  # yogi
            v = T.tree_map(lambda a, g: a - (1 - beta2) * g * g * torch.sign(a - g * g), s["v"], d)
        step = T.tree_map(lambda a, b: lr * a / (torch.sqrt(b) + tau), m, v)
        return Updates(step), {"m": m, "v": v}

    return Transform(init, update)


def adam(lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> Transform:
    """FedAdam server optimiser."""
    return _adaptive("adam", lr, beta1, beta2, tau)


def yogi(lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> Transform:
    """FedYogi server optimiser."""
    return _adaptive("yogi", lr, beta1, beta2, tau)


def adagrad(lr: float = 0.1, beta1: float = 0.0, tau: float = 1e-3) -> Transform:
    """FedAdagrad server optimiser (beta1 = 0: no server momentum, as Flower's FedAdagrad)."""
    return _adaptive("adagrad", lr, beta1, 0.0, tau)


def apply_updates(params: Params, u: Updates) -> Params:
    """params + server step."""
    _need(u, False, "apply_updates")
    return {k: params[k] + u.values[k] if k in u.values else params[k] for k in params}


# --- screening -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    client: int
    reason: str

    def __str__(self) -> str:
        return f"client {self.client}: {self.reason}"


def shape_mismatch(update: Any, template: Any) -> str | None:
    """Why one client's update does not have the template's structure and shapes, or None."""
    from torch.utils import _pytree as pytree

    got, got_spec = pytree.tree_flatten(update)
    want, want_spec = pytree.tree_flatten(template)
    if got_spec != want_spec:
        return "update has different fields than expected"
    paths = [pytree.keystr(p) for p, _ in pytree.tree_flatten_with_path(template)[0]]
    for path, g, w in zip(paths, got, want, strict=True):
        if not isinstance(g, torch.Tensor) or g.shape != w.shape:
            shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            return f"{path} has shape {shape}, expected {tuple(w.shape)}"
    return None


def screen(updates: Any, client_ids: torch.Tensor) -> tuple[torch.Tensor, list[Rejection]]:
    """Rows (clients) of a stacked update that hold NaN or Inf anywhere are rejected.

    Returns a boolean keep-mask over rows and one Rejection per dropped client."""
    from torch.utils import _pytree as pytree

    keep = torch.ones(len(client_ids), dtype=torch.bool, device=client_ids.device)
    bad_fields: dict[int, list[str]] = {}
    for path, leaf in pytree.tree_flatten_with_path(updates)[0]:
        finite = torch.isfinite(leaf.reshape(leaf.shape[0], -1)).all(dim=1)
        for row in torch.nonzero(~finite).flatten().tolist():
            bad_fields.setdefault(row, []).append(pytree.keystr(path))
        keep &= finite
    rejections = [
        Rejection(
            int(client_ids[r]),
            "non-finite values (NaN/Inf) in "
            + ", ".join(bad_fields[r][:3])
            + (" ..." if len(bad_fields[r]) > 3 else ""),
        )
        for r in sorted(bad_fields)
    ]
    return keep, rejections
