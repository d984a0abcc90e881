"""Coordinate-wise robust reducers: each coordinate of every field is aggregated on its own."""

from __future__ import annotations

import torch

from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.robust.registry import defence
from privlearn.fl.robust.threat import Defence, DefenceContext, aggregate_rows


@defence("median")
def median() -> Defence:
    """Coordinate-wise median (Yin et al. 2018): per coordinate, of every floating field
    (model delta, buffers, control variates). Tolerates fewer than half Byzantine rows per
    coordinate; collapses under attacks that shift every coordinate a little (ALIE)."""

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        out = aggregate_rows(u, lambda m, w: m.median(0).values)
        return out, state, torch.ones(len(u.weight))

    return Defence("median", "Byzantine rows, < 50 % per coordinate", apply)
