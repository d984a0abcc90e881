"""Screening: which clients' updates are dropped before the server sees them, and why.

Not a transform: a rejected client must vanish from every field of its update, so the
round drops its rows before any algorithm code runs (rounds.py)."""

from __future__ import annotations

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
    return None


def screen(updates: Any, client_ids: torch.Tensor) -> tuple[torch.Tensor, list[Rejection]]:
    """Rows (clients) of a stacked update that hold NaN or Inf anywhere are rejected.

    Returns a boolean keep-mask over rows and one Rejection per dropped client."""
    keep = torch.ones(len(client_ids), dtype=torch.bool, device=client_ids.device)
    bad_fields: dict[int, list[str]] = {}
    for path, leaf in pytree.tree_flatten_with_path(updates)[0]:
        finite = torch.isfinite(leaf.reshape(leaf.shape[0], -1)).all(dim=1)
        for row in torch.nonzero(~finite).flatten().tolist():
            bad_fields.setdefault(row, []).append(_field(path))
        keep &= finite
    rejections = [
        Rejection(
            int(client_ids[r]),
            "non-finite values (NaN/Inf) in "
            + ", ".join(bad_fields[r][:3])
            + (" ..." if len(bad_fields[r]) > 3 else ""),
        )
        for r in sorted(bad_fields)
    ]
    return keep, rejections
