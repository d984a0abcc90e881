"""`privlearn he ...`: encrypted transfer learning."""

from __future__ import annotations

from pathlib import Path

import typer

from privlearn.cli.errors import UsageError
from privlearn.cli.options import check_out_dir, choice, console
from privlearn.he.backend import BACKENDS
from privlearn.he.params import get_params

REFRESH = ("client", "bootstrap")

app = typer.Typer(
    help="Encrypted transfer learning (HETAL): train and serve on ciphertexts.",
    no_args_is_help=True,
)


def check_preset(preset: str, refresh: str) -> None:
    """Unknown and insecure presets, and bootstrapping without a bootstrappable one, are
    refused before any data loads."""
    params = get_params(preset)
    if refresh == "bootstrap" and not params.bootstrappable:
        raise UsageError(
            f"--refresh bootstrap needs a bootstrappable preset; {preset!r} is not "
            "(the n16-boot presets are, see `privlearn info`)"
        )


@app.command("train")
def train(
    task: str = typer.Option("cancer", help="mnist, digits, tweets, cancer or wine"),
    refresh: str = typer.Option("client", help="client (interactive) or bootstrap"),
    preset: str = typer.Option(
        None,
        help="CKKS preset (see `privlearn info`)",
        show_default="n15-d11, or n16-boot7 for bootstrap",
    ),
    backend: str = typer.Option("openfhe", help="openfhe, or simulator (NOT encryption)"),
    epochs: int = typer.Option(
        None, min=1, help="training epochs", show_default="the task's default"
    ),
    max_train: int = typer.Option(
        None, min=1, help="train on the first N training samples only", show_default="all"
    ),
    separate_process: bool = typer.Option(False, help="run the server in its own process"),
    seed: int = typer.Option(0, help="seed of the split, the batches and the keys"),
    out: Path = typer.Option(
        Path("results"), help="folder for the JSON and PNG", callback=check_out_dir
    ),
) -> None:
    """Fine-tune a softmax head on encrypted features; compare with plaintext training."""
    from privlearn.transfer.experiment import TASK_DEFAULTS, run_task, with_epochs
    from privlearn.transfer.report import print_result

    choice("task", task, TASK_DEFAULTS)
    choice("refresh", refresh, REFRESH)
    choice("backend", backend, BACKENDS)
    preset = preset or ("n16-boot7" if refresh == "bootstrap" else "n15-d11")
    check_preset(preset, refresh)
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
