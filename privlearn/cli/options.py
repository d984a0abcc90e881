"""What the command modules share: the console, choice checks and output paths checked at parse
time, so an unwritable ``--out`` is refused before any work rather than after it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from privlearn.cli.errors import UsageError

console = Console(width=None if sys.stdout.isatty() else 120)


def choice(option: str, value: Any, accepted: Iterable[Any]) -> None:
    """Refuse `value` of `--option` unless it is one of `accepted` (named in the message)."""
    accepted = list(accepted)
    if value not in accepted:
        raise UsageError(
            f"--{option} {value!r} is not accepted; choose one of {', '.join(map(str, accepted))}"
        )


def choices(option: str, values: Iterable[Any], accepted: Iterable[Any]) -> None:
    for v in values:
        choice(option, v, accepted)


def writable_problem(path: Path, folder: bool) -> str | None:
    """Why `path` cannot be written as a folder (or a file), or None. Nothing is created."""
    if path.exists():
        if folder != path.is_dir():
            return f"{path} exists and is {'not ' if folder else ''}a folder"
        target = path
    else:
        target = path.parent
        while not target.exists():
            target = target.parent
        if not target.is_dir():
            return f"{target} is a file, so nothing can be created under it"
    if not os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
        return f"{target} is not writable"
    return None


def _checker(folder: bool):
    def check(param: typer.CallbackParam, value):
        if value is not None:
            problem = writable_problem(Path(value), folder)
            if problem:
                raise typer.BadParameter(problem, param=param)
        return value

    return check


check_out_dir, check_out_file = _checker(folder=True), _checker(folder=False)
