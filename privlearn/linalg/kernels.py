"""Rotation patterns the matrix products are built from, each with a fixed, countable cost.

Every rotation offset used here is ``±2^e * step``, so a whole algorithm needs only
power-of-two rotation keys (each key is ~100 MB at N=2^16). The closed-form cost of each
pattern is in :mod:`privlearn.linalg.cost`; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from privlearn.he import Ciphertext, Evaluator


def log2(x: int) -> int:
    if x < 1 or x & (x - 1):
        raise ValueError(f"expected a power of two, got {x}")
    return x.bit_length() - 1


def rotate_sum(ev: Evaluator, ct: Ciphertext, step: int, count: int) -> Ciphertext:
    """``sum_{x < count} Rot(ct, x*step)`` by doubling: log2(count) rotations."""
    for e in range(log2(count)):
        ct = ev.add(ct, ev.rotate(ct, step << e))
    return ct


def tree_sum(ev: Evaluator, cts: Sequence[Ciphertext], step: int) -> Ciphertext:
    """``sum_u Rot(cts[u], u*step)`` for a power-of-two count: len - 1 rotations, keys
    ``2^e * step`` only (pairs are merged level by level, the stride doubling each time)."""
    level = list(cts)
    log2(len(level))  # raises unless a power of two
    while len(level) > 1:
        level = [
            ev.add(level[2 * m], ev.rotate(level[2 * m + 1], step)) for m in range(len(level) // 2)
        ]
        step *= 2
    return level[0]


def shifted_family(ev: Evaluator, ct: Ciphertext, step: int, count: int) -> list[Ciphertext]:
    """``[Rot(ct, k*step) for k < count]`` (count a power of two) with count - 1 rotations by
    power-of-two multiples of ``step``: shift k comes from shift ``k - lowbit(k)``, and each
    source's rotations share one decomposition (``rotate_many``)."""
    out: list[Ciphertext | None] = [ct] + [None] * (count - 1)
    for src in range(count):
        # children src + b for powers b below lowbit(src) (all b < count for src = 0); they
        # stay below count because count is a power of two
        bits = [1 << e for e in range(log2(src & -src if src else count))]
        if bits:
            rotated = ev.rotate_many(out[src], [b * step for b in bits])
            for b in bits:
                out[src + b] = rotated[b * step]
    return out  # type: ignore[return-value]


def dot(ev: Evaluator, xs: Sequence[Ciphertext], ys: Sequence[Ciphertext]) -> Ciphertext:
    """``sum_i xs[i] * ys[i]``: one Mult each, one rescale in all."""
    acc = None
    for x, y in zip(xs, ys, strict=True):
        p = ev.mul(x, y, rescale=False)
        acc = p if acc is None else ev.add(acc, p)
    return ev.rescale(acc)


def masked_sum(
    ev: Evaluator,
    cts: Sequence[Ciphertext],
    masks: Sequence[np.ndarray],
) -> Ciphertext:
    """``sum_i cts[i] * masks[i]``: one CMult each, one rescale in all."""
    acc = None
    for ct, m in zip(cts, masks, strict=True):
        p = ev.mul(ct, m, rescale=False)
        acc = p if acc is None else ev.add(acc, p)
    return ev.rescale(acc)


def times_i(ev: Evaluator, ct: Ciphertext) -> Ciphertext:
    """``i * ct``. HEaaN does this for free (a monomial product); the Evaluator has no such
    operation, so here it is a complex-scalar product that consumes one level."""
    return ev.mul(ct, 1j)
