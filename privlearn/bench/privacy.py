"""`privlearn bench privacy`: what differential privacy costs in accuracy, and what it buys
against attacks, on the same configurations.

Part `curves`: final test accuracy against epsilon (1, 2, 4, 8 and non-private) for central
(user-level) DP-FedAvg and for local (sample-level) DP-SGD, each noise multiplier calibrated
by the run to the target over its planned rounds; seconds per round beside the non-private
run of the same configuration.

Part `audit`, on one small, overfit digits federation (5 clients, all in every round) trained
with DP-SGD at each epsilon: gradient inversion of one image's clipped, noised gradient at that
epsilon's noise multiplier (PSNR), membership inference on the global model (loss threshold
and LiRA, 16 replayed shadows: TPR at 0.1 % and 1 % FPR), and a one-run audit (mislabelled
canary examples) whose empirical epsilon lower bound stands beside the accountant's epsilon
for the same run.

Every cell is written to the JSON as soon as it finishes; a rerun skips finished cells.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from privlearn.bench import cell_key, machine, progress_bar, save_json

EPSILONS = (1.0, 2.0, 4.0, 8.0, math.inf)
DELTA_NOTE = (
    "curves: default delta 1/N^1.1 (N clients, or the largest client's records under local DP);"
    " audit: delta 1e-5"
)

CURVES: dict[str, dict] = {
    # the pooled data re-split Dirichlet(0.5): on the generator's own users ("natural") FedAvg
    # reaches 0.28 non-privately in these 30 one-epoch rounds, too little to compare against
    "central: FedProx Synthetic(1,1) re-split Dir(0.5), 1000 clients": {
        "dataset": "fedprox_synthetic",
        "partition": "label-dirichlet",
        "beta": 0.5,
        "n_clients": 1000,
        "sampling": "poisson",
        "sample_rate": 0.05,
        "model": "mclr",
        "rounds": 30,
        "epochs": 1,
        "batch_size": 10,
        "lr": 0.01,
        "dp": "central",
        "clip": 0.5,
    },
    "central: MNIST-5k, 500 clients, 50 a round": {
        "dataset": "mnist5k",
        "partition": "homo",
        "n_clients": 500,
        "sampling": "poisson",
        "sample_rate": 0.1,
        "model": "mlp",
        "hidden": [64],
        "rounds": 30,
        "epochs": 1,
        "batch_size": 10,
        "lr": 0.1,
        "dp": "central",
        "clip": 1.0,
    },
    "local: digits, 10 clients": {
        "dataset": "digits",
        "partition": "homo",
        "n_clients": 10,
        "sampling": "all",
        "model": "mlp",
        "hidden": [32],
        "rounds": 20,
        "epochs": 1,
        "batch_size": 16,
        "lr": 0.5,
        "dp": "local",
        "clip": 1.0,
    },
    "local: MNIST-5k, 10 clients": {
        "dataset": "mnist5k",
        "partition": "homo",
        "n_clients": 10,
        "sampling": "all",
        "model": "mlp",
        "hidden": [32],
        "rounds": 20,
        "epochs": 1,
        "batch_size": 32,
        "lr": 0.5,
        "dp": "local",
        "clip": 1.0,
    },
}
# the audited federation: small and overfit, so the attacks have something to find
AUDIT = {
    "dataset": "digits",
    "partition": "homo",
    "n_clients": 5,
    "sampling": "all",
    "model": "mlp",
    "hidden": [64],
    "rounds": 5,
    "epochs": 10,
    "batch_size": 16,
    "lr": 0.2,
    "clip": 1.0,
}
AUDIT_ROWS_PER_CLIENT = 100  # one-run audit: few rows per client, so canaries are memorised
CANARIES, GUESSES = 100, 20  # one-run audit: m canaries, k+ = k- guesses fixed in advance
# below the default 1 / n^1.1 of ~110-row clients (5.5e-3), at which even 40 right guesses
# of 100 canaries prove only epsilon >= 0.37: the audit needs a delta it can see past
AUDIT_DELTA = 1e-5


def _config(base: dict, eps: float, out: Path, threads: int = 1):
    from privlearn.fl.run import RunConfig

    fields = {**base, "threads": threads, "out": str(out)}
    if math.isinf(eps):
        dp_keys = ("dp", "clip")
        fields = {k: v for k, v in fields.items() if k not in dp_keys}
    else:
        fields["target_epsilon"] = eps
    return RunConfig(**fields)


def _eps_name(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


def curve_cell(setting: str, eps: float) -> dict:
    """One run of a curve's configuration at target `eps` (inf: without DP)."""
    from privlearn.fl.run import run_experiment, summarise

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(CURVES[setting], eps, Path(tmp))
        t0 = time.perf_counter()
        doc = run_experiment(cfg, console=Console(quiet=True), progress=False)
        wall = time.perf_counter() - t0
    s = summarise(doc)
    p = doc.get("privacy") or {}
    last = doc["rounds"][-1]
    return {
        "setting": setting,
        "target_epsilon": None if math.isinf(eps) else eps,
        "epsilon": last.get("epsilon"),
        "worst_client_epsilon": p.get("worst_client_epsilon"),
        "delta": p.get("delta"),
        "noise_multiplier": p.get("noise_multiplier"),
        "sampling": p.get("sampling"),
        "rounds": len(doc["rounds"]),
        "status": doc["status"],
        "final_test_acc": s.get("final_test_acc"),
        "seconds_per_round": s.get("seconds_per_round"),
        "wall_seconds": round(wall, 2),
    }


def _for_sizes(eps: float, sizes: list[int]):
    """The audit's configuration with DP-SGD calibrated to `eps` for clients of `sizes`
    records (the attacked federations differ from the configuration's own partition), as a
    fixed noise multiplier; without DP at eps = inf. Returns (config, budget or None)."""
    from privlearn.fl.privacy import local as local_dp
    from privlearn.fl.privacy.budget import plan_budget

    cfg = _config(AUDIT, math.inf, Path(tempfile.gettempdir()) / "privlearn-audit")
    if math.isinf(eps):
        return cfg, None
    delta = AUDIT_DELTA
    cfg = dataclasses.replace(cfg, dp="local", clip=AUDIT["clip"], delta=delta)
    units = local_dp.units(sizes, cfg.work())  # the work of a DP run: Poisson record sampling
    budget = plan_budget(None, eps, delta, units, "rdp", cfg.rounds)
    return dataclasses.replace(cfg, noise_multiplier=budget.noise_multiplier), budget


def _one_run(eps: float) -> dict:
    """Mislabelled test rows as canaries, each inserted (with probability 1/2) into a client
    of AUDIT_ROWS_PER_CLIENT rows; guesses from each canary's loss drop over training."""
    from privlearn.fl.privacy import local as local_dp
    from privlearn.fl.privacy.audit import one_run
    from privlearn.fl.run import Experiment

    plain = Experiment.build(_for_sizes(math.inf, [])[0])
    few = [c[:AUDIT_ROWS_PER_CLIENT] for c in plain.data.clients]
    data = dataclasses.replace(plain.data, clients=few)
    x, y = one_run.mislabelled_canaries(
        data.x_test[:CANARIES], data.y_test[:CANARIES], data.n_classes, seed=0
    )
    inc = one_run.inclusion(CANARIES, seed=0)
    data, _ = one_run.insert_example_canaries(data, x, y, inc, seed=0)
    cfg, budget = _for_sizes(eps, [len(c) for c in data.clients])
    exp = dataclasses.replace(Experiment.build(cfg), data=data)
    server, bank = exp.init_state()
    start = exp.algo.global_model(server)
    for r in range(cfg.rounds):
        server, _, _ = exp.round(server, bank, r)
    scores = one_run.example_scores(exp.model, exp.algo.global_model(server), x, y, initial=start)
    delta = 0.0 if budget is None else budget.delta
    out = one_run.audit(scores, inc, GUESSES, GUESSES, delta=delta)
    if budget is not None:  # from the steps each client took, on the data it held
        dp = cfg.local_dp(budget.noise_multiplier)
        out["accountant_epsilon"], _ = local_dp.worst_epsilon(bank, dp, cfg.work(), delta)
    else:
        out["accountant_epsilon"] = None
    return out


def audit_cell(eps: float, shadows: int = 16, out_dir: Path | None = None) -> dict:
    """Inversion, membership inference and the one-run audit at target `eps`."""
    from privlearn.fl.data.datasets import load_centralised
    from privlearn.fl.privacy.audit.inversion import audit_inversion
    from privlearn.fl.privacy.audit.membership import membership_game, write_report

    t0 = time.perf_counter()
    pool = load_centralised(AUDIT["dataset"])
    # the game's federations: half of the pool's rows over the clients
    game_size = (len(pool.y_train) + len(pool.y_test)) // 2 // AUDIT["n_clients"]
    cfg, budget = _for_sizes(eps, [game_size])
    z = None if budget is None else budget.noise_multiplier
    # one image's gradient through the Gaussian mechanism at the game's noise multiplier
    inv = audit_inversion(
        "digits", "mlp", "gradient", 1, dp=None if z is None else (AUDIT["clip"], z), seed=0
    )
    game = membership_game(cfg, "global", n_models=shadows + 1, seed=0)
    if out_dir is not None:
        write_report(game, out_dir / f"mia-eps-{_eps_name(eps)}", f"DP-SGD, epsilon {eps:g}")
    return {
        "target_epsilon": None if math.isinf(eps) else eps,
        "noise_multiplier": z,
        "membership_game_epsilon": None if budget is None else budget.epsilon(cfg.rounds),
        "inversion": {
            k: inv[k]
            for k in ("mean_psnr", "mean_ssim", "baseline_psnr", "labels_correct")
            if k in inv
        },
        "membership": {
            name: {
                "auc": r["auc"],
                "n_nonmembers": r["n_nonmembers"],
                "tpr_at_fpr": r["tpr_at_fpr"],
                "shadows": r["shadows"],
                "replay": r["replay"],
            }
            for name, r in game["attacks"].items()
        },
        "membership_meta": game["meta"],
        "one_run": _one_run(eps),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run(parts: tuple[str, ...], epsilons, settings, shadows: int, path: Path, console: Console):
    """Run the chosen parts' cells not yet in `path`, saving after each."""
    doc = _load(path)
    doc["machine"] = machine()
    doc.setdefault("notes", {})["delta"] = DELTA_NOTE
    cells = []
    if "curves" in parts:
        cells += [("curves", cell_key(s, _eps_name(e)), s, e) for s in settings for e in epsilons]
    if "audit" in parts:
        cells += [("audit", cell_key("audit", _eps_name(e)), None, e) for e in epsilons]
    todo = [c for c in cells if c[1] not in doc[c[0]]]
    figures = path.parent / (path.stem + "-figures")
    with progress_bar(console) as bar:
        task = bar.add_task("privacy cells", total=len(todo), last="")
        for part, key, setting, eps in todo:
            if part == "curves":
                cell = curve_cell(setting, eps)
                last = f"{key}: acc {cell['final_test_acc']:.3f}"
            else:
                cell = audit_cell(eps, shadows, figures)
                last = f"{key}: PSNR {cell['inversion']['mean_psnr']:.1f}"
            doc[part][key] = cell
            save_json(doc, path)
            bar.update(task, advance=1, last=last)
    return doc


def _load(path: Path) -> dict:
    import json

    if path.exists():
        doc = json.loads(path.read_text())
        if {"curves", "audit"} <= set(doc):
            return doc
    return {"benchmark": "privacy", "curves": {}, "audit": {}}


def _f(v, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def curves_markdown(doc: dict) -> str:
    rows = ["| setting | target ε | ε spent | z | accuracy | s/round | rounds |", "|" + "---|" * 7]
    for c in doc["curves"].values():
        rows.append(
            f"| {c['setting']} | {_f(c['target_epsilon'], 'g') if c['target_epsilon'] else '∞'} "
            f"| {_f(c['epsilon'], '.3g')} | {_f(c['noise_multiplier'], '.3g')} "
            f"| {_f(c['final_test_acc'])} | {_f(c['seconds_per_round'], '.3f')} | {c['rounds']} |"
        )
    return "\n".join(rows)


def audit_markdown(doc: dict) -> str:
    head = (
        "| target ε | z | inversion PSNR (dB) | MIA TPR @ 0.1 % / 1 % FPR (LiRA) | "
        "loss-threshold TPR @ 1 % | one-run ε lower bound | accountant ε | "
        "attacked model's accuracy (members / non-members) |"
    )
    rows = [head, "|" + "---|" * 8]
    for c in doc["audit"].values():
        m = c["membership"]
        lira, loss = m["lira-online-fixed-var"], m["loss-threshold"]
        t = lambda r, f: r["tpr_at_fpr"][f]["tpr"]  # noqa: E731
        o, meta = c["one_run"], c["membership_meta"]
        rows.append(
            f"| {_f(c['target_epsilon'], 'g') if c['target_epsilon'] else '∞'} "
            f"| {_f(c['noise_multiplier'], '.3g')} | {c['inversion']['mean_psnr']:.1f} "
            f"| {t(lira, '0.001'):.4f} / {t(lira, '0.01'):.4f} "
            f"| {t(loss, '0.01'):.4f} "
            f"| {o['epsilon_lower_bound']:.2f} ({o['correct']}/{o['guesses']}; "
            f"at most {o['epsilon_ceiling']:.2f}) "
            f"| {_f(o['accountant_epsilon'], '.3g')} "
            f"| {_f(meta['acc_members'])} / {_f(meta['acc_nonmembers'])} |"
        )
    return "\n".join(rows)


def print_tables(doc: dict, console: Console) -> None:
    for title, md in (("curves", curves_markdown(doc)), ("audit", audit_markdown(doc))):
        lines = [line for line in md.splitlines() if not line.startswith("|--")]
        head, *body = [[x.strip() for x in line.strip("|").split("|")] for line in lines]
        table = Table(*head, title=f"privacy {title}")
        for row in body:
            table.add_row(*row)
        console.print(table)


def plot_curves(doc: dict, path: Path) -> Path:
    """Accuracy against epsilon per setting, the non-private accuracy as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, setting in enumerate(CURVES):
        cells = [c for c in doc["curves"].values() if c["setting"] == setting]
        pts = sorted(
            (c["target_epsilon"], c["final_test_acc"]) for c in cells if c["target_epsilon"]
        )
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", color=f"C{i}", label=setting)
        for c in cells:
            if c["target_epsilon"] is None:
                ax.axhline(c["final_test_acc"], color=f"C{i}", ls="--", lw=0.8)
    ax.set(xscale="log", xlabel="target ε (dashed: no DP)", ylabel="final test accuracy")
    ax.set_xticks(EPSILONS[:-1], [f"{e:g}" for e in EPSILONS[:-1]])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
