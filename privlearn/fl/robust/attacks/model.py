"""Model poisoning: attackers forge the uploads of their rows after local training.

The omniscient attacks (ALIE, IPM, Min-Max, Min-Sum, Fang) read the honest rows of the
cohort, as their papers' full-knowledge settings do; when a cohort holds no honest row they
use the attackers' own honest updates instead. Every attacker row gets the same forged
delta, the strongest collusion those papers consider."""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import torch

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.robust.attacks.data import badnets
from privlearn.fl.robust.defences.distance import krum_scores
from privlearn.fl.robust.registry import DataInfo, attack
from privlearn.fl.robust.threat import Attack, AttackContext, delta_rows, with_delta


def _forge(u: ClientUpdate, ctx: AttackContext, rows: torch.Tensor) -> ClientUpdate:
    """`u` with the model-delta rows of the attackers replaced by `rows` ([K, P] or one [P]
    row for all; rows of honest clients are ignored)."""
    m = T.flat_rows(u.delta)
    rows = rows.to(m.dtype).expand_as(m)
    return with_delta(u, torch.where(ctx.attacker[:, None], rows, m))


def _benign(u: ClientUpdate, ctx: AttackContext) -> torch.Tensor:
    """[H, P] float64: the honest rows the attacker reads (its own rows when none are)."""
    m = delta_rows(u)
    honest = m[~ctx.attacker]
    return honest if len(honest) else m[ctx.attacker]


@attack("gaussian")
def gaussian(info: DataInfo, sigma: float = 1.0) -> Attack:
    """Gaussian noise (Blades' noise attack): attackers upload N(0, sigma^2) per coordinate
    in place of their model delta. Untargeted: it lowers main-task accuracy."""
    if not sigma > 0:
        raise ValueError(f"gaussian attack sigma must be > 0, got {sigma}")

    def updates(u: ClientUpdate, ctx: AttackContext) -> ClientUpdate:
        m = T.flat_rows(u.delta)
        noise = torch.randn(m.shape, generator=ctx.rng, dtype=m.dtype).to(m.device) * sigma
        return _forge(u, ctx, noise)

    return Attack("gaussian", "model poisoning: random uploads", updates=updates)


@attack("sign-flip")
def sign_flip(info: DataInfo, scale: float = 1.0) -> Attack:
    """Sign flipping (Damaskinos et al. 2018; Blades): attackers upload -scale times their
    honest delta, pushing the model up the loss."""
    if not scale > 0:
        raise ValueError(f"sign-flip scale must be > 0, got {scale}")

    def updates(u: ClientUpdate, ctx: AttackContext) -> ClientUpdate:
        return _forge(u, ctx, -scale * T.flat_rows(u.delta))

    return Attack("sign-flip", "model poisoning: the negated honest update", updates=updates)


def alie_z(k: int, f: int) -> float:
    """ALIE's z_max (Baruch et al. 2019, Alg. 1): with s = floor(K/2 + 1) - f honest rows the
    attackers must win over, the normal quantile of (K - s) / K."""
    s = math.floor(k / 2 + 1) - f
    return NormalDist().inv_cdf(min(max((k - s) / k, 1e-6), 1 - 1e-6))


@attack("alie")
def alie(info: DataInfo, z: float = 0.0) -> Attack:
    """A Little Is Enough (Baruch et al., NeurIPS 2019): attackers upload mean - z * std of
    the honest rows, coordinate by coordinate: inside the spread of honest values, so
    median, trimmed mean and Krum keep it, yet every coordinate moves the same way. z = 0:
    the paper's z_max for the cohort size and attacker count (`alie_z`)."""
    if z < 0:
        raise ValueError(f"alie z must be >= 0 (0: the paper's z_max), got {z}")

    def updates(u: ClientUpdate, ctx: AttackContext) -> ClientUpdate:
        b = _benign(u, ctx)
        zz = z or alie_z(len(u.weight), int(ctx.attacker.sum()))
        return _forge(u, ctx, b.mean(0) - zz * b.std(0, correction=0))

    return Attack("alie", "model poisoning: small shifts inside the honest spread", updates=updates)


@attack("ipm")
def ipm(info: DataInfo, epsilon: float = 0.5) -> Attack:
    """Inner-product manipulation (Xie et al., UAI 2019): attackers upload -epsilon times the
    honest mean, so the aggregate's inner product with the true descent direction turns
    negative once the attackers outweigh it (epsilon 0.5 as FLPoison; the paper uses 0.1
    against median and a large epsilon against Krum)."""
    if not epsilon > 0:
        raise ValueError(f"ipm epsilon must be > 0, got {epsilon}")

    def updates(u: ClientUpdate, ctx: AttackContext) -> ClientUpdate:
        return _forge(u, ctx, -epsilon * _benign(u, ctx).mean(0))

    return Attack("ipm", "model poisoning: the negated, shrunk honest mean", updates=updates)


def _direction(b: torch.Tensor, kind: str) -> torch.Tensor:
    """The perturbation Min-Max / Min-Sum scale (Shejwalkar & Houmansadr, Sec. 4.3)."""
    mean = b.mean(0)
    if kind == "std":
        return -b.std(0, correction=0)
    if kind == "unit":
        return -mean / mean.norm().clamp_min(1e-12)
    return -mean.sign()


def _largest_gamma(ok, hi: float = 10.0, steps: int = 30) -> float:
    """The largest gamma in [0, hi] with ok(gamma), by the paper's halving search (ok(0)
    holds: the mean is inside the honest spread)."""
    lo = 0.0
    while ok(hi) and hi < 1e6:
        lo, hi = hi, 2 * hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def _min_max_or_sum(name: str, threat: str, total: bool):
    def build(info: DataInfo, perturbation: str = "std") -> Attack:
        if perturbation not in ("std", "unit", "sign"):
            raise ValueError(f"{name} perturbation must be std, unit or sign, got {perturbation!r}")

        def updates(u: ClientUpdate, ctx: AttackContext) -> ClientUpdate:
            b = _benign(u, ctx)
            mean, p = b.mean(0), _direction(b, perturbation)
            d = torch.cdist(b, b)
            bound = (d * d).sum(1).max() if total else d.max()

            def ok(gamma: float) -> bool:
                dist = (b - (mean + gamma * p)).norm(dim=1)
                return bool(((dist * dist).sum() if total else dist.max()) <= bound)

            return _forge(u, ctx, mean + _largest_gamma(ok) * p)

        return Attack(name, threat, updates=updates)

    build.__doc__ = (
        f"{'Min-Sum' if total else 'Min-Max'} (Shejwalkar & Houmansadr, NDSS 2021), "
        "aggregation-agnostic: attackers upload mean + gamma * p (p: minus the honest std, "
        "the unit mean or its sign), gamma the largest whose "
        + (
            "sum of squared distances to the honest rows is at most any honest row's"
            if total
            else "largest distance to an honest row is at most the largest honest distance"
        )
        + ", found by halving search."
    )
    return build


attack("min-max")(
    _min_max_or_sum("min-max", "model poisoning: as far as the honest spread allows", False)
)
attack("min-sum")(
    _min_max_or_sum("min-sum", "model poisoning: as far as honest distance sums allow", True)
)


def _fang_krum(b: torch.Tensor, m: torch.Tensor, attacker: torch.Tensor, f: int) -> torch.Tensor:
    """Fang et al.'s full-knowledge attack on Krum (Sec. 3.2): all attackers upload -lam * s
    (s: the sign of the honest mean), lam the largest, from the paper's upper bound halved
    down to 1e-5, for which Krum picks an attacker row."""
    s = b.mean(0).sign()
    k, d = m.shape[0], m.shape[1]
    n_b = len(b)
    if n_b > 2:
        near = torch.cdist(b, b).sort(1).values[:, 1 : max(2, n_b - f - 1)]
        lam = near.sum(1).min() / (max(k - 2 * f - 1, 1) * math.sqrt(d))
    else:
        lam = torch.zeros((), dtype=b.dtype)
    lam = float(lam + b.norm(dim=1).max() / math.sqrt(d))
    while lam > 1e-5:
        forged = torch.where(attacker[:, None], -lam * s, m)
        if attacker[krum_scores(forged, f).argmin()]:
            break
        lam /= 2
    return -lam * s


def _fang_median(b: torch.Tensor, rng: torch.Generator, spread: float) -> torch.Tensor:
    """Fang et al.'s full-knowledge attack on median / trimmed mean (Sec. 3.3): each
    coordinate is pushed past the honest extreme opposite to the honest direction, by a
    uniform factor in [1, spread] (the paper's b = 2)."""
    s = b.mean(0).sign()
    lo, hi = b.min(0).values, b.max(0).values
    r = 1 + (spread - 1) * torch.rand(b.shape[1], generator=rng, dtype=b.dtype).to(b.device)
    below = torch.where(lo > 0, lo / r, lo * r)  # honest values go up: forge below the minimum
    above = torch.where(hi > 0, hi * r, hi / r)  # honest values go down: forge above the maximum
    return torch.where(s > 0, below, above)


@attack("fang")
def fang(info: DataInfo, target: str = "median", spread: float = 2.0) -> Attack:
    """Fang et al.'s local model poisoning (USENIX Security 2020), full knowledge, adapted to
    a named aggregation rule: `target` "krum" (the deviation that Krum still selects) or
    "median" (also the paper's trimmed-mean attack: past the honest extremes). The paper
    crafts models; here the same rule acts on model deltas."""
    if target not in ("krum", "median"):
        raise ValueError(f"fang target must be krum or median, got {target!r}")
    if not spread > 1:
        raise ValueError(f"fang spread must be > 1, got {spread}")

    def updates(u: ClientUpdate, ctx: AttackContext) -> ClientUpdate:
        b = _benign(u, ctx)
        if target == "krum":
            m = delta_rows(u)
            row = _fang_krum(b, m, ctx.attacker, int(ctx.attacker.sum()))
        else:
            row = _fang_median(b, ctx.rng, spread)
        return _forge(u, ctx, row)

    return Attack("fang", f"model poisoning: crafted against {target}", updates=updates)


@attack("model-replacement")
def model_replacement(
    info: DataInfo,
    target: int = 7,
    poison_ratio: float = 0.32,
    scale: float = 0.0,
    norm_bound: float = 0.0,
) -> Attack:
    """Model replacement with constrain-and-scale (Bagdasaryan et al., AISTATS 2020):
    attackers train the BadNets backdoor, then boost their delta by `scale` (0: K / a for a
    attackers among K rows, the paper's n/eta for FedAvg's server rate 1 shared among the
    colluders) so that the average becomes their backdoored model; `norm_bound` > 0 then
    scales it back to that L2 norm, the adaptive variant that passes a known norm-clipping
    bound. The paper's anomaly-loss term in
    training is not built; the bound alone constrains."""
    if scale < 0 or norm_bound < 0:
        raise ValueError("model-replacement scale and norm_bound must be >= 0 (0: default, none)")
    base = badnets(info, target, poison_ratio)

    def updates(u: ClientUpdate, ctx: AttackContext) -> ClientUpdate:
        m = T.flat_rows(u.delta)
        boosted = (scale or len(u.weight) / int(ctx.attacker.sum())) * m
        if norm_bound > 0:
            norm = boosted.norm(dim=1, keepdim=True).clamp_min(1e-12)
            boosted = boosted * (norm_bound / norm).clamp(max=1.0)
        return _forge(u, ctx, boosted)

    threat = "backdoor: a boosted backdoored update replaces the global model"
    return Attack(
        "model-replacement",
        threat,
        data=base.data,
        updates=updates,
        backdoor=base.backdoor,
        needs_images=True,
    )


@attack("fields")
def fields(info: DataInfo, value: float = 100.0, claim: float = 0.0) -> Attack:
    """Poisoning past the model delta: attackers upload an honest delta but set every other
    floating field of their rows (batch-norm running statistics, SCAFFOLD's control
    variates and the other extras) to `value`, and claim `claim` samples (0: their true
    count). It shows that a defence covers every field, and that screening bounds a claimed
    n by the plan's size; no paper names it."""
    if claim < 0:
        raise ValueError(f"fields claim must be >= 0 (0: the true count), got {claim}")

    def updates(u: ClientUpdate, ctx: AttackContext) -> ClientUpdate:
        a = ctx.attacker

        def poison(tree):
            return T.tree_map(
                lambda t: (
                    torch.where(a.view(-1, *[1] * (t.dim() - 1)), value, t)
                    if t.is_floating_point()
                    else t
                ),
                tree,
            )

        weight = torch.where(a, claim, u.weight.to(torch.float64)).to(u.weight.dtype)
        return dataclasses.replace(
            u,
            buffers=poison(u.buffers),
            extras=poison(u.extras),
            weight=weight if claim > 0 else u.weight,
        )

    return Attack("fields", "model poisoning of buffers, control variates and n", updates=updates)
