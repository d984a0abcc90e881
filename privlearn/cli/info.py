"""`privlearn info` and `privlearn demo`."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import typer
from rich.table import Table

import privlearn
from privlearn.cli.options import choice, console, writable_problem
from privlearn.he import PRESETS, available_backends
from privlearn.he.backend import BACKENDS
from privlearn.he.params import get_params


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


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


def demo(
    backend: str = typer.Option("openfhe", help="openfhe (real encryption) or simulator"),
    preset: str = typer.Option("n15-d11", help="a 128-bit preset (see `privlearn info`)"),
    task: str = typer.Option("cancer", help="cancer, wine, digits, mnist or tweets"),
    epochs: int = typer.Option(
        None, min=1, help="training epochs", show_default="the task's default"
    ),
) -> None:
    """Encrypted fine-tuning on real data: the client keeps the key, the server trains.
    Writes its JSON and PNG into results/."""
    from privlearn.transfer.experiment import TASK_DEFAULTS

    choice("backend", backend, BACKENDS)
    choice("task", task, TASK_DEFAULTS)
    get_params(preset)  # unknown or insecure presets are refused here, not after the data loads
    problem = writable_problem(Path("results"), folder=True)
    if problem:
        raise ValueError(f"the demo writes into results/: {problem}")
    from privlearn.demo import run_demo

    run_demo(backend=backend, preset=preset, task=task, epochs=epochs, console=console)
