"""`privlearn ...`: parse, call, print. Work lives in the packages, not here."""

from __future__ import annotations

import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

import privlearn
from privlearn.he import PRESETS, available_backends
from privlearn.linalg.cost import HETAL_SHAPES

app = typer.Typer(
    help="privlearn: machine learning on data its owners will not reveal.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(
    help="Benchmarks: each prints a table and writes JSON.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
he_app = typer.Typer(
    help="Encrypted transfer learning (HETAL): train and serve on ciphertexts.",
    no_args_is_help=True,
)
app.add_typer(he_app, name="he")
fl_app = typer.Typer(help="Federated learning: runs and partitions.", no_args_is_help=True)
app.add_typer(fl_app, name="fl")
console = Console(width=None if sys.stdout.isatty() else 120)


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


@app.command()
def info() -> None:
    """Versions, which CKKS backends load, and the parameter presets with their security."""
    console.print(
        f"privlearn {privlearn.__version__} on Python {platform.python_version()} "
        f"({platform.machine()})"
    )
    for pkg in ("openfhe", "numpy", "torch", "flwr"):
        console.print(f"  {pkg:8s} {_version(pkg)}")
    console.print("\nCKKS backends:")
    for name, reason in available_backends().items():
        status = "[green]loads[/]" if reason is None else f"[red]unavailable[/]: {reason}"
        note = " (NOT encryption: a slot simulator)" if name == "simulator" else ""
        console.print(f"  {name:10s} {status}{note}")
    t = Table(title="CKKS presets")
    for col in (
        "preset",
        "N",
        "slots",
        "depth",
        "scale/q0 bits",
        "dnum",
        "secret key",
        "levels after boot",
        "log2 QP / max",
        "security",
    ):
        t.add_column(col)
    for p in PRESETS.values():
        s = p.summary()
        t.add_row(
            p.name,
            f"2^{p.ring_dim.bit_length() - 1}",
            str(p.slots),
            str(p.depth),
            f"{p.scale_bits}/{p.first_mod_bits}",
            str(p.num_large_digits),
            p.secret_dist.replace("uniform_", "").replace("_encapsulated", "-encaps."),
            str(p.levels_after_bootstrap) if p.bootstrappable else "-",
            f"{s['log_qp']} / {s['max_log_qp_128']}",
            "128-bit" if p.secure else "[red]INSECURE (tests only)[/]",
        )
    console.print(t)


@app.command()
def demo(
    backend: str = typer.Option("openfhe", help="openfhe (real encryption) or simulator"),
    preset: str = typer.Option("n15-d11", help="a 128-bit preset (see `privlearn info`)"),
    task: str = typer.Option("cancer", help="cancer, wine, digits, mnist or tweets"),
    epochs: int = typer.Option(None, help="override the task's default epochs"),
) -> None:
    """Encrypted fine-tuning on real data: the client keeps the key, the server trains."""
    from privlearn.demo import run_demo

    run_demo(backend=backend, preset=preset, task=task, epochs=epochs, console=console)


@bench_app.command("he-ops")
def bench_he_ops(
    presets: list[str] = typer.Option(["n15-d11", "n16-d24", "n16-d28", "n16-boot"], "--preset"),
    backends: list[str] = typer.Option(["openfhe", "simulator"], "--backend"),
    reps: int = typer.Option(5, help="repetitions per timing (median reported)"),
    out: Path = typer.Option(Path("results/bench-he-ops.json"), help="JSON output"),
) -> None:
    """Time every CKKS primitive per preset and backend; key and ciphertext sizes."""
    from privlearn.bench.he_ops import print_table, run

    results = run(presets, backends, reps=reps, console=console)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print_table(results, console)
    console.print(f"wrote {out}")


@he_app.command("train")
def he_train(
    task: str = typer.Option("cancer", help="mnist, digits, tweets, cancer or wine"),
    refresh: str = typer.Option("client", help="client (interactive) or bootstrap"),
    preset: str = typer.Option(
        None, help="CKKS preset (default: n15-d11, or n16-boot7 for bootstrap)"
    ),
    backend: str = typer.Option("openfhe", help="openfhe, or simulator (NOT encryption)"),
    epochs: int = typer.Option(None, help="override the task's default epochs"),
    max_train: int = typer.Option(None, help="train on the first N training samples only"),
    separate_process: bool = typer.Option(False, help="run the server in its own process"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("results"), help="folder for the JSON and PNG"),
) -> None:
    """Fine-tune a softmax head on encrypted features; compare with plaintext training."""
    from privlearn.transfer.experiment import TASK_DEFAULTS, run_task, with_epochs
    from privlearn.transfer.report import print_result

    preset = preset or ("n16-boot7" if refresh == "bootstrap" else "n15-d11")
    result = run_task(
        task,
        refresh=refresh,
        preset=preset,
        backend=backend,
        seed=seed,
        config=with_epochs(TASK_DEFAULTS[task], epochs),
        max_train=max_train,
        separate_process=separate_process,
        out_dir=out,
    )
    print_result(result, console)


@bench_app.command("transfer")
def bench_transfer(
    tasks: list[str] = typer.Option([], "--task", help="cancer, wine, digits, mnist, tweets"),
    refresh: list[str] = typer.Option(["client"], "--refresh", help="client and/or bootstrap"),
    backend: str = typer.Option("openfhe"),
    epochs: int = typer.Option(None, help="override the tasks' default epochs"),
    max_train: int = typer.Option(None, help="train on the first N samples of each task"),
    hetal: list[str] = typer.Option(
        [], "--hetal-shape", help="time HETAL's shape in these refresh modes (client, bootstrap)"
    ),
    peer_task: str = typer.Option(None, "--peer", help="run Concrete ML on this binary task"),
    peer_iters: int = typer.Option(3, help="Concrete ML's max_iter"),
    time_model: Path = typer.Option(
        None, help="`bench he-ops` JSON: with --backend simulator, predict HETAL's shape from it"
    ),
    breakdown: bool = typer.Option(
        False, help="predict one iteration per task shape from --time-model, split by op"
    ),
    out: Path = typer.Option(Path("results/bench-transfer.json")),
) -> None:
    """Encrypted fine-tuning per task vs plaintext; HETAL's shape; Concrete ML side by side.

    Runs the parts asked for (none: only the table), keeps each in results/, and prints and
    writes the table of every kept result (JSON and Markdown)."""
    from privlearn.bench.transfer import collect, markdown, print_table, run
    from privlearn.transfer.experiment import TASK_DEFAULTS

    for name, given, known in (
        ("task", tasks, TASK_DEFAULTS),
        ("refresh", refresh, ("client", "bootstrap")),
        ("hetal-shape", hetal, ("client", "bootstrap")),
    ):
        if set(given) - set(known):
            raise typer.BadParameter(f"--{name} takes {', '.join(known)}; got {given}")

    run(
        tasks,
        refresh,
        backend=backend,
        epochs=epochs,
        max_train=max_train,
        hetal=hetal,
        peer_task=peer_task,
        peer_iters=peer_iters,
        console=console,
        time_model=time_model,
        breakdown=breakdown,
    )
    results = collect()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(markdown(results))
    print_table(results, console)
    console.print(f"wrote {out} and {out.with_suffix('.md')}")


@bench_app.command("softmax")
def bench_softmax(
    ranges: list[float] = typer.Option([4, 8, 32, 128], "--range", help="R: logits in [-R, R]"),
    classes: list[int] = typer.Option([3, 7, 10, 16], "--classes"),
    methods: list[str] = typer.Option(
        ["hetal", "hetal-precise", "lee", "hong", "jin", "ours"], "--method"
    ),
    rows: int = typer.Option(100_000, help="rows per configuration (simulator and plaintext)"),
    openfhe: bool = typer.Option(True, help="real OpenFHE runs of one block for the subset"),
    openfhe_preset: str = typer.Option("toy-n12-boot", help="preset of those runs"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("results/bench-softmax.json"), help="JSON (resumable)"),
) -> None:
    """Softmax approximations: error (simulator + OpenFHE), depth, mults, bootstraps, time."""
    from privlearn.bench import softmax as bench

    results = bench.run(
        ranges,
        classes,
        methods,
        rows=rows,
        seed=seed,
        out=out,
        openfhe=bench.OPENFHE_SUBSET if openfhe else (),
        openfhe_preset=openfhe_preset,
        progress=console.print,
    )
    table = bench.summary(results) + "\n\n" + bench.markdown(results)
    out.with_suffix(".md").write_text(table + "\n")
    bench.plot(results, out.with_suffix(".png"))
    console.print(table)
    console.print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")


@bench_app.command("matmul")
def bench_matmul(
    shapes: list[str] = typer.Option(
        [f"{d.a},{d.b},{d.c}" for d in HETAL_SHAPES],
        "--shape",
        help="a,b,c as in HETAL (default: its five shapes)",
    ),
    algorithms: list[str] = typer.Option([], "--algorithm", help="default: all"),
    preset: str = typer.Option("n16-d24", help="CKKS preset for OpenFHE timings and key sizes"),
    level: int = typer.Option(None, help="operand level (default: the deepest algorithm's)"),
    max_seconds: float = typer.Option(150.0, help="time on OpenFHE only rows predicted faster"),
    max_gb: float = typer.Option(5.0, help="... and needing fewer GB of keys and ciphertexts"),
    reps: int = typer.Option(3, help="repetitions per op timing (median)"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("results/bench-matmul.json"), help="JSON output"),
    markdown: Path = typer.Option(None, help="also write the table as Markdown here"),
) -> None:
    """HETAL's matrix products and their baselines at HETAL's shapes: counts, keys, time."""
    from privlearn.bench.matmul import markdown as to_markdown
    from privlearn.bench.matmul import print_table, run
    from privlearn.linalg import ALGORITHMS

    parsed = [tuple(int(x) for x in s.split(",")) for s in shapes]
    results = run(
        parsed,
        algorithms or list(ALGORITHMS),
        preset=preset,
        level=level,
        max_seconds=max_seconds,
        max_gb=max_gb,
        reps=reps,
        seed=seed,
        console=console,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print_table(results, console)
    if markdown:
        markdown.write_text(to_markdown(results))
    console.print(f"wrote {out}" + (f" and {markdown}" if markdown else ""))


@bench_app.command("niid")
def bench_niid(
    part: str = typer.Option("all", help="grid, stragglers, scaffold-sampling or all"),
    datasets: str = typer.Option("digits,mnist5k", help="comma-separated"),
    partitions: str = typer.Option(
        ",".join(["homo", "#C=2", "Dir(0.5)", "noise(0.1)", "quantity Dir(0.5)", "mixed"]),
        help="comma-separated names (also #C=1, #C=3)",
    ),
    algorithms: str = typer.Option("fedavg,fedprox,scaffold,fednova"),
    seeds: str = typer.Option("0,1,2"),
    rounds: str = typer.Option("digits=50,mnist5k=20", help="rounds per dataset"),
    straggler_rounds: int = typer.Option(200),
    straggler_seeds: str = typer.Option("0"),
    sampling_rounds: int = typer.Option(200, help="rounds of the 100-client, 10-percent run"),
    engines: str = typer.Option(
        "digits=vectorised,mnist5k=sequential",
        help="engine per dataset (results agree; the CPU time differs: "
        "eager vmap of 28x28 convolutions is slower than a loop)",
    ),
    threads: int = typer.Option(1, help="torch/BLAS threads"),
    out: Path = typer.Option(Path("results/bench-niid"), help="folder for JSON + PNG"),
) -> None:
    """NIID-Bench grid (4 algorithms x partitions x seeds), FedProx stragglers, SCAFFOLD at 10 %."""
    from privlearn.bench import niid

    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    out.mkdir(parents=True, exist_ok=True)
    if part in ("grid", "all"):
        per = dict(kv.split("=") for kv in rounds.split(","))
        doc = niid.run_grid(
            datasets.split(","),
            partitions.split(","),
            algorithms.split(","),
            ints(seeds),
            {k: int(v) for k, v in per.items()},
            out / "grid.json",
            dict(kv.split("=") for kv in engines.split(",")),
            threads,
            console,
        )
        niid.print_grid(doc, console)
        niid.plot_grid(doc, out / "grid.png")
    if part in ("stragglers", "all"):
        doc = niid.run_stragglers(
            straggler_rounds,
            ints(straggler_seeds),
            out / "stragglers.json",
            threads=threads,
            console=console,
        )
        niid.print_stragglers(doc, console)
        niid.plot_stragglers(doc, out / "stragglers.png")
    if part in ("scaffold-sampling", "all"):
        niid.run_scaffold_sampling(
            sampling_rounds, ints(straggler_seeds), out / "scaffold_sampling.json", threads, console
        )
    console.print(f"wrote {out}/")


@bench_app.command("fl-speed")
def bench_fl_speed(
    workloads: list[str] = typer.Option(
        None, "--workload", help="repeatable; default: all (see `--list`)"
    ),
    engines: str = typer.Option("sequential,vectorised,vectorised+compile,flower"),
    rounds: int = typer.Option(None, help="override every workload's number of rounds"),
    flower_workers: int = typer.Option(2, help="Ray workers (1 CPU each) for Flower"),
    seed: int = typer.Option(0),
    list_: bool = typer.Option(False, "--list", help="list the workloads and exit"),
    out: Path = typer.Option(Path("results/bench-fl-speed.json"), help="JSON output"),
) -> None:
    """Vectorised vs sequential engines vs Flower's Ray simulation on the same FedAvg work."""
    from privlearn.bench import fl_speed

    if list_:
        for name, w in fl_speed.WORKLOADS.items():
            console.print(f"{name}: {w['rounds']} rounds, {w['cfg']}")
        return
    names = workloads or list(fl_speed.WORKLOADS)
    if rounds is not None:
        for name in names:
            fl_speed.WORKLOADS[name]["rounds"] = rounds
    doc = fl_speed.run(names, engines.split(","), out, seed, flower_workers, console=console)
    fl_speed.print_table(doc, console)
    fl_speed.plot(doc, out.with_suffix(".png"))
    console.print(f"wrote {out} and {out.with_suffix('.png')}")


# --- federated learning ----------------------------------------------------------------------


def _parse_params(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {item!r} (e.g. --param mu=0.01)")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


@fl_app.command("run")
def fl_run(
    config: Path = typer.Option(None, help="YAML config; flags given here override it"),
    resume: Path = typer.Option(None, help="continue the run checkpointed in this folder"),
    dataset: str = typer.Option(
        None,
        help="digits, mnist5k, breast_cancer, wine, mnist, fmnist, "
        "cifar10, fedprox_synthetic, leaf_synthetic, fcube",
    ),
    data_root: str = typer.Option(None, help="folder with MNIST/FMNIST/CIFAR-10 files"),
    partition: str = typer.Option(
        None,
        help="homo, label-quantity, label-dirichlet, quantity-dirichlet, noise, mixed, natural",
    ),
    clients: int = typer.Option(None, help="number of clients N"),
    beta: float = typer.Option(None, help="Dirichlet concentration"),
    k: int = typer.Option(None, help="classes per client for label-quantity (#C=k)"),
    noise: float = typer.Option(None, help="feature-noise sigma (client i: sigma*i/(N-1))"),
    local_test_fraction: float = typer.Option(
        None, help="share of each client's rows held out for personalised evaluation"
    ),
    model: str = typer.Option(None, help="auto, mclr, mlp, mlp-bn, cnn, cnn-bn"),
    rounds: int = typer.Option(None),
    sampling: str = typer.Option(None, help="uniform, poisson or all"),
    per_round: int = typer.Option(None, help="clients per round (uniform sampling)"),
    sample_rate: float = typer.Option(None, help="inclusion probability (poisson sampling)"),
    epochs: int = typer.Option(None, help="local epochs"),
    epochs_range: str = typer.Option(None, help="a,b: local epochs ~ U{a..b} per client"),
    batch_size: int = typer.Option(None),
    lr: float = typer.Option(None, help="client learning rate"),
    momentum: float = typer.Option(None, help="client SGD momentum"),
    weight_decay: float = typer.Option(None),
    stragglers: float = typer.Option(None, help="fraction of each cohort that straggles"),
    straggler_policy: str = typer.Option(None, help="drop or partial"),
    algorithm: str = typer.Option(
        None,
        help="fedavg, fedavgm, fedprox, scaffold, fednova, "
        "feddyn, fedadam, fedyogi, fedadagrad, fedbn, perfedavg, "
        "pfedme, ifca, fedfomo, ditto",
    ),
    param: list[str] = typer.Option([], help="algorithm hyper-parameter key=value, repeatable"),
    engine: str = typer.Option(None, help="vectorised or sequential"),
    device: str = typer.Option(None, help="cpu or cuda"),
    chunk_size: int = typer.Option(None, help="max clients stacked at once (vectorised)"),
    compile: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile the step"),
    threads: int = typer.Option(None, help="torch/BLAS threads (1 suits small shared CPUs)"),
    seed: int = typer.Option(None),
    eval_every: int = typer.Option(None),
    out: str = typer.Option(None, help="output folder (metrics.json, metrics.png, checkpoint)"),
) -> None:
    """Run a federated experiment: progress bar, metrics JSON + PNG, checkpoint every round."""
    from privlearn.fl.run import RunConfig, load_checkpoint_config, run_experiment, summarise

    if resume is not None:
        cfg = load_checkpoint_config(resume)
        cfg.out = str(resume)
    elif config is not None:
        cfg = RunConfig.from_yaml(config)
    else:
        cfg = RunConfig()
    flags = {
        "dataset": dataset,
        "data_root": data_root,
        "partition": partition,
        "n_clients": clients,
        "beta": beta,
        "classes_per_client": k,
        "noise": noise,
        "local_test_fraction": local_test_fraction,
        "model": model,
        "rounds": rounds,
        "sampling": sampling,
        "clients_per_round": per_round,
        "sample_rate": sample_rate,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "stragglers": stragglers,
        "straggler_policy": straggler_policy,
        "algorithm": algorithm,
        "engine": engine,
        "device": device,
        "chunk_size": chunk_size,
        "compile": compile,
        "threads": threads,
        "seed": seed,
        "eval_every": eval_every,
        "out": out,
    }
    if epochs_range is not None:
        flags["epochs_range"] = [int(v) for v in epochs_range.split(",")]
    for key, value in flags.items():
        if value is not None:
            setattr(cfg, key, value)
    if param:
        cfg.algo_params = {**cfg.algo_params, **_parse_params(param)}
    try:
        doc = run_experiment(cfg, resume=resume is not None, console=console)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    s = summarise(doc)
    console.print(" ".join(f"{k}={v:.4f}" for k, v in s.items() if v is not None))
    console.print(f"wrote {cfg.out}/metrics.json, metrics.png, partition.png, checkpoint.pt")


@fl_app.command("partition")
def fl_partition(
    dataset: str = typer.Option("digits"),
    partition: str = typer.Option("label-dirichlet"),
    clients: int = typer.Option(10),
    beta: float = typer.Option(0.5),
    k: int = typer.Option(2, help="classes per client (label-quantity)"),
    noise: float = typer.Option(0.0),
    data_root: str = typer.Option(None),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("results/partition"), help="folder for JSON + heat-map PNG"),
) -> None:
    """Split a dataset, report how non-IID it is (Hellinger / JS), write JSON + heat-map."""
    from privlearn.fl.data import DataSpec, build_federated, label_counts, plot_heatmap, summary

    try:
        ds = build_federated(
            DataSpec(dataset, clients, partition, beta, k, noise, data_root=data_root), seed
        )
    except (ValueError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    counts = label_counts(ds.y_train.numpy(), ds.clients, ds.n_classes)
    s = summary(counts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "partition.json").write_text(
        json.dumps(
            {
                "dataset": dataset,
                "partition": partition,
                "clients": clients,
                "beta": beta,
                "k": k,
                "noise": noise,
                "seed": seed,
                "label_counts": counts.tolist(),
                **s,
            },
            indent=1,
        )
    )
    plot_heatmap(counts, out / "partition.png", f"{dataset} / {partition}")
    t = Table(title=f"{dataset} / {partition}, {clients} clients, seed {seed}")
    for col in ("client", "samples", "classes", "Hellinger", "JS distance"):
        t.add_column(col, justify="right")
    for i in range(clients):
        t.add_row(
            str(i),
            str(s["sizes"][i]),
            str(s["classes_per_client"][i]),
            f"{s['hellinger'][i]:.3f}",
            f"{s['js_distance'][i]:.3f}",
        )
    console.print(t)
    console.print(
        f"mean Hellinger {s['hellinger_mean']:.3f}, mean JS {s['js_distance_mean']:.3f}, "
        f"size CV {s['size_cv']:.3f}; wrote {out}/partition.json and partition.png"
    )


def main() -> None:  # pragma: no cover
    app()
