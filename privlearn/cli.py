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
    tasks: list[str] = typer.Option(["cancer", "wine", "digits", "mnist", "tweets"], "--task"),
    refresh: list[str] = typer.Option(["client"], "--refresh"),
    backend: str = typer.Option("openfhe"),
    epochs: int = typer.Option(None, help="override each task's default epochs"),
    max_train: int = typer.Option(None, help="train on the first N samples of each task"),
    hetal: list[str] = typer.Option(
        [], "--hetal-shape", help="time HETAL's shape in these refresh modes (client, bootstrap)"
    ),
    peer_task: str = typer.Option(None, "--peer", help="run Concrete ML on this binary task"),
    out: Path = typer.Option(Path("results/bench-transfer.json")),
) -> None:
    """Encrypted fine-tuning per task vs plaintext; HETAL's shape; Concrete ML side by side."""
    from privlearn.bench.transfer import print_table, run

    results = run(
        tasks,
        refresh,
        backend=backend,
        epochs=epochs,
        max_train=max_train,
        hetal=hetal,
        peer_task=peer_task,
        console=console,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print_table(results, console)
    console.print(f"wrote {out}")


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


def main() -> None:  # pragma: no cover
    app()
