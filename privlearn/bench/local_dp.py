"""Local DP-SGD's privacy-utility points: accuracy, the worst client's sample-level epsilon,
and seconds per round beside non-private FedAvg on the same plan (the cost of per-sample
gradients and per-client noise draws).

    python -m privlearn.bench.local_dp --dataset digits --rounds 20 --noise 0.5 1 2

Each noise multiplier z runs FedAvg with DP-SGD clients (Poisson record sampling, clip C,
all clients every round); z = 0 is the non-private baseline (same Poisson batches, no
clipping, no noise). Seconds per round are the mean over rounds after the first (which
pays vmap's tracing).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from privlearn.fl.algorithms import LocalSGD, build_algorithm
from privlearn.fl.data import DataSpec, build_federated
from privlearn.fl.engine import TrainData, make_engine
from privlearn.fl.evaluate import accuracy
from privlearn.fl.models import build_model
from privlearn.fl.plan import LocalWork, Sampling, plan_round
from privlearn.fl.privacy.local import LocalDP, private, worst_epsilon
from privlearn.fl.rounds import init_federation, run_round, server_rng


def local_dp_point(
    dataset: str = "digits",
    n_clients: int = 10,
    noise_multiplier: float = 1.0,
    rounds: int = 20,
    clip: float = 1.0,
    lr: float = 0.5,
    batch_size: int = 16,
    hidden: tuple[int, ...] = (32,),
    delta: float = 1e-5,
    seed: int = 0,
) -> dict:
    """One run; noise_multiplier 0 is the non-private baseline (epsilon inf)."""
    ds = build_federated(DataSpec(dataset, n_clients, "homo"), seed=seed)
    model = build_model("mlp", ds.input_shape, ds.n_classes, hidden)
    work = LocalWork(epochs=1, batch_size=batch_size, sampler="poisson")
    algo = build_algorithm(
        "fedavg", model, LocalSGD(lr), n_clients=n_clients, batch_size=batch_size
    )
    dp = LocalDP(clip, noise_multiplier, seed=seed) if noise_multiplier > 0 else None
    if dp is not None:
        algo = private(algo, model, dp, work)
    server, bank = init_federation(algo, model, ds.n_clients, seed)
    engine, data = make_engine("vectorised"), TrainData(ds.x_train, ds.y_train)
    seconds = []
    for r in range(rounds):
        plan = plan_round(ds.clients, Sampling("all"), work, seed, r)
        server, stats = run_round(algo, engine, server, bank, plan, data, server_rng(seed, r))
        seconds.append(stats.seconds)
    acc, _ = accuracy(model, *algo.global_model(server), ds.x_test, ds.y_test)
    eps, worst = worst_epsilon(bank, dp, work, delta) if dp else (float("inf"), -1)
    return {
        "dataset": dataset,
        "noise_multiplier": noise_multiplier,
        "clip": clip,
        "rounds": rounds,
        "batch_size": batch_size,
        "accuracy": acc,
        "epsilon": eps,
        "delta": delta,
        "worst_client": worst,
        "steps_of_worst": int(bank["dp"]["steps"][worst]) if dp else None,
        "seconds_per_round": statistics.mean(seconds[1:] or seconds),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--hidden", type=int, nargs="+", default=[32])
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    for z in [0.0, *a.noise]:
        row = local_dp_point(
            a.dataset, a.clients, z, a.rounds, a.clip, a.lr, a.batch_size, tuple(a.hidden), a.delta
        )
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
