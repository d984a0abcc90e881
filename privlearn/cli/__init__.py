"""`privlearn ...`: parse, check, call, print. Work lives in the packages, not here.

One module per command group; `errors` turns every input mistake into one line and exit
code 2 (tracebacks with `--debug`), `options` checks output paths before any work, and
`fields` derives `fl` options from `RunConfig`.
"""

from __future__ import annotations

import typer

import privlearn
from privlearn.cli import bench, fl, he, info
from privlearn.cli.errors import RootGroup

app = typer.Typer(
    cls=RootGroup,
    help="privlearn: machine learning on data its owners will not reveal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"privlearn {privlearn.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="show the full traceback of any error"),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="print privlearn's version and exit",
    ),
) -> None:
    """privlearn: machine learning on data its owners will not reveal."""


app.command()(info.info)
app.command()(info.demo)
app.add_typer(he.app, name="he")
app.add_typer(bench.app, name="bench")
app.add_typer(fl.app, name="fl")


def main() -> None:  # pragma: no cover - the console script
    app(prog_name="privlearn")
