"""Screening: which clients' updates are dropped before the server sees them, and why.

Not a transform: a rejected client must vanish from every field of its update, so the
round drops its rows before any algorithm code runs (rounds.py). Screening checks what the
server can check without trusting the client: types, finiteness, representable magnitudes
and weights against the sample counts it knows. Magnitudes an honest client could send but
that still harm the model are the defences' business (privlearn.fl.robust)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree


@dataclass(frozen=True)
class Rejection:
    client: int
    reason: str

    def __str__(self) -> str:
        return f"client {self.client}: {self.reason}"


def _field(path) -> str:
    """A leaf's path as a reader writes it: delta['fc.bias'], extras['dc']['fc.weight']."""
    return pytree.keystr(path).lstrip(".")


def shape_mismatch(update: Any, template: Any) -> str | None:
    """Why one client's update does not have the template's structure and shapes, or None."""
    got, got_spec = pytree.tree_flatten(update)
    want, want_spec = pytree.tree_flatten(template)
    if got_spec != want_spec:
        return "update has different fields than expected"
    paths = [_field(p) for p, _ in pytree.tree_flatten_with_path(template)[0]]
    for path, g, w in zip(paths, got, want, strict=True):
        if not isinstance(g, torch.Tensor) or g.shape != w.shape:
            shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            return f"{path} has shape {shape}, expected {tuple(w.shape)}"
        if g.dtype != w.dtype:  # a float64 delta once passed here and crashed the next round
            return f"{path} has dtype {g.dtype}, expected {w.dtype}"
    return None


def magnitude_limit(dtype: torch.dtype) -> float:
    """The largest |value| screening admits: beyond sqrt(max) squares overflow (norms, second
    moments, distances), so no optimiser or defence can process the value soundly."""
    return math.sqrt(torch.finfo(dtype).max)


def wrong_dtype(field: str, leaf: torch.Tensor, dtype: torch.dtype) -> str | None:
    """Why a leaf's dtype is not what the server computes in, or None: numbers are in the
    model's precision (an int64 delta was truncated silently, a float64 one crashed the next
    round); only the algorithm's extras may hold integers (ids)."""
    if leaf.dtype == dtype:
        return None
    extra = field.startswith("extras")
    if extra and not (leaf.is_floating_point() or leaf.is_complex()):
        return None
    return f"{field} has dtype {leaf.dtype}, expected {dtype}"


def screen(
    updates: Any,
    client_ids: torch.Tensor,
    max_weight: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, list[Rejection]]:
    """Rows (clients) of a stacked update that hold NaN, Inf or values beyond
    `magnitude_limit` anywhere are rejected; given ``dtype`` (the model's precision), every
    row of a field of another dtype; given ``max_weight`` (what the server knows of each
    client: its sample count), rows whose ``weight`` is not in (0, max_weight] (all-zero
    weights made the mean 0/0).

    Returns a boolean keep-mask over rows and one Rejection per dropped client."""
    keep = torch.ones(len(client_ids), dtype=torch.bool, device=client_ids.device)
    found: dict[int, dict[str, list[str]]] = {}  # row -> problem -> fields showing it

    def note(bad: torch.Tensor, problem: str, field: str = "") -> None:
        for row in torch.nonzero(bad).flatten().tolist():
            found.setdefault(row, {}).setdefault(problem, []).append(field)
        keep.logical_and_(~bad)

    for path, leaf in pytree.tree_flatten_with_path(updates)[0]:
        field = _field(path)
        problem = None if dtype is None else wrong_dtype(field, leaf, dtype)
        if problem is not None:
            note(torch.ones_like(keep), problem)
        elif leaf.is_floating_point():
            rows = leaf.reshape(leaf.shape[0], -1)
            finite = torch.isfinite(rows).all(dim=1)
            limit = magnitude_limit(leaf.dtype)
            note(~finite, "non-finite values (NaN/Inf) in", field)
            note(
                finite & (rows.abs() > limit).any(dim=1),
                f"values beyond ±{limit:.2g} (squares overflow {leaf.dtype}) in",
                field,
            )
    if max_weight is not None:
        w = updates.weight.to(torch.float64)
        ok = (w > 0) & (w <= max_weight.to(w))
        for row in torch.nonzero(~ok).flatten().tolist():
            found.setdefault(row, {})[
                f"weight {w[row].item():g} outside (0, {max_weight[row].item():g}]"
            ] = []
        keep &= ok
    return keep, [Rejection(int(client_ids[r]), _reason(found[r])) for r in sorted(found)]


def _reason(problems: dict[str, list[str]]) -> str:
    """'non-finite values (NaN/Inf) in delta['a'], delta['b']; weight 0 outside (0, 40]'."""
    parts = []
    for problem, fields in problems.items():
        named = [f for f in fields if f]
        shown = ", ".join(named[:3]) + (" ..." if len(named) > 3 else "")
        parts.append(f"{problem} {shown}" if named else problem)
    return "; ".join(parts)
