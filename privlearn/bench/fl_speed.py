"""`privlearn bench fl-speed`: privlearn's engines against hand-written baselines and Flower.

Workloads (the issue's):
- A: FedProx Synthetic(1,1) with 1000 users, logistic regression, FedAvg, 10 / 100 / 1000
  clients per round, 1 local epoch (and FedProx's 20 as a second row), batch 10, lr 0.01;
  "A ... to 30 %" runs until the test accuracy reaches 30 % (the majority class is 13.5 %),
  evaluating after every round, and counts everything from the process start (data, model,
  compilation) in its time to that accuracy;
- B: scikit-learn digits, Dirichlet(0.5) over 100 clients, SimpleCNN, 10 per round, 5 local
  epochs, batch 4, lr 0.02, momentum 0.9, 40 rounds (batch 32 and lr 0.05 gave 5 steps a
  client a round and stayed at 10 % after 10 rounds; this setting ends at 90 %). With 14
  samples per client on average, NIID-Bench's redraw-until-10-each never succeeds, so this
  split redraws until every client has 5.
Engines: `sequential` (plain loop), `vectorised` (eager vmap, autograd), `vectorised+closed`
(eager, mclr's gradient in closed form), `vectorised+compile` / `vectorised+closed+compile`
(torch.compile'd step), `baseline-vmap` / `baseline-closed` (the hand-written rounds of
fl_baseline.py), `flower` (Flower `run_simulation`, Ray backend, one actor per CPU, ClientApp
with the same local training: see flower_sim.py). An engine that does not apply to a workload
(closed form on the CNN, the plain-SGD baselines on B's momentum) is listed as not applicable.

Each (workload, engine) runs in a fresh subprocess so memory and start-up are its own; the
parent samples the resident memory of that process and all its descendants (Ray's workers
included) every 0.1 s. `repeats` interleaves repetitions (every pair once, then again), and
the table reports medians over them. All runs share seed, cohorts and batches, so their final
models must agree; the table reports the largest parameter difference from the sequential
engine.
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

# what each engine sets in the RunConfig (flower and the baselines run their own loops)
ENGINE_CFG = {
    "sequential": {"engine": "sequential"},
    "vectorised": {},
    "vectorised+closed": {"closed_form": True},
    "vectorised+compile": {"compile": True},
    "vectorised+closed+compile": {"closed_form": True, "compile": True},
    "baseline-vmap": {},
    "baseline-closed": {},
    "flower": {"engine": "sequential"},
}
ENGINES = tuple(ENGINE_CFG)
TARGET_ACC = 0.30  # the "to 30 %" workload's test accuracy (majority class: 13.5 %)


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
    "A 100/round E=1 to 30 %": {**_workload_a(100, 1, 80), "target_acc": TARGET_ACC},
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
            "batch_size": 4,
            "lr": 0.02,
            "momentum": 0.9,
        },
        "rounds": 40,
    },
}


# --- worker (runs in a subprocess) ----------------------------------------------------------


def not_applicable(workload: dict, engine: str) -> str | None:
    """Why `engine` cannot run `workload`, or None."""
    cfg = workload["cfg"]
    if "target_acc" in workload and (engine == "flower" or engine.startswith("baseline")):
        return "time to accuracy is measured where the test set is evaluated every round"
    if "closed" in engine and cfg["model"] != "mclr":
        return f"closed-form gradients are mclr's only (model {cfg['model']})"
    if engine.startswith("baseline") and cfg.get("momentum", 0.0):
        return "the baselines write out plain SGD (this workload has momentum)"
    return None


def _worker(spec: dict) -> dict:
    from privlearn.fl.evaluate import accuracy
    from privlearn.fl.run import Experiment, RunConfig

    engine = spec["engine"]
    cfg = RunConfig(**{**spec["cfg"], "threads": 1, "seed": spec["seed"], **ENGINE_CFG[engine]})
    t0 = time.perf_counter()
    target = spec.get("target_acc")
    if engine == "flower":
        from privlearn.bench.flower_sim import run_flower

        out = run_flower(cfg, spec["rounds"], workers=spec["flower_workers"])
        params = out["params"]
        result = {"round_seconds": out["round_seconds"], "test_acc": out["test_acc"]}
    elif engine.startswith("baseline"):
        from privlearn.bench.fl_baseline import run_baseline

        out = run_baseline(cfg, spec["rounds"], engine.split("-")[1])
        params, exp = out["params"], out["exp"]
        acc = accuracy(exp.model, params, {}, exp.data.x_test, exp.data.y_test)[0]
        result = {"round_seconds": out["round_seconds"], "test_acc": acc}
    else:
        exp = Experiment.build(cfg)
        server, bank = exp.init_state()
        setup = time.perf_counter() - t0
        seconds, accs = [], []
        for r in range(spec["rounds"]):
            t1 = time.perf_counter()
            server, _, _ = exp.round(server, bank, r)
            seconds.append(time.perf_counter() - t1)
            if target is not None:  # evaluation is part of the time to accuracy
                accs.append(exp.evaluate(server, bank)["test_acc"])
                if accs[-1] >= target:
                    break
        params = server["params"]
        result = {
            "round_seconds": seconds,
            "test_acc": exp.evaluate(server, bank)["test_acc"],
            "setup_seconds": setup,
        }
        if target is not None:
            reached = accs[-1] >= target
            result["target_acc"] = target
            result["round_reached"] = len(accs) if reached else None
            result["seconds_to_target"] = time.perf_counter() - t0 if reached else None
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
        # Flower starts its own Ray instance, never joins a cluster found running on the host
        "RAY_ADDRESS": "local",
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
    repeats: int = 1,
) -> dict:
    """Measure every (workload, engine) pair `repeats` times, interleaved (every pair once,
    then every pair again); writes JSON after each run, returns the document. An existing
    `out` is extended: its other pairs are kept, the ones measured now replaced. `rounds`
    replaces every workload's own number of rounds (WORKLOADS is left as it is)."""
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
        "repeats": repeats,
        "results": {},
    }
    try:
        import flwr

        doc["flwr"] = flwr.__version__
    except ImportError:
        doc["flwr"] = None
    if out.exists():  # keep what earlier invocations measured; re-measured pairs are replaced
        prev = json.loads(out.read_text())
        doc["results"] = prev.get("results", {})
        doc["earlier_invocations"] = prev.get("earlier_invocations", []) + [
            {k: prev.get(k) for k in ("machine_before", "machine_after", "flower_workers")}
        ]
    tmp = out.parent / (out.stem + "-params")
    tmp.mkdir(parents=True, exist_ok=True)
    pairs = [(w, e) for w in workloads for e in engines]
    for w, e in pairs:
        why = not_applicable(WORKLOADS[w], e)
        doc["results"].setdefault(w, {})[e] = {"runs": []} if why is None else {"n/a": why}
    todo = [(w, e) for w, e in pairs if "n/a" not in doc["results"][w][e]]
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[now]}"),
        console=console,
    ) as bar:
        task = bar.add_task("fl-speed", total=len(todo) * repeats, now="")
        for rep in range(repeats):
            for w, e in todo:
                bar.update(task, now=f"{w} / {e} ({rep + 1}/{repeats})")
                spec = {
                    **WORKLOADS[w],
                    **({} if rounds is None else {"rounds": rounds}),
                    "engine": e,
                    "seed": seed,
                    "flower_workers": flower_workers,
                    "params_out": str(tmp / f"{abs(hash((w, e)))}.pt"),
                }
                load = os.getloadavg()[0]
                res = _run_subprocess(spec, timeout)
                res["load_1m"] = [load, os.getloadavg()[0]]  # before and after
                res["machine"] = machine()
                doc["results"][w][e]["runs"].append(res)
                doc["results"][w][e].update(
                    flower_workers=flower_workers if e == "flower" else None,
                    params_file=spec["params_out"],
                )
                _finish(doc, w)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(doc, indent=1))
                bar.update(task, advance=1)
    doc["machine_after"] = machine()
    out.write_text(json.dumps(doc, indent=1))
    return doc


def _finish(doc: dict, w: str) -> None:
    """Medians over the repetitions: steady-state time (each run's median round after the
    first), first round, throughput; agreement with the sequential engine; ratios of medians."""
    res = doc["results"][w]
    k = WORKLOADS[w]["cfg"]["clients_per_round"]
    ok = {e: r for e, r in res.items() if r.get("runs") and "error" not in r["runs"][-1]}
    for r in res.values():
        if r.get("runs") and "error" in r["runs"][-1]:
            r["error"] = r["runs"][-1]["error"]
    ref = None
    if "sequential" in ok:
        ref = torch.load(ok["sequential"]["params_file"], weights_only=True)
    for r in ok.values():
        runs = [x for x in r["runs"] if "error" not in x]
        steady = [float(np.median(x["round_seconds"][1:] or x["round_seconds"])) for x in runs]
        r["steady_seconds_per_round"] = float(np.median(steady))
        r["steady_seconds_each_run"] = steady
        r["first_round_seconds"] = float(np.median([x["round_seconds"][0] for x in runs]))
        r["clients_per_second"] = k / r["steady_seconds_per_round"]
        r["rounds"] = len(runs[-1]["round_seconds"])
        r["test_acc"] = runs[-1]["test_acc"]
        r["peak_rss_gb"] = float(np.median([x["peak_rss_gb"] for x in runs]))
        r["load_1m"] = [x["load_1m"] for x in runs]
        if runs[-1].get("target_acc") is not None:
            reached = [x["seconds_to_target"] for x in runs if x["seconds_to_target"] is not None]
            r["target_acc"] = runs[-1]["target_acc"]
            r["round_reached"] = runs[-1]["round_reached"]
            r["seconds_to_target"] = float(np.median(reached)) if reached else None
        if ref is not None:
            p = torch.load(r["params_file"], weights_only=True)
            r["max_param_diff_vs_sequential"] = max(float((p[n] - ref[n]).abs().max()) for n in ref)
    for name, key in (("flower", "speedup_vs_flower"), ("sequential", "speedup_vs_sequential")):
        if name in ok:
            for r in ok.values():
                r[key] = ok[name]["steady_seconds_per_round"] / r["steady_seconds_per_round"]
    for base in ("baseline-vmap", "baseline-closed"):
        if base in ok:
            for r in ok.values():
                r[f"times_{base}"] = (
                    r["steady_seconds_per_round"] / ok[base]["steady_seconds_per_round"]
                )


def _f(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def print_table(doc: dict, console: Console) -> None:
    """One table per workload: medians over the repetitions, ratios of medians (throughput
    and peak memory are in the JSON)."""
    console.print(
        f"privlearn: 1 thread; Flower {doc.get('flwr')}: Ray workers x 1 CPU as in each "
        f"flower row; 'load' is the 1-minute load before each repetition; medians of "
        f"{doc.get('repeats', 1)} interleaved repetitions"
    )
    cols = (
        "engine",
        "reps",
        "rounds",
        "load",
        "s/round",
        "1st round s",
        "test acc",
        "|Δθ| vs seq",
        "× Flower",
        "× seq",
        "/ vmap base",
        "/ closed base",
        "s to acc",
    )
    for w, res in doc["results"].items():
        t = Table(title=w)
        for col in cols:
            t.add_column(col, justify="right", no_wrap=col == "engine")
        for e, r in res.items():
            if "n/a" in r or "error" in r or "steady_seconds_per_round" not in r:
                why = r.get("n/a") or r.get("error") or "not run"
                t.add_row(e, "", "", "", f"[dim]{why}[/]", *[""] * (len(cols) - 5))
                continue
            workers = r.get("flower_workers")
            loads = "/".join(f"{x[0]:.1f}" for x in r["load_1m"])
            t.add_row(
                e + (f" ({workers} workers)" if workers else ""),
                str(len(r["runs"])),
                str(r["rounds"]),
                loads,
                f"{r['steady_seconds_per_round']:.3f}",
                f"{r['first_round_seconds']:.2f}",
                f"{r['test_acc']:.4f}",
                _f(r.get("max_param_diff_vs_sequential"), ".0e"),
                _f(r.get("speedup_vs_flower"), ".1f"),
                _f(r.get("speedup_vs_sequential"), ".1f"),
                _f(r.get("times_baseline-vmap"), ".2f"),
                _f(r.get("times_baseline-closed"), ".2f"),
                _f(r.get("seconds_to_target"), ".1f"),
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
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":  # the worker side of _run_subprocess
    torch.set_num_threads(1)
    print("RESULT " + json.dumps(_worker(json.loads(sys.argv[1]))), flush=True)
