"""Coordinate-wise robust rules: each coordinate is aggregated on its own (median and trimmed
mean on every floating field; RLR's sign vote on the model delta)."""

from __future__ import annotations

import torch

from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.robust.registry import defence
from privlearn.fl.robust.threat import (
    Defence,
    DefenceContext,
    aggregate_delta,
    aggregate_rows,
    coordinate_median,
    delta_rows,
    weighted_mean,
)


@defence("median")
def median() -> Defence:
    """Coordinate-wise median (Yin et al. 2018): per coordinate, of every floating field
    (model delta, buffers, control variates). Tolerates fewer than half Byzantine rows per
    coordinate; collapses under attacks that shift every coordinate a little (ALIE)."""

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        out = aggregate_rows(u, coordinate_median)
        return out, state, torch.ones(len(u.weight))

    return Defence("median", "Byzantine rows, < 50 % per coordinate", apply)


def trimmed_mean_rule(m: torch.Tensor, trim: int) -> torch.Tensor:
    """Per coordinate, the mean of the values left after dropping the `trim` largest and
    the `trim` smallest."""
    k = m.shape[0]
    return m.sort(0).values[trim : k - trim].mean(0)


@defence("trimmed-mean")
def trimmed_mean(beta: float = 0.0) -> Defence:
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018): per coordinate of every floating
    field, drop the b largest and b smallest values and average the rest; b = the assumed
    attacker count f (beta = 0) or floor(beta * K). Needs K > 2b."""
    if not 0 <= beta < 0.5:
        raise ValueError(f"trimmed-mean beta must be in [0, 0.5), got {beta}")

    def trim(k: int, f: int) -> int:
        return int(beta * k) if beta > 0 else f

    def check(k: int, f: int) -> str | None:
        b = trim(k, f)
        return None if k > 2 * b else f"trimmed mean needs K > 2b = {2 * b}"

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        b = trim(len(u.weight), ctx.f)
        out = aggregate_rows(u, lambda m, w: trimmed_mean_rule(m, b))
        return out, state, torch.ones(len(u.weight))

    return Defence("trimmed-mean", "Byzantine rows; assumes K > 2f", apply, check=check)


def rlr_rate(m: torch.Tensor, theta: float) -> torch.Tensor:
    """RLR's per-coordinate sign of the server learning rate: +1 where at least `theta`
    more rows agree on the update's sign than disagree (|sum_i sign(delta_i)| >= theta),
    else -1."""
    vote = m.sign().sum(0).abs()
    return torch.where(vote >= theta, 1.0, -1.0).to(m.dtype)


@defence("rlr")
def rlr(theta: float = 4.0) -> Defence:
    """Robust learning rate (Ozdayi et al., AAAI 2021), against backdoors: on coordinates
    where fewer than `theta` clients' sign votes agree, the server's rate turns negative,
    moving the model away from the direction a few backdoor rows push. The other floating
    fields get their coordinate median (`aggregate_delta`). Assumes theta exceeds the
    attackers' count and is below the honest majority's agreement."""
    if not theta > 0:
        raise ValueError(f"rlr theta must be > 0, got {theta}")

    def check(k: int, f: int) -> str | None:
        return None if k >= theta else f"RLR's theta = {theta:g} needs K >= theta"

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        m = delta_rows(u)
        out = aggregate_delta(u, weighted_mean(m, u) * rlr_rate(m, theta))
        return out, state, torch.ones(len(u.weight))

    return Defence("rlr", "backdoors; assumes theta > f", apply, check=check)
