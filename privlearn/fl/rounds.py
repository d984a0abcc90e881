"""One federated round, engine-agnostic: plan -> engine -> screen -> server update."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from privlearn.fl import tree as T
from privlearn.fl.aggregate import Rejection, screen
from privlearn.fl.algorithms.base import Algorithm, ClientUpdate
from privlearn.fl.compress import Compression
from privlearn.fl.engine.base import Engine, TrainData
from privlearn.fl.models import Model
from privlearn.fl.plan import RoundPlan
from privlearn.fl.privacy.secagg.base import AggregationFailed, SecureAggregator
from privlearn.fl.robust.scenario import Scenario
from privlearn.fl.robust.threat import Verdict


@dataclass
class RoundStats:
    clients: list[int]
    rejected: list[Rejection] = field(default_factory=list)
    train_loss: float | None = None
    seconds: float = 0.0
    attackers: list[int] = field(default_factory=list)  # attacker clients in the cohort
    verdict: Verdict = field(default_factory=Verdict)  # what the defence decided
    skipped: str | None = None  # why a round with a cohort left the model as it was
    secure: dict | None = None  # under secure aggregation: protocol, cost, unfinished clients
    upload: dict | None = None  # under compression: bytes sent and their uncompressed size


REFUSE_COMPRESSED = (
    "compressed uploads are decoded per client, and secure aggregation hides every client's "
    "upload inside a masked sum: run one or the other"
)
SCREENING_OFF = "off: under secure aggregation the server sees no client's row to screen"


@dataclass(frozen=True)
class SecureRound:
    """Secure aggregation for every round: the protocol, and the share of each cohort that
    drops out (each dropper, with equal odds, before uploading or before the final step),
    drawn per round from `seed`."""

    aggregator: SecureAggregator
    dropout: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.dropout < 1:
            raise ValueError(f"secagg_dropout must be in [0, 1), got {self.dropout}")

    def drops(self, clients: list[int], round_idx: int) -> tuple[frozenset, frozenset]:
        rng = np.random.default_rng([self.seed, round_idx, 2])
        gone = rng.random(len(clients)) < self.dropout
        late = rng.random(len(clients)) < 0.5
        pick = lambda m: frozenset(c for c, g in zip(clients, m, strict=True) if g)  # noqa: E731
        return pick(gone & ~late), pick(gone & late)


def server_rng(seed: int, round_idx: int) -> torch.Generator:
    """The server's generator for round `round_idx` (FedFomo's exploration, ...)."""
    s = int(np.random.default_rng([seed, round_idx, 1]).integers(2**62))
    return torch.Generator().manual_seed(s)


def init_federation(
    algo: Algorithm, model: Model, n_clients: int, seed: int, device: str | torch.device = "cpu"
) -> tuple[dict, Any]:
    """Initial server state (model drawn from `seed`) and the bank of N client states."""
    g = torch.Generator().manual_seed(seed)
    params, buffers = model.init(g)
    server = algo.server_init(params, buffers, g)
    bank = T.repeat(algo.client_state_init(server), n_clients)
    move = lambda t: t.to(device)  # noqa: E731
    return T.tree_map(move, server), T.tree_map(move, bank)


def run_round(
    algo: Algorithm,
    engine: Engine,
    server: dict,
    bank: Any,
    plan: RoundPlan,
    data: TrainData,
    rng: torch.Generator,
    scenario: Scenario | None = None,
    round_idx: int = 0,
    secure: SecureRound | None = None,
    compression: Compression | None = None,
) -> tuple[dict, RoundStats]:
    """Train the planned cohort, drop bad updates (naming the clients), defend, update the
    server, and write surviving clients' new states into `bank` (in place).

    With a `scenario`, attacker rows train on their poisoned data and forge their uploads
    in round `round_idx` (0-based) while the attack is active, and the scenario's defence
    runs on the screened uploads before the algorithm's server update. With `secure`, the
    server receives only the sum of the clients' summands (`_secure_update`). With
    `compression`, each client's delta reaches the server as the compressor's payload, and
    the server screens and aggregates what it decodes."""
    t0 = time.perf_counter()
    stats = RoundStats(clients=plan.clients.tolist())
    if secure is not None:
        refuse_secure(algo, scenario)
        if compression is not None:
            raise ValueError(REFUSE_COMPRESSED)
    if len(plan) == 0:
        return server, stats
    cohort_states = T.rows(bank, plan.clients)
    run_algo = algo
    if scenario is not None:
        if scenario.active(round_idx):
            stats.attackers = plan.clients[scenario.attacker_rows(plan.clients)].tolist()
        run_algo = scenario.algorithm(algo, round_idx, server)
        data = TrainData(*scenario.train_data(data.x, data.y, round_idx))
    result = engine.run_clients(run_algo, server, cohort_states, plan, data)
    if scenario is not None:
        result.updates = scenario.forge(result.updates, plan.clients, server, round_idx)
    if isinstance(bank, dict) and "dp" in bank:
        # local DP (privacy/local.py): a client's noise generator and DP step count advance
        # with every update it sent, kept or not: the server saw it, so reusing its noise or
        # leaving its steps uncounted would break the guarantee
        T.put_rows_(bank["dp"], plan.clients, result.client_states["dp"])
    pending = None
    if compression is not None:
        result.updates, pending = compression.round(
            result.updates, plan.clients, list(result.rejected), round_idx
        )
        stats.upload = pending.report
    if secure is not None:
        server = _secure_update(algo, server, bank, plan, result, rng, secure, round_idx, stats)
        stats.seconds = time.perf_counter() - t0
        return server, stats
    keep, rejected = screen(result.updates, plan.clients, max_weight=plan.n, dtype=data.dtype)
    named = {r.client: r for r in rejected}
    for row, reason in result.rejected.items():  # the engine's reason is the more precise one
        named[int(plan.clients[row])] = Rejection(int(plan.clients[row]), reason)
        keep[row] = False
    stats.rejected = [named[c] for c in sorted(named)]
    if not keep.any():
        stats.skipped = f"no valid update: all {len(plan)} were rejected"
    else:
        kept = torch.nonzero(keep).flatten()
        updates: ClientUpdate = T.rows(result.updates, kept)
        w = updates.weight.to(torch.float64)
        stats.train_loss = float((updates.loss.to(torch.float64) * w).sum() / w.sum())
        if scenario is not None:
            updates, stats.verdict = scenario.defend(updates, plan.clients[kept], server, round_idx)
        new = algo.server_update(server, updates, rng)
        broken = non_finite(new)
        if broken:  # screened inputs can still overflow in a server step: keep the last model
            stats.skipped = f"the aggregate is not finite in {broken}; the updates were discarded"
        else:
            server = new
            T.put_rows_(bank, plan.clients[kept], T.rows(result.client_states, kept))
            if pending is not None:
                compression.commit(pending, plan.clients, keep, stats.train_loss)
    stats.seconds = time.perf_counter() - t0
    return server, stats


def refuse_secure(algo: Algorithm, scenario: Scenario | None) -> None:
    """Why a run cannot aggregate securely, as an error (checked before any training)."""
    if algo.sum_split is None:
        raise ValueError(
            f"secure aggregation needs a server step computed from sums; {algo.name}'s needs "
            "each client's update (supported: fedavg, fedprox, the fedopt family, --dp central)"
        )
    if scenario is not None and scenario.defence is not None:
        raise ValueError(
            f"the {scenario.defence.name} defence inspects each client's update, which secure "
            "aggregation hides from the server: run one or the other"
        )


def _secure_update(algo, server, bank, plan, result, rng, secure, round_idx, stats) -> dict:
    """The server step from the securely aggregated sum of every client's summands: the
    algorithm's (w delta, w, w buffers, ...) and w loss for the metric. A client withholds
    an update that is not finite; nothing per client reaches the server."""
    u = result.updates
    w = u.weight.to(torch.float64)
    summands = {"step": algo.sum_split.summands(server, u), "loss": u.loss * w, "weight": w}
    like = T.tree_map(lambda t: t.to(torch.float64), summands)
    rows = T.flat_rows(like).cpu().numpy()
    excluded = {
        int(plan.clients[r]): f"withheld its update: {why}" for r, why in result.rejected.items()
    }
    for r in np.flatnonzero(~np.isfinite(rows).all(axis=1)):
        excluded.setdefault(int(plan.clients[r]), "withheld its update: not finite")
    inputs = {
        int(c): rows[i] for i, c in enumerate(plan.clients.tolist()) if int(c) not in excluded
    }
    before, after = secure.drops(sorted(inputs), round_idx)
    stats.secure = {"protocol": secure.aggregator.name, "screening": SCREENING_OFF}
    try:
        agg = secure.aggregator.aggregate(inputs, round_idx, before, after)
    except AggregationFailed as e:
        stats.skipped = f"secure aggregation failed: {e}"
        stats.rejected = [Rejection(c, why) for c, why in sorted(excluded.items())]
        return server
    excluded.update(agg.excluded)
    stats.rejected = [Rejection(c, why) for c, why in sorted(excluded.items())]
    stats.secure.update(
        summed=len(agg.clients),
        unfinished=[f"client {c}: {why}" for c, why in sorted(agg.unfinished.items())],
        cost=agg.cost,
    )
    sums = T.unflat(torch.from_numpy(agg.total).to(w.device), like)
    sums["step"] = T.tree_map(lambda s, t: s.to(t.dtype), sums["step"], summands["step"])
    stats.train_loss = float(sums["loss"] / sums["weight"])
    new = algo.sum_split.server_update(server, sums["step"], rng)
    broken = non_finite(new)
    if broken:
        stats.skipped = f"the aggregate is not finite in {broken}; it was discarded"
        return server
    index = {int(c): i for i, c in enumerate(plan.clients.tolist())}
    kept = torch.tensor([index[c] for c in agg.clients], dtype=torch.long)
    T.put_rows_(bank, plan.clients[kept], T.rows(result.client_states, kept))
    return new


def non_finite(state: Any) -> str | None:
    """The first field of a server state that holds NaN or Inf, or None."""
    for path, leaf in pytree.tree_flatten_with_path(state)[0]:
        if leaf.is_floating_point() and not torch.isfinite(leaf).all():
            return pytree.keystr(path)
    return None
