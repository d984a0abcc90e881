"""Filtering defences: rows are screened by statistics of their own (spectral outlier
scores, norms, sign statistics) and the ones that look like the majority are kept."""

from __future__ import annotations

import math

import numpy as np
import torch

from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.robust.registry import defence
from privlearn.fl.robust.threat import (
    Defence,
    DefenceContext,
    clip_rows,
    delta_rows,
    select_rows,
    with_delta,
)


def dnc_outlier_scores(m: torch.Tensor) -> torch.Tensor:
    """[K] squared projections of the centred rows of `m` [K, b] on their top right
    singular vector (DnC's outlier score)."""
    centred = m - m.mean(0, keepdim=True)
    if not bool(centred.abs().max() > 0):
        return torch.zeros(m.shape[0], dtype=m.dtype, device=m.device)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ vh[0]) ** 2


def _dnc_removed(f: int, c: float) -> int:
    return int(math.floor(c * f + 1e-9))


@defence("dnc")
def dnc(niters: int = 1, c: float = 1.0, b: int = 10000) -> Defence:
    """Divide-and-Conquer (Shejwalkar & Houmansadr, NDSS 2021): `niters` times, draw `b`
    coordinates of the model delta at random (all of them when the model has fewer),
    centre the rows on those coordinates, score each row by its squared projection on the
    top singular vector, and flag the floor(c f) highest; the rows never unfinished are kept,
    every field of them.

    Threat: model poisoning by f Byzantine rows (the paper's target: its own Min-Max and
    Min-Sum attacks, LIE, Fang's attacks); assumes f is known (c f rows go each iteration)
    and K - c f >= 1. Differs from the paper: when every row is unfinished in some iteration
    or other (an empty intersection), the rows unfinished least often are kept, not none; the
    algorithm's sample-weighted mean of the kept rows replaces the paper's plain mean."""
    if niters < 1 or c < 0 or b < 1:
        raise ValueError(f"dnc needs niters >= 1, c >= 0 and b >= 1, got {niters}, {c}, {b}")

    def check(k: int, f: int) -> str | None:
        removed = _dnc_removed(f, c)
        return None if k - removed >= 1 else f"DnC drops c f = {removed} rows of {k}"

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        m = delta_rows(u)
        k, p = m.shape
        drop = _dnc_removed(ctx.f, c)
        unfinished = torch.zeros(k, dtype=torch.long, device=m.device)
        if drop > 0:
            for _ in range(int(niters)):
                if p > b:
                    cols = torch.randperm(p, generator=ctx.rng)[: int(b)].to(m.device)
                    sub = m[:, cols]
                else:
                    sub = m
                top = dnc_outlier_scores(sub).argsort(descending=True)[:drop]
                unfinished[top] += 1
        keep = unfinished == unfinished.min()
        return select_rows(u, keep), state, keep.to(torch.float64)

    return Defence(
        "dnc",
        "Byzantine model poisoning by f known rows; assumes K - c f >= 1",
        apply,
        check=check,
        selects=True,
    )


def sign_statistics(m: torch.Tensor) -> torch.Tensor:
    """[K, 3] fractions of positive, zero and negative coordinates of each row."""
    p = m.shape[1]
    return torch.stack([(m > 0).sum(1), (m == 0).sum(1), (m < 0).sum(1)], 1).to(m.dtype) / p


def largest_meanshift_cluster(features: np.ndarray) -> np.ndarray:
    """[K] bool: the rows in the largest MeanShift cluster of `features` (bandwidth by
    sklearn's estimate at quantile 0.5; every row when the rows coincide)."""
    from sklearn.cluster import MeanShift, estimate_bandwidth

    k = features.shape[0]
    if k < 2 or np.ptp(features, axis=0).max() <= 0:
        return np.ones(k, dtype=bool)
    bandwidth = estimate_bandwidth(features, quantile=0.5)
    if not bandwidth > 0:
        return np.ones(k, dtype=bool)
    labels = MeanShift(bandwidth=bandwidth).fit(features).labels_
    counts = np.bincount(labels)
    return labels == counts.argmax()


@defence("signguard")
def signguard(lower: float = 0.1, upper: float = 3.0, coords: float = 0.1) -> Defence:
    """SignGuard (Xu et al., ICDCS 2022, SignGuard-Plain): a row passes the norm filter when
    its L2 norm over the median norm lies between `lower` and `upper`; the sign statistics
    (fractions of positive, zero and negative coordinates) over a random `coords` fraction
    of the delta's coordinates are clustered with MeanShift, and the largest cluster passes
    the sign filter. The rows passing both are kept, every field of them, their deltas
    clipped to the median norm of all rows.

    Threat: model poisoning by a minority of rows (the paper's: LIE, Min-Max, sign flips,
    noise); the honest rows must share their sign statistics (similar data). Sign flips
    swap the positive and negative fractions, which hardly separates them when honest
    deltas have about as many of each. Differs from the paper:
    if no row passes both filters, the rows of the largest sign cluster are kept; the
    algorithm's sample-weighted mean of the kept rows replaces the paper's plain mean."""
    if not 0 <= lower <= 1 <= upper or not 0 < coords <= 1:
        raise ValueError(
            f"signguard needs 0 <= lower <= 1 <= upper and 0 < coords <= 1, got "
            f"{lower}, {upper}, {coords}"
        )

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        m = delta_rows(u)
        k, p = m.shape
        norms = m.norm(dim=1)
        med = norms.median()
        ratio = norms / med.clamp_min(1e-300)
        by_norm = (ratio >= lower) & (ratio <= upper)
        n_cols = max(1, int(round(coords * p)))
        if n_cols < p:
            cols = torch.randperm(p, generator=ctx.rng)[:n_cols].to(m.device)
            feats = sign_statistics(m[:, cols])
        else:
            feats = sign_statistics(m)
        by_sign = torch.as_tensor(largest_meanshift_cluster(feats.cpu().numpy()), device=m.device)
        keep = by_norm & by_sign
        if not bool(keep.any()):
            keep = by_sign
        clipped, _ = clip_rows(m, med)
        out = with_delta(u, clipped)
        return select_rows(out, keep), state, keep.to(torch.float64)

    return Defence(
        "signguard",
        "Byzantine model poisoning by a minority with honest rows alike in sign statistics",
        apply,
        selects=True,
    )
