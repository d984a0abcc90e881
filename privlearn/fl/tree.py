"""Helpers for nested dicts of tensors (pytrees): the shape of every FL state and update.

Stacked trees carry a leading client axis; these helpers move rows in and out of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils import _pytree as pytree

Tree = Any


def tree_map(fn: Callable, tree: Tree, *rest: Tree) -> Tree:
    return pytree.tree_map(fn, tree, *rest)


def leaves(tree: Tree) -> list[torch.Tensor]:
    return pytree.tree_leaves(tree)


def stack(trees: Sequence[Tree]) -> Tree:
    """One tree whose leaves stack the given trees' leaves along a new axis 0."""
    flat = [pytree.tree_flatten(t) for t in trees]
    spec = flat[0][1]
    return pytree.tree_unflatten(
        [torch.stack(xs) for xs in zip(*(f[0] for f in flat), strict=True)], spec
    )


def cat(trees: Sequence[Tree]) -> Tree:
    flat = [pytree.tree_flatten(t) for t in trees]
    return pytree.tree_unflatten(
        [torch.cat(xs) for xs in zip(*(f[0] for f in flat), strict=True)], flat[0][1]
    )


def rows(tree: Tree, idx: torch.Tensor | slice | int) -> Tree:
    """Select rows (clients) of every leaf."""
    return tree_map(lambda t: t[idx], tree)


def put_rows_(bank: Tree, idx: torch.Tensor, values: Tree) -> None:
    """Write `values` into rows `idx` of every leaf of `bank`, in place."""
    for b, v in zip(leaves(bank), leaves(values), strict=True):
        b[idx] = v.to(b.dtype)


def repeat(tree: Tree, n: int) -> Tree:
    """A stacked tree of `n` identical copies (real memory, so rows can be written)."""
    return tree_map(lambda t: t.unsqueeze(0).repeat((n,) + (1,) * t.dim()), tree)


def where(cond: torch.Tensor, a: Tree, b: Tree) -> Tree:
    """Per-row choice: rows of `a` where cond[k] is true, else rows of `b`."""
    return tree_map(lambda x, y: torch.where(cond.view((-1,) + (1,) * (x.dim() - 1)), x, y), a, b)


def flat_rows(tree: Tree) -> torch.Tensor:
    """A stacked tree as one [K, P] matrix (leaves flattened and concatenated per row)."""
    ls = leaves(tree)
    return torch.cat([t.reshape(t.shape[0], -1) for t in ls], dim=1)


def unflat(flat: torch.Tensor, like: Tree) -> Tree:
    """flat_rows inverted: the last axis of `flat` back into `like`'s leaf shapes (without
    `like`'s leading axis) and dtypes; a [P] vector gives one row, a [K, P] matrix K rows."""
    flat_leaves, spec = pytree.tree_flatten(like)
    out, at = [], 0
    for t in flat_leaves:
        shape = t.shape[1:]
        size = int(torch.Size(shape).numel())
        out.append(flat[..., at : at + size].reshape(flat.shape[:-1] + shape).to(t.dtype))
        at += size
    if at != flat.shape[-1]:
        raise ValueError(f"flat values of length {flat.shape[-1]} for a tree of {at}")
    return pytree.tree_unflatten(out, spec)


def scale_rows(tree: Tree, weights: torch.Tensor) -> Tree:
    """Each row k of a stacked tree times weights[k] (no sum)."""
    return tree_map(lambda t: t * weights.to(t.dtype).view((-1,) + (1,) * (t.dim() - 1)), tree)


def add(a: Tree, b: Tree, scale: float | torch.Tensor = 1.0) -> Tree:
    return tree_map(lambda x, y: x + scale * y, a, b)


def sub(a: Tree, b: Tree) -> Tree:
    return tree_map(lambda x, y: x - y, a, b)


def zeros_like(tree: Tree) -> Tree:
    return tree_map(torch.zeros_like, tree)


def sq_norm(tree: Tree) -> torch.Tensor:
    """Squared L2 norm of all leaves together (a scalar; vmaps to one per client)."""
    return sum((t * t).sum() for t in leaves(tree))


def weighted_sum(tree: Tree, weights: torch.Tensor) -> Tree:
    """Sum over axis 0 of a stacked tree, row k scaled by weights[k]."""
    return tree_map(lambda t: torch.tensordot(weights.to(t.dtype), t, dims=1), tree)
