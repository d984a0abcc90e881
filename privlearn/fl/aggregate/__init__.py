"""Server-side aggregation as composable transforms (Optax style), and update screening.

A `Transform` is an `(init, update)` pair. `update(u, state, params)` maps `Updates` to
`Updates`: stacked per-client rows (with weights) before a reducer such as
`weighted_mean()`, one server step after it. `chain` composes them, so robust aggregators,
clipping and DP noise slot in between without touching the algorithms:

    server = chain(clip_by_norm(1.0), weighted_mean(), adam(lr=0.01))

One module per concept: `transform` (the algebra: Updates, Transform, chain, stateless,
scale), `reducers` (the client-rows stage: clip_by_norm, weighted_mean, mean), `optimisers`
(the server step: sgd, momentum, adam, yogi, adagrad, apply_updates) and `screening`
(Rejection, shape_mismatch, screen). Screening is not a transform: a rejected client must
vanish from *every* part of its update (model delta, control variates, statistics), so the
runner drops its rows before any algorithm code sees them.
"""

from __future__ import annotations

from privlearn.fl.aggregate.optimisers import adagrad, adam, apply_updates, momentum, sgd, yogi
from privlearn.fl.aggregate.reducers import clip_by_norm, mean, weighted_mean
from privlearn.fl.aggregate.screening import Rejection, screen, shape_mismatch
from privlearn.fl.aggregate.transform import Params, Transform, Updates, chain, scale, stateless

__all__ = [
    "Params",
    "Rejection",
    "Transform",
    "Updates",
    "adagrad",
    "adam",
    "apply_updates",
    "chain",
    "clip_by_norm",
    "mean",
    "momentum",
    "scale",
    "screen",
    "sgd",
    "shape_mismatch",
    "stateless",
    "weighted_mean",
    "yogi",
]
