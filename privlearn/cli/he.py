"""`privlearn he ...`: encrypted transfer learning."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import click
import typer

from privlearn.cli import fields, he_estimate, he_model
from privlearn.cli.errors import UsageError
from privlearn.cli.options import check_out_dir, choice, console
from privlearn.he.backend import BACKENDS
from privlearn.he.params import get_params
from privlearn.transfer.train import TrainSpec
from privlearn.transfer.userdata import DataSource

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


def _param(name: str, option, annotation=str | None) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
    )


def _default(name: str) -> str:
    return f"the task's; with --data {getattr(TrainSpec, name)}"


TRAIN_OPTIONS = [
    _param("task", typer.Option("cancer", help="mnist, digits, tweets, cancer or wine"), str),
    *fields.options(DataSource),
    _param("refresh", typer.Option("client", help="client (interactive) or bootstrap"), str),
    _param(
        "preset",
        typer.Option(
            None,
            help="CKKS preset (see `privlearn info`)",
            show_default="n15-d11, or n16-boot7 for bootstrap",
        ),
    ),
    _param("backend", typer.Option("openfhe", help="openfhe, or simulator (NOT encryption)"), str),
    _param(
        "epochs",
        typer.Option(None, min=1, help="training epochs", show_default=_default("epochs")),
        int | None,
    ),
    _param(
        "batch_size",
        typer.Option(None, min=1, help="mini-batch size", show_default=_default("batch_size")),
        int | None,
    ),
    _param(
        "lr",
        typer.Option(None, help="learning rate", show_default=_default("lr")),
        float | None,
    ),
    _param(
        "max_train",
        typer.Option(
            None, min=1, help="train on the first N training samples only", show_default="all"
        ),
        int | None,
    ),
    _param(
        "separate_process",
        typer.Option(False, help="run the server in its own process"),
        bool,
    ),
    _param(
        "include_secret_key",
        typer.Option(
            False,
            help="with --data: also save the secret key (mode 0600), the public bundle and the "
            "encrypted weights beside the model",
        ),
        bool,
    ),
    _param(
        "checkpoint",
        typer.Option(
            None,
            file_okay=False,
            help="with --data: keep the run's state in this folder after every step; the same "
            "command on a folder holding an interrupted run resumes it",
            show_default="none",
        ),
        Path | None,
    ),
    _param("seed", typer.Option(0, help="seed of the split, the batches and the keys"), int),
    _param(
        "out",
        typer.Option(
            Path("results"),
            help="folder for the JSON and PNG; with --data, the saved model",
            callback=check_out_dir,
        ),
        Path,
    ),
]


@app.command("train")
@fields.with_options(TRAIN_OPTIONS)
def train(ctx: typer.Context, **kw) -> None:
    """Fine-tune a softmax head on encrypted features: a built-in task (compared with
    plaintext training), or your own data with --data (the fitted model is saved in --out)."""
    choice("refresh", kw["refresh"], REFRESH)
    choice("backend", kw["backend"], BACKENDS)
    preset = kw["preset"] or ("n16-boot7" if kw["refresh"] == "bootstrap" else "n15-d11")
    check_preset(preset, kw["refresh"])
    source = DataSource(**{f.name: kw[f.name] for f in dataclasses.fields(DataSource)})
    hyper = {k: kw[k] for k in ("epochs", "batch_size", "lr") if kw[k] is not None}
    if source.data is not None:
        if ctx.get_parameter_source("task") is click.core.ParameterSource.COMMANDLINE:
            raise UsageError("give --task or --data, not both")
        he_model.train_own_data(source, preset=preset, hyper=hyper, **_run_options(kw))
        return
    if kw["include_secret_key"]:
        raise UsageError("--include-secret-key saves a model trained with --data")
    if kw["checkpoint"] is not None:
        raise UsageError("--checkpoint keeps a run on --data resumable")
    from privlearn.transfer.experiment import TASK_DEFAULTS, run_task
    from privlearn.transfer.report import print_result

    choice("task", kw["task"], TASK_DEFAULTS)
    result = run_task(
        kw["task"],
        refresh=kw["refresh"],
        preset=preset,
        backend=kw["backend"],
        seed=kw["seed"],
        config=dataclasses.replace(TASK_DEFAULTS[kw["task"]], **hyper),
        max_train=kw["max_train"],
        separate_process=kw["separate_process"],
        out_dir=kw["out"],
    )
    print_result(result, console)


def _run_options(kw: dict) -> dict:
    names = ("refresh", "backend", "max_train", "separate_process", "seed", "out")
    return {k: kw[k] for k in (*names, "include_secret_key", "checkpoint")}


app.command("predict")(he_model.predict)
app.command("estimate")(he_estimate.estimate)
