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
        if g.dtype != w.dtype:  # a float64 delta once passed here and crashed the next round
            return f"{path} has dtype {g.dtype}, expected {w.dtype}"
    return None


def screen(
    updates: Any, client_ids: torch.Tensor, max_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[Rejection]]:
    """Rows (clients) of a stacked update that hold NaN or Inf anywhere are rejected, and,
    given ``max_weight`` (what the server knows of each client: its sample count), rows whose
    ``weight`` is not in (0, max_weight] (all-zero weights made the mean 0/0).

    Returns a boolean keep-mask over rows and one Rejection per dropped client."""
    keep = torch.ones(len(client_ids), dtype=torch.bool, device=client_ids.device)
    bad_fields: dict[int, list[str]] = {}
    reasons: dict[int, str] = {}
    if max_weight is not None:
        w = updates.weight.to(torch.float64)
        ok = (w > 0) & (w <= max_weight.to(w))
        for row in torch.nonzero(~ok).flatten().tolist():
            reasons[row] = f"weight {w[row].item():g} outside (0, {max_weight[row].item():g}]"
        keep &= ok
    for path, leaf in pytree.tree_flatten_with_path(updates)[0]:
        finite = torch.isfinite(leaf.reshape(leaf.shape[0], -1)).all(dim=1)
        for row in torch.nonzero(~finite).flatten().tolist():
            bad_fields.setdefault(row, []).append(_field(path))
        keep &= finite
    for r, fields in bad_fields.items():
        reasons[r] = (
            "non-finite values (NaN/Inf) in "
            + ", ".join(fields[:3])
            + (" ..." if len(fields) > 3 else "")
        )
    return keep, [Rejection(int(client_ids[r]), reasons[r]) for r in sorted(reasons)]
