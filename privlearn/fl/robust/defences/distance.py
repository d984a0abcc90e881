"""Distance-based selection: rows are scored by their distances to the other rows."""

from __future__ import annotations

import torch

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.robust.registry import defence
from privlearn.fl.robust.threat import Defence, DefenceContext, pairwise_sq_dists, select_rows


def krum_scores(m: torch.Tensor, f: int) -> torch.Tensor:
    """Krum's score of each row: the sum of squared distances to its K - f - 2 nearest other
    rows (Blanchard et al. 2017, Eq. 3)."""
    d = pairwise_sq_dists(m)
    k = m.shape[0]
    nearest = d.sort(1).values[:, 1 : k - f - 1]  # column 0 is the row itself (distance 0)
    return nearest.sum(1)


def _krum_check(k: int, f: int) -> str | None:
    return None if k >= 2 * f + 3 else f"Krum needs K >= 2f + 3 = {2 * f + 3}"


@defence("krum")
def krum() -> Defence:
    """Krum (Blanchard et al., NeurIPS 2017): keeps the one row with the smallest score,
    every field of it. Assumes K >= 2f + 3 with f Byzantine rows."""

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        scores = krum_scores(T.flat_rows(u.delta).to(torch.float64), ctx.f)
        keep = torch.zeros(len(scores), dtype=torch.bool)
        keep[scores.argmin()] = True
        return select_rows(u, keep), state, keep.to(torch.float64)

    return Defence(
        "krum", "Byzantine rows; assumes K >= 2f + 3", apply, check=_krum_check, selects=True
    )
