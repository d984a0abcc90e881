"""`privlearn he estimate`: what an encrypted training run will cost, before it runs, and
beside a finished run's measured figures (``--model``)."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer
from rich.table import Table

from privlearn.cli import fields
from privlearn.cli.errors import UsageError
from privlearn.cli.options import check_out_file, console
from privlearn.transfer.train import TrainSpec
from privlearn.transfer.userdata import DataSource


def _param(name: str, option, annotation) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
    )


def _int(name: str, help_: str, default=None, shown="none") -> inspect.Parameter:
    return _param(name, typer.Option(default, min=1, help=help_, show_default=shown), int | None)


ESTIMATE_OPTIONS = [
    _int("rows", "samples given to fit (the validation hold-out included)", shown="--data's"),
    _int("features", "feature columns", shown="--data's"),
    _int("classes", "classes", shown="--data's"),
    *fields.options(DataSource),
    _param(
        "model",
        typer.Option(
            None,
            exists=True,
            file_okay=False,
            help="a model `he train --data` saved: estimate its run and show the measured figures",
            show_default="none",
        ),
        Path | None,
    ),
    _param("preset", typer.Option("n15-d11", help="CKKS preset (see `privlearn info`)"), str),
    _param("refresh", typer.Option("client", help="client (interactive) or bootstrap"), str),
    _param(
        "load",
        typer.Option(
            None,
            min=0,
            help="the machine's load to scale seconds to",
            show_default="now; with --model, the run's",
        ),
        float | None,
    ),
    _int("epochs", "training epochs", TrainSpec.epochs, True),
    _int("batch_size", "mini-batch size", TrainSpec.batch_size, True),
    _param(
        "out",
        typer.Option(
            None,
            help="also write the figures here (JSON)",
            callback=check_out_file,
            show_default="none",
        ),
        Path | None,
    ),
]

FIGURES = (
    ("steps", "iterations", "{:.0f}"),
    ("seconds_per_iteration", "seconds per iteration", "{:.2f}"),
    ("seconds_validation_per_epoch", "validation seconds per epoch", "{:.2f}"),
    ("seconds_setup", "key generation + setup, s", "{:.1f}"),
    ("seconds_upload", "encrypt + upload, s", "{:.1f}"),
    ("seconds_total", "total seconds", "{:.1f}"),
    ("server_memory_gb", "server memory, GB", "{:.2f}"),
    ("bundle_mb", "public bundle, MB", "{:.1f}"),
    ("mb_to_server", "to the server, MB", "{:.1f}"),
)


@fields.with_options(ESTIMATE_OPTIONS)
def estimate(ctx: typer.Context, model: Path | None, out: Path | None, **kw) -> None:
    """Predicted seconds, server memory, bundle size and bytes to the server for a data shape,
    preset and refresh mode (from the time model `bench he-ops` measured); with --model, the
    run that model's training measured beside them."""
    from privlearn.transfer.estimate import estimate as predict_cost
    from privlearn.transfer.estimate import measured

    shape = {k: kw[k] for k in ("rows", "features", "classes")}
    given = fields.given(DataSource, ctx, kw)
    hyper = {"epochs": kw["epochs"], "batch_size": kw["batch_size"], "refresh": kw["refresh"]}
    preset, val_rows, run = kw["preset"], None, None
    if model is not None:
        from privlearn.transfer.estimator import read_manifest

        m = read_manifest(model)
        spec = {k: v for k, v in m["spec"].items() if k not in ("classes", "features")}
        shape = {
            "rows": m["rows"]["train"],
            "features": m["n_features"],
            "classes": len(m["classes"]),
        }
        hyper, preset, val_rows, run = spec, m["preset"], m["rows"]["val"], m["run"]
        if kw["load"] is None and run.get("load_1m"):
            kw["load"] = sum(run["load_1m"]) / 2
    elif given:
        from privlearn.transfer.userdata import load_data

        data = load_data(DataSource(**given))
        shape = {"rows": len(data.x), "features": data.x.shape[1], "classes": len(set(data.y))}
    if None in shape.values():
        raise UsageError("give --rows, --features and --classes, or --data FILE, or --model DIR")
    e = predict_cost(**shape, preset=preset, val_rows=val_rows, load=kw["load"], **hyper)
    got = measured(run) if run is not None else None
    t = Table(
        title=f"{shape['rows']} x {shape['features']}, {shape['classes']} classes, {e.preset}, "
        f"{e.refresh} refresh, batch {e.batch_size}, {e.epochs} epochs"
    )
    t.add_column("figure")
    t.add_column("estimate", justify="right")
    if got:
        t.add_column(f"measured ({run['backend']})", justify="right")
        t.add_column("measured / estimate", justify="right")
    est = e.as_dict()
    for key, name, fmt in FIGURES:
        cells = [name, fmt.format(est[key])]
        if got and got[key] is None:
            cells += ["-", "-"]
        elif got:
            cells += [fmt.format(got[key]), f"{got[key] / est[key]:.2f}" if est[key] else "-"]
        t.add_row(*cells)
    for kind in sorted(set(est["mb_by_kind"]) | set(got["mb_by_kind"] if got else ())):
        cells = [f"  {kind}, MB", f"{est['mb_by_kind'].get(kind, 0):.1f}"]
        if got:
            g, x = got["mb_by_kind"].get(kind, 0), est["mb_by_kind"].get(kind, 0)
            cells += [f"{g:.1f}", f"{g / x:.2f}" if x else "-"]
        t.add_row(*cells)
    console.print(t)
    console.print(
        f"time model: OpenFHE {e.preset} measured on {e.time_model}; seconds scaled by "
        f"{e.load_factor:.2f} to load {e.load:.2f}"
        + (
            f" (the run's load: {run['load_1m'][0]:.2f} at start, {run['load_1m'][1]:.2f} at end)"
            if run and run.get("load_1m")
            else ""
        )
    )
    if got and run["backend"] != "openfhe":
        console.print("the measured run used the simulator: its seconds are not OpenFHE's")
    if out is not None:
        from privlearn.bench import save_json

        save_json({"estimate": est, "measured": got}, out)
        console.print(f"wrote {out}")
