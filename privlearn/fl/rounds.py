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
from privlearn.fl.engine.base import Engine, TrainData
from privlearn.fl.models import Model
from privlearn.fl.plan import RoundPlan
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
) -> tuple[dict, RoundStats]:
    """Train the planned cohort, drop bad updates (naming the clients), defend, update the
    server, and write surviving clients' new states into `bank` (in place).

    With a `scenario`, attacker rows train on their poisoned data and forge their uploads
    in round `round_idx` (0-based) while the attack is active, and the scenario's defence
    runs on the screened uploads before the algorithm's server update."""
    t0 = time.perf_counter()
    stats = RoundStats(clients=plan.clients.tolist())
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
    stats.seconds = time.perf_counter() - t0
    return server, stats


def non_finite(state: Any) -> str | None:
    """The first field of a server state that holds NaN or Inf, or None."""
    for path, leaf in pytree.tree_flatten_with_path(state)[0]:
        if leaf.is_floating_point() and not torch.isfinite(leaf).all():
            return pytree.keystr(path)
    return None
