"""Clipping rules over model deltas: each bounds how far any one client can move the model
(norm clipping, centered clipping, SparseFed, CRFL). The delta is clipped; every other
floating field takes its coordinate median (`aggregate_delta`)."""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.robust.registry import defence
from privlearn.fl.robust.threat import (
    Defence,
    DefenceContext,
    aggregate_delta,
    clip_rows,
    delta_rows,
    unflat,
    weighted_mean,
)


def _noise(ctx: DefenceContext, like: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma == 0:
        return torch.zeros_like(like)
    g = torch.randn(like.shape, generator=ctx.rng, dtype=like.dtype)
    return g.to(like.device) * sigma


def _bound(bound: float) -> None:
    if not bound > 0:
        raise ValueError(f"clipping bound must be > 0, got {bound}")


@defence("norm-clipping")
def norm_clipping(bound: float = 1.0, sigma: float = 0.0) -> Defence:
    """Norm clipping with weak DP (Sun et al., "Can you really backdoor FL?", 2019): each
    delta is scaled to L2 norm at most `bound` before the weighted mean, and Gaussian noise
    of std `sigma` per coordinate is added to it. Against boosted (model-replacement)
    backdoors; an attacker who knows the bound stays under it."""
    _bound(bound)
    if sigma < 0:
        raise ValueError(f"norm-clipping sigma must be >= 0, got {sigma}")

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        m, factor = clip_rows(delta_rows(u), bound)
        agg = weighted_mean(m, u)
        return aggregate_delta(u, agg + _noise(ctx, agg, sigma)), state, factor

    return Defence("norm-clipping", "boosted updates; assumes honest norms below bound", apply)


@defence("centered-clipping")
def centered_clipping(tau: float = 1.0, iters: int = 1) -> Defence:
    """Centered clipping (Karimireddy et al., ICML 2021): starting from the last round's
    aggregate v (kept in state; zero at first), `iters` times v += mean_i clip(x_i - v,
    tau). A Byzantine row moves v by at most tau * f / K per iteration. The paper applies it
    to worker momenta; here to the deltas, the last aggregate standing in for momentum."""
    _bound(tau)
    if iters < 1:
        raise ValueError(f"centered-clipping iters must be >= 1, got {iters}")

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        m = delta_rows(u)
        v = state.get("v") if isinstance(state, dict) else None
        v = torch.zeros(m.shape[1], dtype=m.dtype, device=m.device) if v is None else v.to(m)
        for _ in range(iters):
            clipped, factor = clip_rows(m - v, tau)
            v = v + weighted_mean(clipped, u)
        return aggregate_delta(u, v), {"v": v.cpu()}, factor

    return Defence(
        "centered-clipping", "Byzantine rows; assumes f/K small", apply, init=lambda n: {}
    )


@defence("sparsefed")
def sparsefed(bound: float = 1.0, topk: float = 0.1) -> Defence:
    """SparseFed (Panda et al., AISTATS 2022): deltas are clipped to L2 norm `bound`, and of
    their mean plus the error carried from earlier rounds only the `topk` share of
    coordinates largest in magnitude is applied; the rest is carried (server-side error
    feedback, kept in state). The paper clips on the client; the bound is the same here."""
    _bound(bound)
    if not 0 < topk <= 1:
        raise ValueError(f"sparsefed topk must be in (0, 1], got {topk}")

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        m, factor = clip_rows(delta_rows(u), bound)
        err = state.get("error") if isinstance(state, dict) else None
        acc = weighted_mean(m, u) + (0 if err is None else err.to(m))
        k = max(1, int(topk * acc.numel()))
        keep = torch.zeros_like(acc, dtype=torch.bool)
        keep[acc.abs().topk(k).indices] = True
        step = torch.where(keep, acc, 0.0)
        return aggregate_delta(u, step), {"error": (acc - step).cpu()}, factor

    return Defence("sparsefed", "model poisoning; sparse, bounded steps", apply, init=lambda n: {})


@defence("crfl")
def crfl(rho: float = 15.0, sigma: float = 0.01) -> Defence:
    """CRFL (Xie et al., ICML 2021), training side: after each round the new global model's
    parameters are clipped to L2 norm `rho` and smoothed with Gaussian noise of std `sigma`
    per coordinate. Its certificate (`certified_radius`, `certify`) is computed on the
    final model by sampling smoothed copies of it."""
    if not rho > 0 or not sigma > 0:
        raise ValueError(f"crfl rho and sigma must be > 0, got rho={rho}, sigma={sigma}")

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        m = delta_rows(u)
        agg = weighted_mean(m, u)
        step = unflat(agg.unsqueeze(0), u.delta)  # the round's mean delta, as a [1, ...] tree
        new = {k: ctx.params[k].to(torch.float64) + step[k][0] for k in step}
        norm = torch.sqrt(sum((v * v).sum() for v in new.values()))
        scale = (rho / norm.clamp_min(1e-12)).clamp(max=1.0)
        smoothed = {k: v * scale + _noise(ctx, v, sigma) for k, v in new.items()}
        moved = {k: (smoothed[k] - ctx.params[k].to(torch.float64)).unsqueeze(0) for k in step}
        return aggregate_delta(u, T.flat_rows(moved)[0]), state, torch.ones(len(u.weight))

    return Defence("crfl", "backdoors, with a certified radius; assumes bounded updates", apply)


def certified_radius(p_a: float, p_b: float, sigma: float) -> float:
    """CRFL's (and randomised smoothing's) certified radius for one input: with the smoothed
    model's top-class probability at least p_a and the runner-up's at most p_b,
    sigma / 2 * (Phi^-1(p_a) - Phi^-1(p_b)); 0 when p_a <= p_b (no certificate)."""
    if p_a <= p_b:
        return 0.0
    inv = NormalDist().inv_cdf
    lo, hi = 1e-12, 1 - 1e-12
    return sigma / 2 * (inv(min(max(p_a, lo), hi)) - inv(min(max(p_b, lo), hi)))


def certify(
    model,
    params: dict,
    buffers: dict,
    x: torch.Tensor,
    sigma: float,
    n: int = 100,
    alpha: float = 0.001,
    seed: int = 0,
) -> torch.Tensor:
    """Per input, the certified radius of the smoothed model (`n` copies of `params` with
    N(0, sigma^2) noise per coordinate), from one-sided Hoeffding bounds at level alpha on
    the vote shares: p_a = top share - sqrt(ln(1/alpha) / 2n), p_b = min(runner-up share +
    the same slack, 1 - p_a). CRFL bounds p_a with Clopper-Pearson; Hoeffding's is looser."""
    g = torch.Generator().manual_seed(seed)
    votes = None
    for _ in range(n):
        noisy = {
            k: v + sigma * torch.randn(v.shape, generator=g, dtype=v.dtype).to(v.device)
            for k, v in params.items()
        }
        logits, _ = model.apply(noisy, buffers, x, torch.ones(len(x), device=x.device), False)
        onehot = torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1])
        votes = onehot if votes is None else votes + onehot
    top = votes.topk(2, dim=1).values.to(torch.float64) / n
    slack = math.sqrt(math.log(1 / alpha) / (2 * n))
    p_a = (top[:, 0] - slack).clamp(0, 1)
    p_b = torch.minimum((top[:, 1] + slack).clamp(0, 1), 1 - p_a)
    return torch.tensor(
        [certified_radius(a, b, sigma) for a, b in zip(p_a.tolist(), p_b.tolist(), strict=True)]
    )
