"""A config field's type hint, read once for the two places that need it: `RunConfig`'s
checks (does a YAML value fit, and what to call the type in an error) and the CLI options
derived from the fields (`privlearn.cli.fields`).

The hints a config field may have: ``bool``, ``int``, ``float``, ``str``, a list of ints,
floats or strings, ``dict[str, Any]``, each optionally ``| None``.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

SCALARS = (bool, int, float, str)


@dataclass(frozen=True)
class Kind:
    """kind: 'scalar', 'list' or 'dict'; elem: the scalar type (of a list's items); optional:
    whether None is a value."""

    kind: str
    elem: type | None
    optional: bool


def kind_of(hint: Any) -> Kind:
    """The Kind of a field's type hint; a TypeError for hints no config field may have."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"a config field of type {hint} has more than one type besides None")
        hint, args = rest[0], typing.get_args(rest[0])
    origin = typing.get_origin(hint)
    if hint in SCALARS:
        return Kind("scalar", hint, optional)
    if origin is list and args and args[0] in (int, float, str):
        return Kind("list", args[0], optional)
    if origin is dict:
        return Kind("dict", None, optional)
    raise TypeError(f"no config form for a field of type {hint}")


def _scalar_fits(value: Any, elem: type) -> bool:
    """An int fits a float; a bool is no int."""
    if elem is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if elem is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, elem)


def fits(value: Any, k: Kind) -> bool:
    """Whether a (YAML) value has the field's type."""
    if value is None:
        return k.optional
    if k.kind == "list":
        return isinstance(value, list) and all(_scalar_fits(v, k.elem) for v in value)
    if k.kind == "dict":
        return isinstance(value, dict) and all(isinstance(key, str) for key in value)
    return _scalar_fits(value, k.elem)


def name(k: Kind) -> str:
    """The type as an error message says it: 'int or null', 'a list of int'."""
    base = {"list": f"a list of {getattr(k.elem, '__name__', '')}", "dict": "a mapping"}.get(
        k.kind, getattr(k.elem, "__name__", "")
    )
    return f"{base} or null" if k.optional else base
