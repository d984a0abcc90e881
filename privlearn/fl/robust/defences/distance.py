"""Distance-based rules: rows are scored, selected or weighted by their distances to the
other rows (one [K, K] matrix product, no loop over clients)."""

from __future__ import annotations

import torch

from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.robust.registry import defence
from privlearn.fl.robust.threat import (
    Defence,
    DefenceContext,
    aggregate_rows,
    delta_rows,
    mix_rows,
    pairwise_sq_dists,
    select_rows,
)


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
        scores = krum_scores(delta_rows(u), ctx.f)
        keep = torch.zeros(len(scores), dtype=torch.bool)
        keep[scores.argmin()] = True
        return select_rows(u, keep), state, keep.to(torch.float64)

    return Defence(
        "krum", "Byzantine rows; assumes K >= 2f + 3", apply, check=_krum_check, selects=True
    )


@defence("multi-krum")
def multi_krum(m: int = 0) -> Defence:
    """Multi-Krum (Blanchard et al. 2017): keeps the m rows with the smallest Krum scores
    (m = 0: K - f), every field of them, and averages them as the algorithm does. Assumes
    K >= 2f + 3."""
    if m < 0:
        raise ValueError(f"multi-krum m must be >= 0 (0: K - f), got {m}")

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        k = len(u.weight)
        scores = krum_scores(delta_rows(u), ctx.f)
        keep = torch.zeros(k, dtype=torch.bool)
        keep[scores.argsort()[: min(m or k - ctx.f, k)]] = True
        return select_rows(u, keep), state, keep.to(torch.float64)

    return Defence(
        "multi-krum", "Byzantine rows; assumes K >= 2f + 3", apply, check=_krum_check, selects=True
    )


def bulyan_selection(m: torch.Tensor, f: int) -> torch.Tensor:
    """Bulyan's first stage: theta = K - 2f rows picked one at a time by Krum on the rows
    not yet picked (El Mhamdi et al., ICML 2018, Alg. 1); their indices in pick order.

    The distances are computed and sorted once; each pick rescores every row over its
    nearest n - f - 2 neighbours still in (a masked cumulative count along the sorted
    rows), so a pick costs one pass over the [K, K] matrix, not a sort."""
    k = m.shape[0]
    d = pairwise_sq_dists(m)
    d.fill_diagonal_(float("inf"))  # a row is not its own neighbour
    near, order = d.sort(1)
    alive = torch.ones(k, dtype=torch.bool, device=m.device)
    picked = []
    for _ in range(k - 2 * f):
        n = int(alive.sum())
        neighbour = alive[order] & alive[:, None]
        take = neighbour & (neighbour.cumsum(1) <= max(1, n - f - 2))
        scores = torch.where(take, near, 0.0).sum(1).masked_fill(~alive, float("inf"))
        pick = int(scores.argmin())
        picked.append(pick)
        alive[pick] = False
    return torch.tensor(picked)


def bulyan_rule(m: torch.Tensor, f: int) -> torch.Tensor:
    """Bulyan's second stage over the theta selected rows: per coordinate, the mean of the
    beta = theta - 2f values closest to the coordinate's median."""
    beta = m.shape[0] - 2 * f
    med = m.median(0).values
    closest = (m - med).abs().argsort(0)[:beta]
    return m.gather(0, closest).mean(0)


@defence("bulyan")
def bulyan() -> Defence:
    """Bulyan (El Mhamdi et al., ICML 2018): Krum picks theta = K - 2f rows one by one, then
    each coordinate of every floating field averages the beta = theta - 2f selected values
    closest to its median. Assumes K >= 4f + 3. The loop is over the theta picks, each a
    masked sort of one [K, K] distance matrix computed once."""

    def check(k: int, f: int) -> str | None:
        return None if k >= 4 * f + 3 else f"Bulyan needs K >= 4f + 3 = {4 * f + 3}"

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        picked = bulyan_selection(delta_rows(u), ctx.f).to(u.weight.device)
        chosen = select_rows(u, picked)
        out = aggregate_rows(chosen, lambda m, w: bulyan_rule(m, ctx.f))
        factor = torch.zeros(len(u.weight), dtype=torch.float64)
        factor[picked.cpu()] = 1.0
        return out, state, factor

    return Defence(
        "bulyan", "Byzantine rows; assumes K >= 4f + 3", apply, check=check, selects=True
    )


def geometric_median_weights(
    m: torch.Tensor, w: torch.Tensor, iters: int = 10, nu: float = 1e-6
) -> torch.Tensor:
    """RFA's smoothed Weiszfeld iterations (Pillutla et al., IEEE TSP 2022, Alg. 2): weights
    alpha (summing to 1) whose mix sum_i alpha_i m_i approximates the weighted geometric
    median of the rows; nu smooths distances near zero."""
    alpha = w / w.sum()
    for _ in range(iters):
        z = alpha @ m
        beta = w / (m - z).norm(dim=1).clamp_min(nu)
        alpha = beta / beta.sum()
    return alpha


@defence("geomedian")
def geomedian(iters: int = 10) -> Defence:
    """Geometric median, RFA (Pillutla et al., IEEE TSP 2022): the sample-weighted geometric
    median of the model deltas by smoothed Weiszfeld, its mixing weights applied to every
    floating field (the clients' buffers and extras are mixed as their deltas are). Breaks
    down at half the weight; a far-off row gets a weight that shrinks with its distance."""
    if iters < 1:
        raise ValueError(f"geomedian iters must be >= 1, got {iters}")

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        alpha = geometric_median_weights(delta_rows(u), u.weight.to(torch.float64), iters)
        w = u.weight.to(torch.float64)
        return mix_rows(u, alpha), state, (alpha / (w / w.sum())).clamp(max=1.0)

    return Defence("geomedian", "Byzantine rows, < 50 % of the weight", apply, selects=True)
