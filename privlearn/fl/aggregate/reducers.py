"""The client-rows stage of a chain: per-row transforms, and the reducers that collapse the
stacked rows into one server-side update."""

from __future__ import annotations

from privlearn.fl import tree as T
from privlearn.fl.aggregate.transform import Params, Transform, Updates, check_stage, stateless


def weighted_mean() -> Transform:
    """Reduce client rows to sum_k w_k u_k / sum_k w_k (FedAvg's sample-weighted average)."""

    def fn(u: Updates, params: Params) -> Updates:
        check_stage(u, True, "weighted_mean")
        w = u.weights / u.weights.sum()
        return Updates(T.weighted_sum(u.values, w))

    return stateless(fn)


def mean() -> Transform:
    """Reduce client rows to their unweighted mean."""

    def fn(u: Updates, params: Params) -> Updates:
        check_stage(u, True, "mean")
        return Updates(T.tree_map(lambda t: t.mean(0), u.values))

    return stateless(fn)


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
