"""`privlearn bench fl-speed`: privlearn's engines against Flower's own simulation.

Workloads (the issue's):
- A: FedProx Synthetic(1,1) with 1000 users, logistic regression, FedAvg, 10 / 100 / 1000
  clients per round, 1 local epoch (and FedProx's 20 as a second row), batch 10, lr 0.01;
- B: scikit-learn digits, Dirichlet(0.5) over 100 clients, SimpleCNN, 10 per round, 5 local
  epochs, batch 32, lr 0.05, momentum 0.9. With 14 samples per client on average, NIID-Bench's
  redraw-until-10-each never succeeds, so this split redraws until every client has 5.
Engines: `sequential` (plain loop), `vectorised` (eager vmap), `vectorised+compile`
(torch.compile'd step), `flower` (Flower 1.30 `run_simulation`, Ray backend, one actor per
CPU, ClientApp with the same local training: see flower_sim.py).

Each (workload, engine) runs in a fresh subprocess so memory and start-up are its own; the
parent samples the resident memory of that process and all its descendants (Ray's workers
included) every 0.1 s. All runs share seed, cohorts and batches, so their final models must
agree; the table reports the largest parameter difference from the sequential engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from privlearn.bench import machine

ENGINES = ("sequential", "vectorised", "vectorised+compile", "flower")


def _workload_a(per_round: int, epochs: int, rounds: int) -> dict:
    return {
        "cfg": {
            "dataset": "fedprox_synthetic",
            "partition": "natural",
            "n_clients": 1000,
            "synthetic_alpha": 1.0,
            "synthetic_beta": 1.0,
            "model": "mclr",
            "clients_per_round": per_round,
            "epochs": epochs,
            "batch_size": 10,
            "lr": 0.01,
        },
        "rounds": rounds,
    }


WORKLOADS = {
    "A 10/round E=1": _workload_a(10, 1, 6),
    "A 100/round E=1": _workload_a(100, 1, 5),
    "A 1000/round E=1": _workload_a(1000, 1, 3),
    "A 10/round E=20": _workload_a(10, 20, 4),
    "A 100/round E=20": _workload_a(100, 20, 3),
    "A 1000/round E=20": _workload_a(1000, 20, 2),
    "B digits CNN 10/round E=5": {
        "cfg": {
            "dataset": "digits",
            "partition": "label-dirichlet",
            "beta": 0.5,
            "n_clients": 100,
            "min_client_size": 5,
            "model": "cnn",
            "clients_per_round": 10,
            "epochs": 5,
            "batch_size": 32,
            "lr": 0.05,
            "momentum": 0.9,
        },
        "rounds": 10,
    },
}


# --- worker (runs in a subprocess) ----------------------------------------------------------


def _worker(spec: dict) -> dict:
    from privlearn.fl.run import Experiment, RunConfig

    engine = spec["engine"]
    cfg = RunConfig(
        **{
            **spec["cfg"],
            "threads": 1,
            "seed": spec["seed"],
            "engine": "sequential" if engine in ("sequential", "flower") else "vectorised",
            "compile": engine == "vectorised+compile",
        }
    )
    t0 = time.perf_counter()
    if engine == "flower":
        from privlearn.bench.flower_sim import run_flower

        out = run_flower(cfg, spec["rounds"], workers=spec["flower_workers"])
        params = out["params"]
        result = {"round_seconds": out["round_seconds"], "test_acc": out["test_acc"]}
    else:
        exp = Experiment.build(cfg)
        server, bank = exp.init_state()
        setup = time.perf_counter() - t0
        seconds = []
        for r in range(spec["rounds"]):
            t1 = time.perf_counter()
            server, _, _ = exp.round(server, bank, r)
            seconds.append(time.perf_counter() - t1)
        params = server["params"]
        result = {
            "round_seconds": seconds,
            "test_acc": exp.evaluate(server, bank)["test_acc"],
            "setup_seconds": setup,
        }
    result["wall_seconds"] = time.perf_counter() - t0
    torch.save({k: v.detach().cpu() for k, v in params.items()}, spec["params_out"])
    return result


# --- parent ---------------------------------------------------------------------------------


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _run_subprocess(spec: dict, timeout: float) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
        ),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "RAY_DEDUP_LOGS": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "privlearn.bench.fl_speed", json.dumps(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_bytes(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        text, _ = proc.communicate()
        done.set()
        return {"error": f"timed out after {timeout:.0f} s", "log_tail": text[-2000:]}
    done.set()
    sampler.join()
    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit code {proc.returncode}", "log_tail": text[-3000:]}
    result = json.loads(lines[-1][len("RESULT ") :])
    result["peak_rss_gb"] = peak[0] / 1024**3
    return result


def run(
    workloads: list[str],
    engines: list[str],
    out: Path,
    seed: int = 0,
    flower_workers: int = 2,
    timeout: float = 3600,
    console: Console | None = None,
    rounds: int | None = None,
) -> dict:
    """Measure every (workload, engine) pair; writes JSON after each, returns the document.
    An existing `out` is extended: its other pairs are kept, the ones measured now replaced.
    `rounds` replaces every workload's own number of rounds (WORKLOADS is left as it is)."""
    console = console or Console()
    unknown = [w for w in workloads if w not in WORKLOADS] + [
        e for e in engines if e not in ENGINES
    ]
    if unknown:
        raise ValueError(
            f"unknown workload/engine {unknown}; workloads: {list(WORKLOADS)}; "
            f"engines: {list(ENGINES)}"
        )
    doc = {
        "machine_before": machine(),
        "torch": torch.__version__,
        "seed": seed,
        "flower_workers": flower_workers,
        "our_threads": 1,
        "results": {},
    }
    try:
        import flwr

        doc["flwr"] = flwr.__version__
    except ImportError:
        doc["flwr"] = None
    if out.exists():  # keep what earlier invocations measured; re-measured pairs are replaced
        prev = json.loads(out.read_text())
        for res in prev.get("results", {}).values():
            for e, r in res.items():  # older files kept these only at the top level
                r.setdefault(
                    "flower_workers", prev.get("flower_workers") if e == "flower" else None
                )
                r.setdefault("machine", prev.get("machine_before"))
        doc["results"] = prev.get("results", {})
        doc["earlier_invocations"] = prev.get("earlier_invocations", []) + [
            {k: prev.get(k) for k in ("machine_before", "machine_after", "flower_workers")}
        ]
    tmp = out.parent / (out.stem + "-params")
    tmp.mkdir(parents=True, exist_ok=True)
    pairs = [(w, e) for w in workloads for e in engines]
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[now]}"),
        console=console,
    ) as bar:
        task = bar.add_task("fl-speed", total=len(pairs), now="")
        for w, e in pairs:
            bar.update(task, now=f"{w} / {e}")
            spec = {
                **WORKLOADS[w],
                **({} if rounds is None else {"rounds": rounds}),
                "engine": e,
                "seed": seed,
                "flower_workers": flower_workers,
                "params_out": str(tmp / f"{abs(hash((w, e)))}.pt"),
            }
            res = _run_subprocess(spec, timeout)
            res["load_1m"] = os.getloadavg()[0]
            res["rounds"] = spec["rounds"]
            res["flower_workers"] = flower_workers if e == "flower" else None
            res["machine"] = machine()
            res["params_file"] = spec["params_out"]
            doc["results"].setdefault(w, {})[e] = res
            _finish(doc, w)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, indent=1))
            bar.update(task, advance=1)
    doc["machine_after"] = machine()
    out.write_text(json.dumps(doc, indent=1))
    return doc


def _finish(doc: dict, w: str) -> None:
    """Steady-state timing, throughput, agreement with the sequential engine, ratios."""
    res = doc["results"][w]
    k = WORKLOADS[w]["cfg"]["clients_per_round"]
    ref = None
    if "sequential" in res and "error" not in res["sequential"]:
        ref = torch.load(res["sequential"]["params_file"], weights_only=True)
    for r in res.values():
        if "error" in r:
            continue
        secs = r["round_seconds"]
        r["first_round_seconds"] = secs[0]
        r["steady_seconds_per_round"] = float(np.median(secs[1:] if len(secs) > 1 else secs))
        r["clients_per_second"] = k / r["steady_seconds_per_round"]
        if ref is not None:
            p = torch.load(r["params_file"], weights_only=True)
            r["max_param_diff_vs_sequential"] = max(float((p[n] - ref[n]).abs().max()) for n in ref)
    flower = res.get("flower")
    for r in res.values():
        if "error" not in r and flower and "error" not in flower:
            r["speedup_vs_flower"] = (
                flower["steady_seconds_per_round"] / r["steady_seconds_per_round"]
            )
        if "error" not in r and ref is not None:
            r["speedup_vs_sequential"] = (
                res["sequential"]["steady_seconds_per_round"] / r["steady_seconds_per_round"]
            )


def print_table(doc: dict, console: Console) -> None:
    """One table per workload: steady-state time, throughput, memory, agreement, ratios."""
    console.print(
        f"privlearn: 1 thread; Flower {doc.get('flwr')}: Ray workers x 1 CPU as in each "
        f"flower row; load (1 min) before each run in the 'load' column"
    )
    for w, res in doc["results"].items():
        t = Table(title=w)
        for col in (
            "engine",
            "rounds",
            "load",
            "s/round",
            "1st round s",
            "clients/s",
            "peak GB",
            "test acc",
            "|Δθ| vs seq",
            "× Flower",
            "× seq",
        ):
            t.add_column(col, justify="right")
        for e, r in res.items():
            if "error" in r:
                t.add_row(e, "", "", f"[red]{r['error']}[/]", *[""] * 7)
                continue
            workers = r.get("flower_workers")
            t.add_row(
                e + (f" ({workers} workers)" if workers else ""),
                str(r.get("rounds", len(r["round_seconds"]))),
                f"{r.get('load_1m', float('nan')):.1f}",
                f"{r['steady_seconds_per_round']:.3f}",
                f"{r['first_round_seconds']:.2f}",
                f"{r['clients_per_second']:.0f}",
                f"{r['peak_rss_gb']:.2f}",
                f"{r['test_acc']:.4f}",
                f"{r.get('max_param_diff_vs_sequential', float('nan')):.0e}",
                f"{r.get('speedup_vs_flower', float('nan')):.1f}",
                f"{r.get('speedup_vs_sequential', float('nan')):.1f}",
            )
        console.print(t)


def plot(doc: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = list(doc["results"])
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(ws)), 4))
    width = 0.8 / len(ENGINES)
    for i, e in enumerate(ENGINES):
        vals = [doc["results"][w].get(e, {}).get("steady_seconds_per_round", np.nan) for w in ws]
        ax.bar(np.arange(len(ws)) + i * width, vals, width, label=e)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(ws)) + 0.4 - width / 2, ws, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("seconds per round (log)")
    ax.set_title("privlearn engines vs Flower simulation (lower is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":  # the worker side of _run_subprocess
    torch.set_num_threads(1)
    print("RESULT " + json.dumps(_worker(json.loads(sys.argv[1]))), flush=True)
