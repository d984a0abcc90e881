"""YAML read as users write numbers: PyYAML follows YAML 1.1, which reads ``1e30`` (no dot,
no sign in the exponent) as a string, so a hyper-parameter given so reached the code as text.
This safe loader also resolves YAML 1.2's float forms."""

from __future__ import annotations

import re
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    """`yaml.safe_load`, with ``1e30`` and ``2E-3`` read as floats."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
