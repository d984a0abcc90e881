"""`privlearn bench ray`: seconds per round of the Ray engine with 1 and 2 workers against
the single-process vectorised engine, at 1000 clients a round, and what many machines would
give (projected from the measured per-worker throughput and per-round overhead).

Workload: fl-speed's "A 1000/round E=1" (FedProx Synthetic(1,1) over 1000 users, logistic
regression, FedAvg, 1000 clients a round, 1 local epoch, batch 10, lr 0.01), torch on one
thread per process. Each setting runs one warm-up round (Ray's workers fetch the data and
the algorithm then) and `rounds` timed rounds; each Ray setting starts its own local
cluster (start-up reported apart). All settings share seed, cohorts and batches, so their
final models must agree: the table shows the largest parameter difference from the
vectorised engine.

Per Ray round the driver's wall time is split into the slowest worker's time in its shard
(measured inside the worker) and the rest, the overhead: planning, shipping the shards'
client states and plan rows, gathering, screening and the server update. The projection
for M machines of one worker each: T(M) = overhead + K / (M r), r the 1-worker run's
clients per second in its worker; at 10x the cohort both terms are scaled by 10 (the
overhead is per client: states, plan rows and updates travel per client). It assumes
workers as fast as the measured one and ignores the network (the bytes a round ships are
reported, to be divided by a link's bandwidth).
"""

from __future__ import annotations

import pickle
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from privlearn.bench import machine, save_json
from privlearn.bench.fl_speed import WORKLOADS
from privlearn.fl import tree as T
from privlearn.fl.engine import TrainData

WORKLOAD = "A 1000/round E=1"
MACHINES = (1, 2, 4, 8, 16, 32, 64)


def _setting(name: str, workers: int | None, rounds: int, seed: int) -> dict:
    """Build, warm up and time one engine; returns its timings and final parameters."""
    from privlearn.fl.run import Experiment, RunConfig

    engine = {"engine": "ray", "ray_workers": workers} if workers else {"engine": "vectorised"}
    cfg = RunConfig(**WORKLOADS[WORKLOAD]["cfg"], threads=1, seed=seed, **engine)
    t0 = time.perf_counter()
    with Experiment.build(cfg) as exp:
        server, bank = exp.init_state()
        setup = time.perf_counter() - t0
        seconds, slowest, shards = [], [], []
        for r in range(rounds + 1):
            t1 = time.perf_counter()
            server, _, plan = exp.round(server, bank, r)
            if r == 0:  # warm-up
                continue
            seconds.append(time.perf_counter() - t1)
            if workers:
                slowest.append(max(exp.engine.shard_seconds))
                shards.append([round(s, 4) for s in exp.engine.shard_seconds])
        out = {
            "setting": name,
            "workers": workers,
            "setup_seconds": round(setup, 2),
            "round_seconds": [round(s, 4) for s in seconds],
            "median_round_seconds": statistics.median(seconds),
            "clients_per_round": len(plan),
        }
        if workers:
            out["shard_seconds"] = shards
            out["median_slowest_shard_seconds"] = statistics.median(slowest)
            out["median_overhead_seconds"] = statistics.median(
                s - w for s, w in zip(seconds, slowest, strict=True)
            )
        else:
            out["shipped_bytes_per_round"] = _shipped_bytes(exp, server, bank, plan)
        params = {k: v.detach().clone() for k, v in server["params"].items()}
    return out, params


def _shipped_bytes(exp, server: dict, bank, plan) -> dict:
    """What a Ray round would send (server, the cohort's states, its plan rows: pickled as
    Ray pickles them) and get back (updates and states, measured on 50 clients and scaled)."""
    sent = len(pickle.dumps((server, T.rows(bank, plan.clients), plan), protocol=5))
    few = plan.take(torch.arange(50))
    data = TrainData(exp.data.round_features(0), exp.data.y_train)
    result = exp.engine.run_clients(exp.algo, server, T.rows(bank, few.clients), few, data)
    back = len(pickle.dumps(result, protocol=5)) * len(plan) / len(few)
    return {"sent": sent, "returned": int(back)}


def _projection(doc: dict) -> list[dict]:
    one = next(r for r in doc["results"] if r["workers"] == 1)
    single = next(r for r in doc["results"] if r["workers"] is None)
    k = one["clients_per_round"]
    rate = k / one["median_slowest_shard_seconds"]
    overhead = one["median_overhead_seconds"]
    return [
        {
            "machines": m,
            "projected_round_seconds": overhead + k / (m * rate),
            "projected_speedup_vs_single_process": single["median_round_seconds"]
            / (overhead + k / (m * rate)),
            "projected_round_seconds_10x_cohort": 10 * (overhead + k / (m * rate)),
        }
        for m in MACHINES
    ]


def run(rounds: int, workers: list[int], seed: int, out: Path, console: Console) -> dict:
    doc = {
        "workload": WORKLOAD,
        "cfg": WORKLOADS[WORKLOAD]["cfg"],
        "rounds_timed": rounds,
        "warmup_rounds": 1,
        "threads_per_process": 1,
        "machine_before": machine(),
        "results": [],
    }
    ref = None
    for w in [None, *workers]:
        name = "vectorised (1 process)" if w is None else f"ray, {w} worker{'s' * (w > 1)}"
        console.print(f"{name}: warm-up + {rounds} rounds ...")
        res, params = _setting(name, w, rounds, seed)
        ref = ref or params
        res["max_param_diff_vs_vectorised"] = max(
            float((params[k] - ref[k]).abs().max()) for k in ref
        )
        res["machine"] = machine()
        doc["results"].append(res)
        save_json(doc, out)
    doc["machine_after"] = machine()
    if 1 in workers:
        one = next(r for r in doc["results"] if r["workers"] == 1)
        doc["per_worker_clients_per_second"] = (
            one["clients_per_round"] / one["median_slowest_shard_seconds"]
        )
        doc["projected"] = _projection(doc)
    save_json(doc, out)
    return doc


def print_table(doc: dict, console: Console) -> None:
    t = Table(title=f"{WORKLOAD}: seconds per round (median of {doc['rounds_timed']})")
    for c in (
        "setting",
        "s/round",
        "slowest shard s",
        "overhead s",
        "set-up s",
        "max diff",
        "load",
    ):
        t.add_column(c, justify="left" if c == "setting" else "right")
    for r in doc["results"]:
        t.add_row(
            r["setting"],
            f"{r['median_round_seconds']:.2f}",
            f"{r['median_slowest_shard_seconds']:.2f}" if r["workers"] else "",
            f"{r['median_overhead_seconds']:.2f}" if r["workers"] else "",
            f"{r['setup_seconds']:.1f}",
            f"{r['max_param_diff_vs_vectorised']:.0e}",
            f"{r['machine']['loadavg_1m']:.1f}",
        )
    console.print(t)
    if "projected" not in doc:
        return
    p = Table(title="projected: M machines of one measured worker each (no network time)")
    for c in ("machines", "s/round (K=1000)", "speed-up vs 1 process", "s/round (K=10000)"):
        p.add_column(c, justify="right")
    for r in doc["projected"]:
        p.add_row(
            str(r["machines"]),
            f"{r['projected_round_seconds']:.2f}",
            f"{r['projected_speedup_vs_single_process']:.2f}x",
            f"{r['projected_round_seconds_10x_cohort']:.1f}",
        )
    console.print(p)


def plot(doc: dict, path: Path) -> Path:
    """Seconds per round against machines: measured Ray rows, the single-process line and
    the projection (dashed, labelled as such)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ray_rows = [r for r in doc["results"] if r["workers"]]
    ax.plot(
        [r["workers"] for r in ray_rows],
        [r["median_round_seconds"] for r in ray_rows],
        "o",
        label="measured: ray, workers on this machine",
    )
    single = next(r for r in doc["results"] if r["workers"] is None)
    ax.axhline(
        single["median_round_seconds"], color="grey", label="measured: vectorised, 1 process"
    )
    if "projected" in doc:
        p = doc["projected"]
        ax.plot(
            [r["machines"] for r in p],
            [r["projected_round_seconds"] for r in p],
            "--",
            label="projected: machines of one measured worker",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("workers (machines)")
    ax.set_ylabel("seconds per round (log)")
    load = max(r["machine"]["loadavg_1m"] for r in doc["results"])
    ax.set_title(f"{WORKLOAD}, {doc['machine_before']['host_cpus']} cores, load <= {load:.0f}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
