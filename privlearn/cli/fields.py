"""Command-line options derived from a config dataclass: one source of names, types, defaults
and help, so flags and YAML keys cannot drift apart.

Field ``n_clients`` is the flag ``--n-clients`` and the YAML key ``n_clients``; its help is
``field(metadata={"help": ...})``, and ``metadata["unset"]`` says what a ``None`` default means.
A field added later gets its flag without touching the CLI. Lists are written ``a,b,c``, dicts
as repeated ``key=value`` (values read as YAML, 1e30 a float), booleans as ``--name/--no-name``.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

import click
import typer

from privlearn.cli.errors import UsageError
from privlearn.fl.hints import kind_of
from privlearn.fl.yaml_numbers import safe_load


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(hint: Any) -> tuple[str, type | None]:
    """('scalar' | 'bool' | 'list' | 'dict', element type) of a field's type hint."""
    k = kind_of(hint)
    return ("bool" if k.kind == "scalar" and k.elem is bool else k.kind), k.elem


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _specs(cls: type, names: typing.Collection[str] | None):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if names is None or f.name in names:
            yield f, *_kind(hints[f.name])


def options(
    cls: type, names: typing.Collection[str] | None = None, **option_kw: dict
) -> list[inspect.Parameter]:
    """One keyword parameter (a Typer option) per field of `cls` (or those in `names`);
    `option_kw[name]` adds Typer arguments to that field's option (e.g. a callback)."""
    params = []
    for f, kind, elem in _specs(cls, names):
        default, help_ = _default(f), f.metadata.get("help", "")
        decls = [flag(f.name)]
        if kind == "bool":
            decls = [f"{flag(f.name)}/--no-{f.name.replace('_', '-')}"]
            annotation: Any = bool
        elif kind == "list":
            annotation = str | None
            default = None if default is None else ",".join(map(str, default))
            help_ += " (comma-separated)"
        elif kind == "dict":
            annotation = list[str] | None
            default = [f"{k}={v}" for k, v in default.items()]
            help_ += " (key=value, repeatable; values read as YAML)"
        else:
            annotation = elem | None
        shown: Any = True
        if default is None or default == []:
            shown = f.metadata.get("unset", "none")
        opt = typer.Option(
            default, *decls, help=help_, show_default=shown, **option_kw.get(f.name, {})
        )
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=annotation
            )
        )
    return params


def _convert(name: str, kind: str, elem: type | None, value: Any) -> Any:
    if kind == "list":
        try:
            return [elem(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise UsageError(
                f"{flag(name)} {value!r}: expected comma-separated {elem.__name__} values"
            ) from None
    if kind == "dict":
        out = {}
        for item in value:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"{flag(name)}: expected key=value, got {item!r} (e.g. mu=0.01)")
            out[key.strip().replace("-", "_")] = safe_load(text)
        return out
    return value


def given(cls: type, ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The fields set on the command line (not left at their default), as field values."""
    out = {}
    for f, kind, elem in _specs(cls, values.keys()):
        if ctx.get_parameter_source(f.name) is click.core.ParameterSource.COMMANDLINE:
            out[f.name] = _convert(f.name, kind, elem, values[f.name])
    return out


def with_options(extra: list[inspect.Parameter]):
    """Give `func(ctx, **kw)` the signature `(ctx, *extra)` that Typer reads its options from."""

    def wrap(func):
        ctx_param = inspect.Parameter(
            "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
        )
        func.__signature__ = inspect.Signature([ctx_param, *extra])
        func.__annotations__ = {p.name: p.annotation for p in [ctx_param, *extra]}
        return func

    return wrap
