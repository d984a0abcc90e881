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
    preset: str = typer.Option("n16-d24", help="a 128-bit preset (see `privlearn info`)"),
) -> None:
    """Encrypted linear scores on scikit-learn's digits: client encrypts, server scores."""
    from privlearn.demo import run_linear_scores_demo

    run_linear_scores_demo(backend=backend, preset=preset, console=console)


@bench_app.command("he-ops")
def bench_he_ops(
    presets: list[str] = typer.Option(["n16-d24", "n16-d28", "n16-boot"], "--preset"),
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
    shapes: list[str] = typer.Option([f"{d.a},{d.b},{d.c}" for d in HETAL_SHAPES], "--shape",
                                     help="a,b,c as in HETAL (default: its five shapes)"),
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
    results = run(parsed, algorithms or list(ALGORITHMS), preset=preset, level=level,
                  max_seconds=max_seconds, max_gb=max_gb, reps=reps, seed=seed,
                  console=console)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print_table(results, console)
    if markdown:
        markdown.write_text(to_markdown(results))
    console.print(f"wrote {out}" + (f" and {markdown}" if markdown else ""))


def main() -> None:  # pragma: no cover
    app()
