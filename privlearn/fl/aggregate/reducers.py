"""The client-rows stage of a chain: per-row transforms, and the reducers that collapse the
stacked rows into one server-side update."""

from __future__ import annotations

from dataclasses import replace

from privlearn.fl import tree as T
from privlearn.fl.aggregate.transform import (
    Params,
    Split,
    Transform,
    Updates,
    check_stage,
    stateless,
)


def _ratio(sums: dict, den: str) -> Updates:
    return Updates(T.tree_map(lambda t: t / sums[den].to(t.dtype), sums["values"]))


def weighted_mean() -> Transform:
    """Reduce client rows to sum_k w_k u_k / sum_k w_k (FedAvg's sample-weighted average);
    splittable: clients send w u and w."""

    def fn(u: Updates, params: Params) -> Updates:
        check_stage(u, True, "weighted_mean")
        w = u.weights / u.weights.sum()
        return Updates(T.weighted_sum(u.values, w))

    split = Split(
        lambda u, state: {"values": T.scale_rows(u.values, u.weights), "weight": u.weights},
        lambda sums, state, params: (_ratio(sums, "weight"), state),
    )
    return replace(stateless(fn), split=split)


def mean() -> Transform:
    """Reduce client rows to their unweighted mean; splittable: clients send u and 1."""

    def fn(u: Updates, params: Params) -> Updates:
        check_stage(u, True, "mean")
        return Updates(T.tree_map(lambda t: t.mean(0), u.values))

    split = Split(
        lambda u, state: {"values": u.values, "count": u.weights.new_ones(u.weights.shape)},
        lambda sums, state, params: (_ratio(sums, "count"), state),
    )
    return replace(stateless(fn), split=split)


def clip_by_norm(max_norm: float) -> Transform:
    """Scale each client's row down to L2 norm <= max_norm (all leaves together)."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")

    def fn(u: Updates, params: Params) -> Updates:
        check_stage(u, True, "clip_by_norm")
        norms = T.flat_rows(u.values).norm(dim=1)
        factor = (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
        return Updates(
            T.tree_map(lambda t: t * factor.view((-1,) + (1,) * (t.dim() - 1)), u.values), u.weights
        )

    return stateless(fn)
