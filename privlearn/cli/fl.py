"""`privlearn fl ...`: federated runs and partitions. The options of both are derived from
`RunConfig`'s fields (see `privlearn.cli.fields`), so every flag is also a YAML key."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import typer
from rich.table import Table

from privlearn.cli import fields
from privlearn.cli.options import check_out_dir, check_out_file, console
from privlearn.fl.data import DataSpec
from privlearn.fl.run import RunConfig

app = typer.Typer(help="Federated learning: runs and partitions.", no_args_is_help=True)


def _param(name: str, option) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Path)


RUN_OPTIONS = [
    _param(
        "config",
        typer.Option(
            None,
            exists=True,
            dir_okay=False,
            help="YAML config; flags given here override it",
            show_default="none",
        ),
    ),
    _param(
        "resume",
        typer.Option(
            None,
            exists=True,
            file_okay=False,
            help="continue the run checkpointed in this folder",
            show_default="no",
        ),
    ),
    *fields.options(RunConfig, out={"callback": check_out_dir}),
]


@app.command("run")
@fields.with_options(RUN_OPTIONS)
def run(ctx: typer.Context, config: Path | None, resume: Path | None, **values) -> None:
    """Run a federated experiment: progress bar, metrics JSON + PNG, checkpoint every round."""
    from privlearn.fl.run import load_checkpoint_config, run_experiment, summarise

    if resume is not None:
        cfg = load_checkpoint_config(resume)
    elif config is not None:
        cfg = RunConfig.from_yaml(config)
    else:
        cfg = RunConfig()
    given = fields.given(RunConfig, ctx, values)
    for key, value in given.items():
        if isinstance(getattr(cfg, key), dict):
            given[key] = {**getattr(cfg, key), **value}
    if resume is not None:
        given["out"] = str(resume)
    cfg = dataclasses.replace(cfg, **given)  # re-checks every range
    try:
        doc = run_experiment(cfg, resume=resume is not None, console=console)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    console.print(summary_line(summarise(doc)))
    console.print(f"wrote {cfg.out}/metrics.json, metrics.png, partition.png, checkpoint.pt")


def summary_line(s: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in s.items() if v is not None)


# `fl partition` takes the data fields of RunConfig (those DataSpec shares) and the seed
PARTITION_FIELDS = [f.name for f in dataclasses.fields(DataSpec)] + ["seed"]
PARTITION_OPTIONS = [
    *fields.options(RunConfig, PARTITION_FIELDS),
    _param(
        "out",
        typer.Option(
            Path("results/partition"), help="folder for JSON + heat-map PNG", callback=check_out_dir
        ),
    ),
    _param(
        "export",
        typer.Option(
            None,
            help="also write each client's training-row indices here (JSON)",
            callback=check_out_file,
            show_default="no",
        ),
    ),
]


@app.command("partition")
@fields.with_options(PARTITION_OPTIONS)
def partition(ctx: typer.Context, out: Path, export: Path | None, **values) -> None:
    """Split a dataset, report how non-IID it is (Hellinger / JS), write JSON + heat-map."""
    from privlearn.fl.data import build_federated, label_counts, plot_heatmap, summary

    cfg = RunConfig(**fields.given(RunConfig, ctx, values))
    spec = cfg.data_spec()
    ds = build_federated(spec, cfg.seed)
    counts = label_counts(ds.y_train.numpy(), ds.clients, ds.n_classes)
    s = summary(counts)
    settings = {**dataclasses.asdict(spec), "seed": cfg.seed}
    out.mkdir(parents=True, exist_ok=True)
    (out / "partition.json").write_text(
        json.dumps({**settings, "label_counts": counts.tolist(), **s}, indent=1)
    )
    if export is not None:
        export.parent.mkdir(parents=True, exist_ok=True)
        export.write_text(json.dumps(export_doc(settings, ds.clients)))
    title = f"{spec.dataset} / {spec.partition}"
    plot_heatmap(counts, out / "partition.png", f"{title}: label share per client")
    t = Table(title=f"{title}, {spec.n_clients} clients, seed {cfg.seed}")
    for col in ("client", "samples", "classes", "Hellinger", "JS distance"):
        t.add_column(col, justify="right")
    for i in range(len(ds.clients)):
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
        + (f", {export}" if export else "")
    )


def export_doc(settings: dict, clients) -> dict:
    """The partition as data: the settings that drew it and client i's rows of the training
    split (`clients[i]`, in the loader's order), so another tool can reuse the same split."""
    return {**settings, "clients": [[int(i) for i in idx] for idx in clients]}


@app.command("threats")
def threats() -> None:
    """The attacks and defences `fl run --attack/--defence` accept, with their parameters."""
    from privlearn.fl.robust import ATTACKS, DEFENCES, hyper_parameters

    for title, table in (("attacks", ATTACKS), ("defences", DEFENCES)):
        t = Table(title=title)
        t.add_column("name")
        t.add_column("parameters (defaults)")
        t.add_column("what it does")
        for name in sorted(table):
            hp = hyper_parameters(table[name])
            doc = (inspect.getdoc(table[name]) or "").split("\n\n")[0].replace("\n", " ")
            t.add_row(name, ", ".join(f"{k}={v}" for k, v in hp.items()) or "—", doc)
        console.print(t)


from privlearn.cli import flower  # noqa: E402 - its commands join this group

flower.register(app)
