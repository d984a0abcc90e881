"""What an attack and a defence are, and how a round applies them.

An attack is a client behaviour. Attackers are a fixed subset of clients (chosen by seed,
present whenever sampled) and train in the same cohort, on the same engine, as honest
clients; what differs is given by masks. An attack is any of three hooks:

- `data`: poisons the attackers' rows of the pooled training data (label flipping,
  backdoor triggers, edge-case samples) before the round's engine runs;
- `wrap`: rewrites the algorithm's client step for attacker rows (a per-step loss-side or
  projection attack: Neurotoxin, the blind backdoor), masked with `torch.where`, so it
  vmaps with the honest rows;
- `updates`: rewrites the attackers' rows of the stacked uploads after local training
  (model poisoning: noise, sign flips, ALIE, IPM, Min-Max, scaling, ...), knowing the honest
  rows when the attack is omniscient and the defence when it is adaptive.

A defence is a server step on the whole stacked `ClientUpdate` (model delta, batch-norm
buffers, control variates and the other extras, weights), run after screening and before
the algorithm's own server update, so every algorithm takes every defence and no field
escapes it. It returns the updates the algorithm then reduces as usual, in one of two forms:

- selection: the rows of the clients it keeps (every field of a dropped client goes);
- aggregate: every row replaced by the robust aggregate (`aggregate_rows`), so the
  algorithm's weighted mean yields the aggregate and its sums (SCAFFOLD's control variates)
  K times it, as K clients agreeing on it would give;

and a per-row factor (1 kept, 0 excluded, between: down-weighted) that the run reports, so
false positives and negatives can be read off per round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import Algorithm, ClientUpdate, LocalSGD
from privlearn.fl.models import Model

Rows = dict[int, np.ndarray]  # attacker client id -> its rows of the pooled training data


@dataclass(frozen=True)
class AttackContext:
    """What an attacker can know when it forges its upload (an omniscient attacker reads the
    honest rows; others use their own rows only)."""

    round: int
    attacker: torch.Tensor  # [K] bool: cohort rows controlled by the attacker
    params: dict[str, torch.Tensor]  # the global model the round started from
    rng: torch.Generator
    defence: Defence | None = None  # known to adaptive attacks
    n_attackers: int = 0  # attackers in the whole federation


@dataclass(frozen=True)
class Attack:
    """A named, seeded client behaviour; see the module docstring for the three hooks.
    `backdoor` maps test inputs (x, y) to the triggered inputs and the attacker's target
    labels, on which the attack success rate is measured (None: an untargeted attack, whose
    effect is the main-task accuracy)."""

    name: str
    threat: str  # one line: what it does and after which paper
    data: Callable[[torch.Tensor, torch.Tensor, Rows, np.random.Generator], tuple] | None = None
    wrap: Callable[[Algorithm, torch.Tensor, dict], Algorithm] | None = None
    updates: Callable[[ClientUpdate, AttackContext], ClientUpdate] | None = None
    backdoor: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = (
        None
    )
    needs_images: bool = False


@dataclass(frozen=True)
class DefenceContext:
    """What the server holds when it defends: the global model, the number of attackers it
    assumes (Krum's f), its own clean data where a defence declares one (FLTrust's root set),
    and the model to run forward passes or local steps on it."""

    round: int
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    clients: torch.Tensor  # [K] global ids of the rows
    f: int
    rng: torch.Generator
    model: Model | None = None
    local: LocalSGD | None = None
    root: tuple[torch.Tensor, torch.Tensor] | None = None
    n_clients: int = 0


@dataclass(frozen=True)
class Defence:
    """A named server step over the stacked uploads (see the module docstring).

    apply(updates, state, ctx) -> (updates, state, factor [K]); init(n_clients) -> state;
    check(K, f) -> why a cohort of K rows with f attackers breaks the defence's assumptions
    (e.g. Bulyan: K >= 4f + 3), or None. `needs_root`: it uses the server's clean data.
    `selects`: it excludes or down-weights clients (so its false positives and negatives
    are reported); a coordinate-wise or clipping rule excludes no one."""

    name: str
    threat: str  # one line: what it stops, and its assumptions
    apply: Callable[[ClientUpdate, Any, DefenceContext], tuple[ClientUpdate, Any, torch.Tensor]]
    init: Callable[[int], Any] = lambda n_clients: ()
    check: Callable[[int, int], str | None] = lambda k, f: None
    needs_root: bool = False
    selects: bool = False


@dataclass
class Verdict:
    """A defence's decision for one round, in client ids."""

    excluded: list[int] = field(default_factory=list)
    downweighted: dict[int, float] = field(default_factory=dict)


def verdict(clients: torch.Tensor, factor: torch.Tensor) -> Verdict:
    ids, fac = clients.tolist(), factor.to(torch.float64).tolist()
    return Verdict(
        excluded=[c for c, a in zip(ids, fac, strict=True) if a <= 0],
        downweighted={c: round(a, 6) for c, a in zip(ids, fac, strict=True) if 0 < a < 1},
    )


def choose_attackers(n_clients: int, fraction: float, seed: int) -> np.ndarray:
    """The sorted ids of the round(fraction * N) clients the attacker controls, fixed for
    the whole run and drawn from the run's seed alone (a resumed run has the same ones)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"attacker fraction must be in [0, 1), got {fraction}")
    k = int(round(fraction * n_clients))
    if fraction > 0 and k == 0:
        raise ValueError(
            f"attacker fraction {fraction} of {n_clients} clients rounds to no attacker; "
            f"raise it to at least {1 / n_clients:.3g}"
        )
    rng = np.random.default_rng([seed, 104])
    return np.sort(rng.choice(n_clients, k, replace=False)).astype(np.int64)


def is_attacker(attackers: torch.Tensor, client_id: torch.Tensor) -> torch.Tensor:
    """Whether `client_id` (a scalar, also under vmap) is one of `attackers` (a bool)."""
    return (attackers.to(client_id.device) == client_id).any()


# --- helpers defences share -----------------------------------------------------------------


def unflat(matrix: torch.Tensor, like: Any) -> Any:
    """Rows of a [K, P] matrix back into the (stacked) structure of `like`."""
    out, at = [], 0
    leaves = T.leaves(like)
    for leaf in leaves:
        size = leaf[0].numel() if leaf.dim() else 1
        out.append(matrix[:, at : at + size].reshape((matrix.shape[0],) + tuple(leaf.shape[1:])))
        at += size
    return pytree.tree_unflatten(out, pytree.tree_structure(like))


def select_rows(u: ClientUpdate, keep: torch.Tensor) -> ClientUpdate:
    """The rows `keep` (bool [K] or indices) of every field."""
    idx = torch.nonzero(keep).flatten() if keep.dtype == torch.bool else keep
    return T.rows(u, idx)


def float_fields(u: ClientUpdate) -> dict[str, Any]:
    """The fields a defence aggregates: the delta, the buffers and the floating extras."""
    extras = {k: v for k, v in u.extras.items() if _all_float(v)}
    return {"delta": u.delta, "buffers": u.buffers, "extras": extras}


def _all_float(tree: Any) -> bool:
    leaves = T.leaves(tree)
    return bool(leaves) and all(t.is_floating_point() for t in leaves)


def delta_rows(u: ClientUpdate) -> torch.Tensor:
    """The model-delta rows as one float64 [K, P] matrix, the precision distances need."""
    return T.flat_rows(u.delta).to(torch.float64)


def coordinate_median(m: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The per-coordinate median of the rows (a rule for `aggregate_rows`)."""
    return m.median(0).values


def weighted_mean(m: torch.Tensor, u: ClientUpdate) -> torch.Tensor:
    """The rows of `m` averaged with the uploads' sample weights."""
    w = u.weight.to(m)
    return (w / w.sum()) @ m


def _map_float_fields(
    u: ClientUpdate, fn: Callable[[Any], Any], on_delta: Callable[[Any], Any] | None = None
) -> ClientUpdate:
    """`u` with `fn` applied to each floating field (`on_delta`, when given, to the delta)."""
    fields = float_fields(u)
    return dataclasses.replace(
        u,
        delta=(on_delta or fn)(fields["delta"]),
        buffers=fn(fields["buffers"]),
        extras={**u.extras, **{k: fn(v) for k, v in fields["extras"].items()}},
    )


def aggregate_rows(
    u: ClientUpdate, rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> ClientUpdate:
    """Every row of every floating field replaced by `rule(matrix [K, P], weights [K]) -> [P]`
    applied field by field (a coordinate-wise rule sees each field; a rule that mixes rows
    with weights it computed from the delta should use `mix_rows` instead)."""
    k = u.weight.shape[0]

    def agg(tree: Any) -> Any:
        if not T.leaves(tree):
            return tree
        m = T.flat_rows(tree)
        return unflat(rule(m, u.weight.to(m.dtype)).unsqueeze(0).expand(k, -1), tree)

    return _map_float_fields(u, agg)


def mix_rows(
    u: ClientUpdate, alpha: torch.Tensor, delta: torch.Tensor | None = None
) -> ClientUpdate:
    """Every row replaced by sum_k alpha_k row_k (alpha: [K], summing to 1), in every floating
    field; `delta` ([K, P]) replaces the model-delta rows first (rescaled or clipped rows)."""
    k = u.weight.shape[0]
    a = alpha / alpha.sum().clamp_min(1e-12)

    def mix(tree: Any, m: torch.Tensor | None = None) -> Any:
        if not T.leaves(tree):
            return tree
        m = T.flat_rows(tree) if m is None else m
        return unflat((a.to(m.dtype) @ m).unsqueeze(0).expand(k, -1), tree)

    return _map_float_fields(u, mix, lambda tree: mix(tree, delta))


def aggregate_delta(u: ClientUpdate, agg: torch.Tensor) -> ClientUpdate:
    """The aggregate form for a rule over model deltas only (clipping, sign votes, top-k):
    every delta row becomes `agg` ([P]) and every other floating field (batch-norm
    statistics, control variates) its coordinate-wise median, so those fields are defended
    too, by the rule that needs no delta semantics."""
    out = aggregate_rows(u, coordinate_median)
    return with_delta(out, agg.unsqueeze(0).expand(len(u.weight), -1))


def keep_global(u: ClientUpdate, ctx: DefenceContext) -> ClientUpdate:
    """The aggregate form of "this round changes nothing", for a defence that trusts no row:
    a zero model delta, the server's own batch-norm statistics, and the other floating
    fields (control variates, FedNova's step counts) at their coordinate median, robust to
    the rows distrusted and never the zero a step count would divide by."""
    out = aggregate_rows(u, coordinate_median)
    buffers = {
        n: ctx.buffers[n].to(b).unsqueeze(0).expand_as(b).clone() if n in ctx.buffers else b
        for n, b in out.buffers.items()
    }
    return dataclasses.replace(out, delta=T.tree_map(torch.zeros_like, u.delta), buffers=buffers)


def clip_rows(m: torch.Tensor, bound: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of `m` scaled to L2 norm at most `bound`, and each row's factor (1: unclipped)."""
    factor = (bound / m.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return m * factor[:, None], factor


def with_delta(u: ClientUpdate, delta: torch.Tensor) -> ClientUpdate:
    """The update with its model-delta rows replaced by `delta` ([K, P]); other fields kept."""
    like = T.leaves(u.delta)
    return dataclasses.replace(u, delta=unflat(delta.to(like[0].dtype) if like else delta, u.delta))


def pairwise_sq_dists(m: torch.Tensor) -> torch.Tensor:
    """[K, K] squared Euclidean distances as one matrix product (no loop over clients)."""
    sq = (m * m).sum(1)
    d = sq[:, None] + sq[None, :] - 2.0 * (m @ m.T)
    return d.clamp_min(0.0)
