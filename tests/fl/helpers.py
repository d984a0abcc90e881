"""Small drivers shared by the FL tests."""

from __future__ import annotations

import torch

from privlearn.fl import tree as T
from privlearn.fl.algorithms import LocalSGD, build_algorithm
from privlearn.fl.engine import TrainData, make_engine
from privlearn.fl.models import build_model
from privlearn.fl.plan import LocalWork, Sampling, plan_round
from privlearn.fl.rounds import init_federation, run_round, server_rng

MODEL_FOR = {"fedbn": "mlp-bn"}


def make(
    name,
    ds,
    *,
    lr=0.05,
    momentum=0.0,
    weight_decay=0.0,
    batch_size=16,
    model=None,
    hidden=(32,),
    **hp,
):
    model = build_model(model or MODEL_FOR.get(name, "mclr"), ds.input_shape, ds.n_classes, hidden)
    algo = build_algorithm(
        name,
        model,
        LocalSGD(lr, momentum, weight_decay),
        n_clients=ds.n_clients,
        batch_size=batch_size,
        **hp,
    )
    return model, algo


def run(algo, model, ds, engine, rounds, sampling, work, seed=0, dtype=torch.float32):
    """Train `rounds` rounds; returns (server, bank, per-round stats)."""
    server, bank = init_federation(algo, model, ds.n_clients, seed)
    cast = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
    server, bank = T.tree_map(cast, server), T.tree_map(cast, bank)
    data = TrainData(cast(ds.x_train), ds.y_train)
    stats = []
    for r in range(rounds):
        plan = plan_round(ds.clients, sampling, work, seed, r, algo.batches_per_step)
        server, st = run_round(algo, engine, server, bank, plan, data, server_rng(seed, r))
        stats.append(st)
    return server, bank, stats


def max_abs_diff(a, b) -> float:
    la, lb = T.leaves(a), T.leaves(b)
    assert len(la) == len(lb)
    return max(
        (
            float((x.double() - y.double()).abs().max())
            for x, y in zip(la, lb, strict=True)
            if x.numel()
        ),
        default=0.0,
    )


def engines():
    return make_engine("sequential"), make_engine("vectorised")


__all__ = ["Sampling", "LocalWork", "make", "run", "max_abs_diff", "engines"]
