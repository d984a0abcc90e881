"""`privlearn bench ...`: each benchmark prints a table and writes JSON."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from privlearn.cli.errors import UsageError
from privlearn.cli.options import check_out_dir, check_out_file, choice, choices, console
from privlearn.he import PRESETS
from privlearn.he.backend import BACKENDS
from privlearn.linalg.cost import HETAL_SHAPES

REFRESH = ("client", "bootstrap")

app = typer.Typer(help="Benchmarks: each prints a table and writes JSON.", no_args_is_help=True)


def _ints(option: str, text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--{option} {text!r}: expected comma-separated integers") from None


def _pairs(option: str, text: str) -> dict[str, str]:
    """`a=1,b=2` as {'a': '1', 'b': '2'}."""
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--{option} {text!r}: expected name=value pairs, e.g. digits=50")
        out[key.strip()] = value.strip()
    return out


@app.command("he-ops")
def he_ops(
    presets: list[str] = typer.Option(
        ["n15-d11", "n16-d24", "n16-d28", "n16-boot"], "--preset", help="CKKS presets, repeatable"
    ),
    backends: list[str] = typer.Option(
        ["openfhe", "simulator"], "--backend", help="CKKS backends, repeatable"
    ),
    reps: int = typer.Option(5, min=1, help="repetitions per timing (median reported)"),
    out: Path = typer.Option(
        Path("results/bench-he-ops.json"), help="JSON output", callback=check_out_file
    ),
) -> None:
    """Time every CKKS primitive per preset and backend; key and ciphertext sizes."""
    from privlearn.bench.he_ops import print_table, run

    choices("preset", presets, PRESETS)
    choices("backend", backends, BACKENDS)
    results = run(presets, backends, reps=reps, console=console)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print_table(results, console)
    console.print(f"wrote {out}")


@app.command("transfer")
def transfer(
    tasks: list[str] = typer.Option(
        [], "--task", help="cancer, wine, digits, mnist, tweets; repeatable", show_default="none"
    ),
    refresh: list[str] = typer.Option(["client"], "--refresh", help="client and/or bootstrap"),
    backend: str = typer.Option("openfhe", help="openfhe, or simulator (NOT encryption)"),
    epochs: int = typer.Option(
        None, min=1, help="training epochs of every task", show_default="each task's default"
    ),
    max_train: int = typer.Option(
        None, min=1, help="train on the first N samples of each task", show_default="all"
    ),
    hetal: list[str] = typer.Option(
        [],
        "--hetal-shape",
        help="time HETAL's shape in these refresh modes (client, bootstrap)",
        show_default="none",
    ),
    peer_task: str = typer.Option(
        None, "--peer", help="run Concrete ML on this binary task", show_default="none"
    ),
    peer_iters: int = typer.Option(3, min=1, help="Concrete ML's max_iter"),
    time_model: Path = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="`bench he-ops` JSON: with --backend simulator, predict HETAL's shape from it",
        show_default="none",
    ),
    breakdown: bool = typer.Option(
        False, help="predict one iteration per task shape from --time-model, split by op"
    ),
    out: Path = typer.Option(
        Path("results/bench-transfer.json"),
        help="JSON output (and the Markdown table beside it)",
        callback=check_out_file,
    ),
) -> None:
    """Encrypted fine-tuning per task vs plaintext; HETAL's shape; Concrete ML side by side.

    Runs the parts asked for (none: only the table), keeps each in results/, and prints and
    writes the table of every kept result (JSON and Markdown)."""
    from privlearn.bench.transfer import collect, markdown, print_table, run
    from privlearn.transfer.experiment import TASK_DEFAULTS

    choices("task", tasks, TASK_DEFAULTS)
    choices("refresh", refresh, REFRESH)
    choices("hetal-shape", hetal, REFRESH)
    choice("backend", backend, BACKENDS)
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


@app.command("softmax")
def softmax(
    ranges: list[float] = typer.Option(
        [4, 8, 32, 128], "--range", help="R: logits in [-R, R]; repeatable"
    ),
    classes: list[int] = typer.Option([3, 7, 10, 16], "--classes", help="class counts; repeatable"),
    methods: list[str] = typer.Option(
        ["hetal", "hetal-precise", "lee", "hong", "jin", "ours"],
        "--method",
        help="softmax approximations; repeatable",
    ),
    rows: int = typer.Option(100_000, min=1, help="rows per configuration (simulator, plaintext)"),
    openfhe: bool = typer.Option(True, help="real OpenFHE runs of one block for the subset"),
    openfhe_preset: str = typer.Option("toy-n12-boot", help="preset of those runs"),
    seed: int = typer.Option(0, help="seed of the logits"),
    out: Path = typer.Option(
        Path("results/bench-softmax.json"),
        help="JSON (resumable), .md and .png",
        callback=check_out_file,
    ),
) -> None:
    """Softmax approximations: error (simulator + OpenFHE), depth, mults, bootstraps, time."""
    from privlearn.bench import softmax as bench

    choices("method", methods, bench.METHODS)
    choice("openfhe-preset", openfhe_preset, PRESETS)
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


@app.command("matmul")
def matmul(
    shapes: list[str] = typer.Option(
        [f"{d.a},{d.b},{d.c}" for d in HETAL_SHAPES],
        "--shape",
        help="a,b,c as in HETAL; repeatable (default: its five shapes)",
    ),
    algorithms: list[str] = typer.Option(
        [], "--algorithm", help="matrix-product algorithms; repeatable", show_default="all"
    ),
    preset: str = typer.Option("n16-d24", help="CKKS preset for OpenFHE timings and key sizes"),
    level: int = typer.Option(None, help="operand level", show_default="the deepest algorithm's"),
    max_seconds: float = typer.Option(150.0, help="time on OpenFHE only rows predicted faster"),
    max_gb: float = typer.Option(5.0, help="... and needing fewer GB of keys and ciphertexts"),
    reps: int = typer.Option(3, min=1, help="repetitions per op timing (median)"),
    seed: int = typer.Option(0, help="seed of the operands"),
    out: Path = typer.Option(
        Path("results/bench-matmul.json"), help="JSON output", callback=check_out_file
    ),
    markdown: Path = typer.Option(
        None,
        help="also write the table as Markdown here",
        callback=check_out_file,
        show_default="no",
    ),
) -> None:
    """HETAL's matrix products and their baselines at HETAL's shapes: counts, keys, time."""
    from privlearn.bench.matmul import markdown as to_markdown
    from privlearn.bench.matmul import print_table, run
    from privlearn.linalg import ALGORITHMS

    parsed = [tuple(_ints("shape", s)) for s in shapes]
    if any(len(s) != 3 for s in parsed):
        raise UsageError(f"--shape takes a,b,c (three integers); got {shapes}")
    choices("algorithm", algorithms, ALGORITHMS)
    choice("preset", preset, PRESETS)
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


NIID_PARTS = ("grid", "stragglers", "scaffold-sampling", "all")


@app.command("niid")
def niid(
    part: str = typer.Option("all", help="grid, stragglers, scaffold-sampling or all"),
    datasets: str = typer.Option("digits,mnist5k", help="comma-separated"),
    partitions: str = typer.Option(
        ",".join(["homo", "#C=2", "Dir(0.5)", "noise(0.1)", "quantity Dir(0.5)", "mixed"]),
        help="comma-separated names (also #C=1, #C=3)",
    ),
    algorithms: str = typer.Option("fedavg,fedprox,scaffold,fednova", help="comma-separated"),
    seeds: str = typer.Option("0,1,2", help="grid seeds, comma-separated"),
    rounds: str = typer.Option("digits=50,mnist5k=20", help="rounds per dataset"),
    straggler_rounds: int = typer.Option(200, min=1, help="rounds of the straggler runs"),
    straggler_seeds: str = typer.Option(
        "0", help="seeds of the straggler and sampling runs, comma-separated"
    ),
    sampling_rounds: int = typer.Option(
        200, min=1, help="rounds of the 100-client, 10-percent run"
    ),
    engines: str = typer.Option(
        "digits=vectorised,mnist5k=sequential",
        help="engine per dataset (results agree; the CPU time differs: "
        "eager vmap of 28x28 convolutions is slower than a loop)",
    ),
    threads: int = typer.Option(1, min=1, help="torch/BLAS threads"),
    out: Path = typer.Option(
        Path("results/bench-niid"), help="folder for JSON + PNG", callback=check_out_dir
    ),
) -> None:
    """NIID-Bench grid (4 algorithms x partitions x seeds), FedProx stragglers, SCAFFOLD at 10 %."""
    from privlearn.bench import niid as bench

    choice("part", part, NIID_PARTS)
    names = datasets.split(",")
    per = {k: int(v) for k, v in _pairs("rounds", rounds).items() if v.isdigit()}
    missing = [d for d in names if d not in per]
    if missing:
        raise UsageError(f"--rounds gives no positive count for {missing} (e.g. {names[0]}=20)")
    engine_of = _pairs("engines", engines)
    for name in names:
        choice("engines", engine_of.get(name), ("vectorised", "sequential"))
    choices("partitions", partitions.split(","), bench.PARTITIONS)
    choices("algorithms", algorithms.split(","), bench.ALGORITHMS)
    grid_seeds, other_seeds = _ints("seeds", seeds), _ints("straggler-seeds", straggler_seeds)
    out.mkdir(parents=True, exist_ok=True)
    if part in ("grid", "all"):
        doc = bench.run_grid(
            names,
            partitions.split(","),
            algorithms.split(","),
            grid_seeds,
            per,
            out / "grid.json",
            engine_of,
            threads,
            console,
        )
        bench.print_grid(doc, console)
        bench.plot_grid(doc, out / "grid.png")
    if part in ("stragglers", "all"):
        doc = bench.run_stragglers(
            straggler_rounds, other_seeds, out / "stragglers.json", threads=threads, console=console
        )
        bench.print_stragglers(doc, console)
        bench.plot_stragglers(doc, out / "stragglers.png")
    if part in ("scaffold-sampling", "all"):
        bench.run_scaffold_sampling(
            sampling_rounds, other_seeds, out / "scaffold_sampling.json", threads, console
        )
    console.print(f"wrote {out}/")


@app.command("fl-speed")
def fl_speed(
    workloads: list[str] = typer.Option(
        None, "--workload", help="repeatable (see `--list`)", show_default="all"
    ),
    engines: str = typer.Option(
        "sequential,vectorised,vectorised+closed,vectorised+compile,"
        "vectorised+closed+compile,baseline-vmap,baseline-closed,flower",
        help="comma-separated",
    ),
    rounds: int = typer.Option(
        None, min=1, help="rounds of every workload", show_default="each workload's"
    ),
    flower_workers: int = typer.Option(2, min=1, help="Ray workers (1 CPU each) for Flower"),
    repeats: int = typer.Option(3, min=1, help="interleaved repetitions of every pair"),
    seed: int = typer.Option(0, help="seed shared by every engine"),
    list_: bool = typer.Option(False, "--list", help="list the workloads and exit"),
    out: Path = typer.Option(
        Path("results/bench-fl-speed.json"),
        help="JSON output (and a PNG beside it)",
        callback=check_out_file,
    ),
) -> None:
    """Vectorised vs sequential engines vs Flower's Ray simulation on the same FedAvg work."""
    from privlearn.bench import fl_speed as bench

    if list_:
        for name, w in bench.WORKLOADS.items():
            console.print(f"{name}: {w['rounds']} rounds, {w['cfg']}")
        return
    names = workloads or list(bench.WORKLOADS)
    choices("workload", names, bench.WORKLOADS)
    choices("engines", engines.split(","), bench.ENGINES)
    doc = bench.run(
        names,
        engines.split(","),
        out,
        seed,
        flower_workers,
        rounds=rounds,
        console=console,
        repeats=repeats,
    )
    bench.print_table(doc, console)
    bench.plot(doc, out.with_suffix(".png"))
    console.print(f"wrote {out} and {out.with_suffix('.png')}")


@app.command("ray")
def ray_scale(
    workers: str = typer.Option("1,2", help="Ray worker counts to time, comma-separated"),
    rounds: int = typer.Option(3, min=1, help="timed rounds per setting (after one warm-up)"),
    seed: int = typer.Option(0, help="seed shared by every setting"),
    out: Path = typer.Option(
        Path("results/bench-ray.json"), help="JSON output", callback=check_out_file
    ),
    figure: Path = typer.Option(
        Path("results/bench-ray.png"), help="PNG output", callback=check_out_file
    ),
) -> None:
    """Seconds per round at 1000 clients: vectorised vs Ray with N workers, and a projection."""
    from privlearn.bench import ray_scale as bench

    counts = _ints("workers", workers)
    if not counts or min(counts) < 1:
        raise UsageError(f"--workers {workers!r}: expected worker counts >= 1, e.g. 1,2")
    doc = bench.run(rounds, counts, seed, out, console)
    bench.print_table(doc, console)
    bench.plot(doc, figure)
    console.print(f"wrote {out} and {figure}")


@app.command("flower")
def flower(
    rounds: int = typer.Option(5, min=1, help="rounds"),
    nodes: int = typer.Option(3, min=1, help="SuperNodes (clients, all sampled every round)"),
    algorithm: str = typer.Option("fedavg", help="the algorithm both hosts run"),
    model: str = typer.Option("mclr", help="the model both hosts train"),
    compress: str = typer.Option(
        None, help="compress uploads (topk, randk, qsgd)", show_default="uncompressed"
    ),
    compress_ratio: float = typer.Option(
        None, help="top-k / rand-k share of coordinates", show_default="0.1"
    ),
    compress_levels: int = typer.Option(None, help="qsgd's levels", show_default="8"),
    error_feedback: str = typer.Option(
        None, help="ef, ef21 or ef21-sgdm (sparsifiers)", show_default="none"
    ),
    timeout: float = typer.Option(1800, min=1, help="seconds the deployment may take"),
    out: Path = typer.Option(
        Path("results/bench-flower.json"), help="JSON output", callback=check_out_file
    ),
    work: Path = typer.Option(
        Path("results/flower-run"),
        help="folder for the processes' logs and Flower state",
        callback=check_out_dir,
    ),
) -> None:
    """A real Flower deployment on loopback (fl serve + fl join) vs the sequential engine."""
    from privlearn.bench import flower as bench

    given = {
        "compress": compress,
        "compress_ratio": compress_ratio,
        "compress_levels": compress_levels,
        "error_feedback": error_feedback,
    }
    zip_ = {k: v for k, v in given.items() if v is not None}
    try:
        doc = bench.run(rounds, nodes, algorithm, out, work, timeout, model, zip_)
    except ValueError as e:  # a config the RunConfig or the Flower host refuses
        raise UsageError(str(e)) from None
    bench.print_table(doc, console)
    console.print(f"wrote {out}")


ROBUSTNESS_PARTS = ("grid", "reproduce", "cost", "all")


@app.command("robustness")
def robustness(
    part: str = typer.Option("grid", help="grid, reproduce, cost or all"),
    quick: bool = typer.Option(
        False, help="the quick grid: 5 attacks x 6 defences, 0 and 20 %, digits Dir(0.5), 1 seed"
    ),
    attacks: str = typer.Option(None, help="comma-separated", show_default="every attack"),
    defences: str = typer.Option(
        None, help="comma-separated (none: no defence)", show_default="none + every defence"
    ),
    fractions: str = typer.Option("0,0.1,0.2,0.4", help="attacker fractions, comma-separated"),
    datasets: str = typer.Option("digits,mnist5k", help="comma-separated"),
    partitions: str = typer.Option("IID,Dir(0.5)", help="comma-separated"),
    seeds: str = typer.Option("0,1,2", help="comma-separated"),
    max_minutes: float = typer.Option(
        None,
        min=0,
        help="start no grid cell after this long (the part run is recorded)",
        show_default="no limit",
    ),
    reproduce: str = typer.Option(None, help="reproductions, comma-separated", show_default="all"),
    cost_clients: str = typer.Option("100,1000", help="stack sizes K of the cost part"),
    cost_params: int = typer.Option(100_000, min=1, help="parameters P of the cost part"),
    cost_defences: str = typer.Option(
        "median,trimmed-mean,krum,multi-krum,bulyan,geomedian,flame",
        help="defences of the cost part, comma-separated",
    ),
    device: str = typer.Option("cpu", help="device of the cost part (cpu or cuda)"),
    out: Path = typer.Option(
        Path("results/bench-robustness"),
        help="folder for JSON, Markdown and PNG",
        callback=check_out_dir,
    ),
) -> None:
    """Attacks x defences x attacker fraction (accuracy, attack success), reproductions, cost."""
    from privlearn.bench import robustness as bench

    choice("part", part, ROBUSTNESS_PARTS)
    out.mkdir(parents=True, exist_ok=True)
    if part in ("grid", "all"):
        grid = dict(bench.QUICK) if quick else bench.full_grid()
        if not quick:
            grid.update(
                fractions=tuple(float(f) for f in fractions.split(",")),
                datasets=tuple(datasets.split(",")),
                partitions=tuple(partitions.split(",")),
                seeds=tuple(_ints("seeds", seeds)),
            )
        if attacks:
            grid["attacks"] = tuple(attacks.split(","))
        if defences:
            grid["defences"] = tuple(defences.split(","))
        choices("attacks", grid["attacks"], bench.ATTACKS)
        choices("defences", grid["defences"], (bench.NONE, *bench.DEFENCES))
        choices("datasets", grid["datasets"], bench.SCHEDULE)
        choices("partitions", grid["partitions"], bench.PARTITIONS)
        bad = [f for f in grid["fractions"] if not 0 <= f < 1]
        if bad:
            raise UsageError(f"--fractions {bad}: attacker fractions must be in [0, 1)")
        name = "quick" if quick else "grid"
        doc = bench.run_grid(grid, out / f"{name}.json", console, max_minutes)
        bench.print_grid(doc, console)
        (out / f"{name}.md").write_text(bench.to_markdown(doc))
        bench.plot_heatmaps(doc, out)
        cov = doc["coverage"]
        console.print(f"{cov['cells_run']} of {cov['cells_in_grid']} cells run")
    if part in ("reproduce", "all"):
        names = tuple(reproduce.split(",")) if reproduce else tuple(bench.REPRODUCTIONS)
        choices("reproduce", names, bench.REPRODUCTIONS)
        doc = bench.run_reproductions(names, out / "reproductions.json", console)
        (out / "reproductions.md").write_text(bench.reproductions_markdown(doc))
        bench.plot_curves(doc, out / "reproductions.png")
        console.print(bench.reproductions_markdown(doc))
    if part in ("cost", "all"):
        choice("device", device, ("cpu", "cuda"))
        ks = tuple(_ints("cost-clients", cost_clients))
        names = tuple(cost_defences.split(","))
        choices("cost-defences", names, bench.DEFENCES)
        doc = bench.cost(ks, cost_params, names, device=device)
        (out / f"cost-{device}.json").write_text(json.dumps(doc, indent=1))
        bench.print_cost(doc, console)
    console.print(f"wrote {out}/")


@app.command("fuzz")
def fuzz(
    formats: list[str] = typer.Option(
        [], "--format", help="input formats, repeatable", show_default="all"
    ),
    cases: int = typer.Option(1000, min=1, help="cases per format"),
    case: int = typer.Option(
        None,
        min=0,
        show_default="every case",
        help="re-run only this case of one --format, with its traceback",
    ),
    seed: int = typer.Option(0, help="seed of the mutations (a case is format, seed, index)"),
    timeout: float = typer.Option(30.0, min=1, help="seconds a case may run before it hangs"),
    out: Path = typer.Option(
        Path("results/bench-fuzz.json"),
        help="JSON output (and the Markdown table and findings beside it)",
        callback=check_out_file,
    ),
) -> None:
    """Mutated ciphertexts, bundles, messages, checkpoints and configs, each in a forked child:
    clean / unclean / crash / hang / silent wrong / code execution per format."""
    import tempfile

    from privlearn.bench.fuzz import FORMATS
    from privlearn.bench.fuzz.report import findings, table
    from privlearn.bench.fuzz.runner import run_fresh

    names = formats or list(FORMATS)
    choices("format", names, FORMATS)
    if case is not None:
        if len(names) != 1:
            raise UsageError("--case re-runs one case: name its --format")
        with tempfile.TemporaryDirectory() as tmp:
            doc = run_fresh(
                names, 1, Path(tmp) / "case.json", seed=seed, only=case, timeout=timeout
            )
        record = doc["formats"][names[0]]["findings"][0]
        console.print(json.dumps({k: v for k, v in record.items() if k != "traceback"}, indent=1))
        console.print(record.get("traceback") or "")
        return
    doc = run_fresh(names, cases, out, seed=seed, timeout=timeout)
    md = table(doc)
    out.with_suffix(".md").write_text(md + "\n\n" + findings(doc))
    console.print(md)
    console.print(f"wrote {out} and {out.with_suffix('.md')}")


PRIVACY_PARTS = ("curves", "audit", "all")


@app.command("privacy")
def privacy(
    part: str = typer.Option("all", help="curves, audit or all"),
    epsilons: str = typer.Option("1,2,4,8,inf", help="target epsilons (inf: no DP)"),
    settings: str = typer.Option(
        None, help="curve settings, '|'-separated", show_default="all four"
    ),
    shadows: int = typer.Option(16, min=2, help="LiRA's shadow models in the audit"),
    out: Path = typer.Option(
        Path("results/bench-privacy.json"),
        help="JSON output (resumable; Markdown tables, PNG and ROC curves beside it)",
        callback=check_out_file,
    ),
) -> None:
    """Accuracy against epsilon (central and local DP) and the audit table (inversion PSNR,
    membership TPR at low FPR, one-run epsilon lower bound beside the accountant's)."""
    from privlearn.bench import privacy as bench

    choice("part", part, PRIVACY_PARTS)
    try:
        eps = tuple(float(e) for e in epsilons.split(","))
    except ValueError:
        raise UsageError(f"--epsilons {epsilons!r}: expected comma-separated numbers") from None
    if any(not (e > 0) for e in eps):
        raise UsageError(f"--epsilons {epsilons!r}: every epsilon must be > 0 (inf: no DP)")
    names = tuple(settings.split("|")) if settings else tuple(bench.CURVES)
    choices("settings", names, bench.CURVES)
    parts = ("curves", "audit") if part == "all" else (part,)
    doc = bench.run(parts, eps, names, shadows, out, console)
    bench.print_tables(doc, console)
    md = f"## Curves\n\n{bench.curves_markdown(doc)}\n\n## Audit\n\n{bench.audit_markdown(doc)}\n"
    out.with_suffix(".md").write_text(md)
    if doc["curves"]:
        bench.plot_curves(doc, out.with_suffix(".png"))
    console.print(f"wrote {out} and its .md / .png")


def _numbers(flag: str, text: str, kind=float) -> tuple:
    try:
        return tuple(kind(float(v)) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--{flag} {text!r}: expected comma-separated numbers") from None


@app.command("secagg")
def secagg(
    protocols: str = typer.Option(
        None, help="comma-separated protocols", show_default="plaintext and every protocol"
    ),
    clients: str = typer.Option("10,100,1000", help="cohort sizes"),
    sizes: str = typer.Option("1e3,1e5,1e6", help="update sizes (parameters)"),
    dropouts: str = typer.Option("0,0.1,0.3", help="shares of the cohort that drop out"),
    out: Path = typer.Option(
        Path("results/bench-secagg.json"),
        help="JSON output (resumable; a Markdown table and a PNG beside it)",
        callback=check_out_file,
    ),
) -> None:
    """Secure aggregation's cost per round (bytes and seconds per client and for the server,
    set-up, error against the exact sum), each protocol beside plaintext FedAvg."""
    from privlearn.bench import secagg as bench
    from privlearn.fl.privacy.secagg import PROTOCOLS

    names = tuple(protocols.split(",")) if protocols else ("plaintext", *PROTOCOLS)
    choices("protocols", names, ("plaintext", *PROTOCOLS))
    ns, ps = _numbers("clients", clients, int), _numbers("sizes", sizes, int)
    ds = _numbers("dropouts", dropouts)
    if any(n < 2 for n in ns) or any(p < 1 for p in ps) or any(not 0 <= d < 1 for d in ds):
        raise UsageError("need clients >= 2, sizes >= 1 and dropouts in [0, 1)")
    doc = bench.run(names, ns, ps, ds, out, console)
    console.print(bench.markdown(doc))
    growth = {pr: bench.growth(doc, pr) for pr in names}
    console.print(f"growth exponents (0 % dropout): {json.dumps(growth)}")
    out.with_suffix(".md").write_text(bench.markdown(doc) + "\n")
    bench.plot(doc, out.with_suffix(".png"))
    console.print(f"wrote {out} and its .md / .png")


@app.command("compression")
def compression(
    datasets: str = typer.Option("digits,mnist5k", help="comma-separated"),
    methods: str = typer.Option(None, help="comma-separated", show_default="every method"),
    rounds: str = typer.Option("digits=60,mnist5k=40", help="rounds per dataset"),
    seeds: str = typer.Option("0", help="comma-separated"),
    out: Path = typer.Option(
        Path("results/bench-compression.json"),
        help="JSON output (the Markdown table and PNG curves beside it)",
        callback=check_out_file,
    ),
) -> None:
    """Accuracy vs cumulative uploaded bytes: top-k, rand-k (with EF, EF21, EF21-SGDM), QSGD,
    DAdaQuant against uncompressed FedAvg."""
    from privlearn.bench import compression as bench

    names = datasets.split(",")
    chosen = methods.split(",") if methods else list(bench.METHODS)
    choices("datasets", names, bench.TARGETS)
    choices("methods", chosen, bench.METHODS)
    per = {k: int(v) for k, v in _pairs("rounds", rounds).items() if v.isdigit() and int(v) > 0}
    missing = [d for d in names if d not in per]
    if missing:
        raise UsageError(f"--rounds gives no positive count for {missing} (e.g. {names[0]}=40)")
    doc = bench.run(names, chosen, per, _ints("seeds", seeds), out, console)
    bench.print_table(doc, console)
    out.with_suffix(".md").write_text(bench.markdown(doc))
    png = out.with_suffix(".png")
    bench.plot(doc, png)
    console.print(f"wrote {out}, {out.with_suffix('.md')} and {png}")
