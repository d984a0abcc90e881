"""Privacy auditing with one training run (Steinke, Nasr, Jagielski, NeurIPS 2023).

m canaries are each included in training independently with probability 1/2 (`inclusion`).
After the one run the auditor scores every canary, guesses "in" for the k+ highest scores
and "out" for the k- lowest, and abstains on the rest (`guesses`). If training is
(eps, delta)-DP, the number W of correct guesses among the r made is, for delta = 0,
stochastically dominated by Binomial(r, e^eps / (1 + e^eps)) (their Theorem 3.1); for
delta > 0 their bound adds a delta term (`p_value`, the paper's Algorithm in code form). The
empirical lower bound is the largest eps whose p-value for the observed W is below `beta`:
with probability >= 1 - beta the run is not (eps', delta)-DP for any smaller eps'
(`epsilon_lower_bound`). Choosing (k+, k-) after looking at the scores is allowed only at a
price: `audit_grid` splits beta over a grid fixed in advance (a union bound).

Two kinds of canary, matching the two guarantees:
- examples, for sample-level DP (DP-SGD): mislabelled rows inserted into clients' data
  (`mislabelled_canaries`, `insert_example_canaries`); score = the drop in the canary's
  loss from the initial to the final model (`example_scores`).
- clients, for user-level DP (Andrew et al., ICLR 2024, one-shot empirical privacy
  estimation for FL): canary clients whose update is a fixed random direction of norm
  `norm` (`canary_directions`, `canary_clients`, a server transform placed first in the
  chain so clipping and noise treat them as real clients); score = the cosine between the
  final model's change and the canary's direction (`client_canary_scores`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import binom

from privlearn.fl import tree as T
from privlearn.fl.aggregate import Transform, Updates, stateless
from privlearn.fl.aggregate.transform import check_stage
from privlearn.fl.data.datasets import FederatedDataset
from privlearn.fl.models import Model

EPS_SEARCH_STEPS = 40  # bisection steps of the eps search (precision ~ eps_max / 2^40)


def inclusion(m: int, seed: int) -> np.ndarray:
    """m independent fair coins (True: the canary is in the training data)."""
    if m < 1:
        raise ValueError(f"m: need at least one canary, got {m}")
    return np.random.default_rng([seed, 13, 1]).random(m) < 0.5


def p_value(m: int, r: int, v: int, eps: float, delta: float = 0.0) -> float:
    """P[>= v correct of r guesses on m canaries] under an (eps, delta)-DP mechanism: the
    Binomial(r, q) tail, q = e^eps / (1 + e^eps), plus 2 m delta times the largest average
    Binomial mass just below v (the paper's bound for delta > 0)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"v, r, m: need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if not eps >= 0:
        raise ValueError(f"eps: must be >= 0, got {eps}")
    if not 0 <= delta <= 1:
        raise ValueError(f"delta: must be in [0, 1], got {delta}")
    q = 1 / (1 + math.exp(-eps))
    tail = float(binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    mass = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))  # P[v > B >= v - i], i = 1..v
    alpha = float(np.max(mass / np.arange(1, v + 1)))
    return min(tail + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float = 0.0, beta: float = 0.05) -> float:
    """The largest eps with p_value(m, r, v, eps, delta) < beta (0 when even eps = 0 fits the
    observation): the run is not (eps, delta)-DP for smaller eps, at confidence 1 - beta."""
    if not 0 < beta < 1:
        raise ValueError(f"beta: must be in (0, 1), got {beta}")
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, 2 * hi  # ends: the tail tends to 1 as eps grows, for any v <= r
    for _ in range(EPS_SEARCH_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(m, r, v, mid, delta) < beta else (lo, mid)
    return lo


def guesses(scores, k_plus: int, k_minus: int) -> np.ndarray:
    """+1 ("in") for the k+ highest scores, -1 ("out") for the k- lowest, 0 for the rest.
    Equal scores are ordered by index (a stable sort), a rule fixed before seeing them."""
    s = np.asarray(scores, dtype=np.float64)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > s.size:
        raise ValueError(f"k_plus, k_minus: need k+ + k- <= m = {s.size}, got {k_plus}, {k_minus}")
    order = np.argsort(-s, kind="stable")
    g = np.zeros(s.size, dtype=np.int64)
    g[order[:k_plus]] = 1
    g[order[s.size - k_minus :]] = -1
    return g


def audit(
    scores, included, k_plus: int, k_minus: int, delta: float = 0.0, beta: float = 0.05
) -> dict:
    """One audit with (k+, k-) fixed in advance: counts, the eps lower bound, and its ceiling
    (the bound had every guess been right: what this m, k and delta can prove at most)."""
    s, b = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    if s.shape != b.shape or s.ndim != 1:
        raise ValueError(f"scores, included: need two equal 1-D arrays, got {s.shape}, {b.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores: must be finite")
    g = guesses(s, k_plus, k_minus)
    r = int((g != 0).sum())
    v = int(((g == 1) & b).sum() + ((g == -1) & ~b).sum())
    return {
        "m": int(s.size),
        "k_plus": k_plus,
        "k_minus": k_minus,
        "guesses": r,
        "correct": v,
        "delta": delta,
        "beta": beta,
        "epsilon_lower_bound": epsilon_lower_bound(s.size, r, v, delta, beta),
        "epsilon_ceiling": epsilon_lower_bound(s.size, r, r, delta, beta),
    }


def audit_grid(
    scores, included, ks: list[tuple[int, int]], delta: float = 0.0, beta: float = 0.05
) -> dict:
    """The best audit over a grid of (k+, k-) stated before the run; each is tested at
    beta / len(ks), so the best bound still holds with probability >= 1 - beta."""
    if not ks:
        raise ValueError("ks: need at least one (k_plus, k_minus)")
    runs = [audit(scores, included, kp, km, delta, beta / len(ks)) for kp, km in ks]
    best = max(runs, key=lambda a: a["epsilon_lower_bound"])
    return {**best, "beta": beta, "grid": [list(k) for k in ks], "union_bound": len(ks)}


# --- example canaries (sample-level DP) ------------------------------------------------------


def mislabelled_canaries(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows `x` with each label moved to a uniformly drawn other class: examples the
    model can only fit by memorising them."""
    if n_classes < 2:
        raise ValueError(f"n_classes: need >= 2 to mislabel, got {n_classes}")
    shift = np.random.default_rng([seed, 13, 2]).integers(1, n_classes, size=len(y))
    return x, (y + torch.as_tensor(shift, device=y.device)) % n_classes


def insert_example_canaries(
    ds: FederatedDataset, x: torch.Tensor, y: torch.Tensor, included: np.ndarray, seed: int
) -> tuple[FederatedDataset, np.ndarray]:
    """A copy of `ds` whose training rows gain the included canaries, each given to a
    uniformly drawn client; also returns the canaries' row indices in the new x_train
    (-1 for excluded ones)."""
    if ds.x_clean is not None:
        raise ValueError("ds: per-round feature noise redraws x_train; insert canaries without it")
    inc = np.asarray(included, dtype=bool)
    if inc.shape != (len(y),):
        raise ValueError(f"included: need one bit per canary ({len(y)}), got shape {inc.shape}")
    idx = np.flatnonzero(inc)
    start = len(ds.y_train)
    rows = np.full(len(y), -1, dtype=np.int64)
    rows[idx] = start + np.arange(len(idx))
    # every canary has an owner, drawn whether or not it is included
    owner = np.random.default_rng([seed, 13, 3]).integers(ds.n_clients, size=len(y))[idx]
    clients = [np.concatenate([c, rows[idx][owner == k]]) for k, c in enumerate(ds.clients)]
    sel = torch.as_tensor(idx, device=x.device)
    new = dataclasses.replace(
        ds,
        x_train=torch.cat([ds.x_train, x[sel].to(ds.x_train.dtype)]),
        y_train=torch.cat([ds.y_train, y[sel].to(ds.y_train.dtype)]),
        clients=clients,
        meta={**ds.meta, "example_canaries": int(inc.sum())},
    )
    return new, rows


@torch.no_grad()
def example_scores(
    model: Model,
    final: tuple[dict, dict],
    x: torch.Tensor,
    y: torch.Tensor,
    initial: tuple[dict, dict] | None = None,
) -> np.ndarray:
    """Per canary: its loss under the `initial` model minus under the `final` one (the loss
    drop), or minus the final loss when no initial model is given. Higher: more likely in."""

    def losses(pb):
        logits, _ = model.apply(pb[0], pb[1], x, train=False)
        return F.cross_entropy(logits.double(), y, reduction="none")

    out = -losses(final) if initial is None else losses(initial) - losses(final)
    return out.cpu().numpy()


# --- client canaries (user-level DP) ---------------------------------------------------------


def canary_directions(params: dict, m: int, seed: int) -> dict:
    """m random unit directions in parameter space, as a stacked tree shaped like `params`
    (each row has L2 norm 1 over all leaves together)."""
    if m < 1:
        raise ValueError(f"m: need at least one canary, got {m}")
    g = torch.Generator().manual_seed(int(np.random.default_rng([seed, 13, 4]).integers(2**62)))
    raw = {
        k: torch.randn((m, *v.shape), generator=g, dtype=torch.float64) for k, v in params.items()
    }
    norm = T.flat_rows(raw).norm(dim=1)
    return {k: (v / norm.view((-1,) + (1,) * (v.dim() - 1))) for k, v in raw.items()}


def canary_clients(directions: dict, included: np.ndarray, norm: float, weight: float) -> Transform:
    """A server transform that adds one row per included canary client, `norm` times its
    direction with sample weight `weight`, to the stacked client updates. Put it first in
    the chain: clipping and noise then treat canaries as real clients. Canaries take part in
    every round (Andrew et al. sample them as real clients; rounds without a sampled canary
    make this audit conservative for them, not invalid)."""
    if not norm > 0:
        raise ValueError(f"norm: must be > 0, got {norm}")
    if not weight > 0:
        raise ValueError(f"weight: must be > 0, got {weight}")
    idx = torch.as_tensor(np.flatnonzero(np.asarray(included, dtype=bool)))

    def fn(u: Updates, params: dict) -> Updates:
        check_stage(u, True, "canary_clients")
        if len(idx) == 0:
            return u
        rows = {k: norm * directions[k][idx].to(v.dtype).to(v.device) for k, v in u.values.items()}
        w = torch.full((len(idx),), weight, dtype=u.weights.dtype, device=u.weights.device)
        return Updates(T.cat([u.values, rows]), torch.cat([u.weights, w]))

    return stateless(fn)


def client_canary_scores(change: dict, directions: dict) -> np.ndarray:
    """Cosine between the model's change over training (final - initial parameters) and each
    canary's direction: Andrew et al.'s statistic. Higher: more likely in."""
    d = T.flat_rows(directions).double()
    c = T.flat_rows({k: change[k].unsqueeze(0) for k in directions}).double()[0]
    return (d @ c / (d.norm(dim=1) * c.norm().clamp_min(1e-300))).cpu().numpy()
