"""Row groups: a matrix packed row-major, each row ``width`` consecutive slots.

This is HETAL's block layout (a batch x padded-classes block, row-major, in one ciphertext):
row r occupies slots [r * width, (r + 1) * width), ``width`` a power of two that divides the
slot count. Row-wise reductions rotate the whole ciphertext, so after log2(width)
rotate-and-add steps the first slot of each row holds the row's result while the other slots
hold values that mix two neighbouring rows; :func:`broadcast` copies a row's first slot over
the row once the others are zero (a mask, which callers fold into a product they need anyway).
"""

from __future__ import annotations

import numpy as np

from privlearn.approx.planner import LevelManager
from privlearn.he import Ciphertext


def check_width(width: int, slots: int) -> int:
    """log2(width), after checking that rows tile the ciphertext."""
    if width < 1 or width & (width - 1) or slots % width:
        raise ValueError(f"row width must be a power of two dividing {slots} slots, got {width}")
    return width.bit_length() - 1


def padded_width(classes: int) -> int:
    """HETAL's padding: the next power of two >= classes."""
    if classes < 1:
        raise ValueError(f"need at least one class, got {classes}")
    return 1 << (classes - 1).bit_length()


def rotations(width: int) -> list[int]:
    """Rotation keys row reductions and broadcasts need: +-2^i for 2^i < width."""
    return [s * (1 << i) for i in range(width.bit_length() - 1) for s in (1, -1)]


def row_start_mask(slots: int, width: int) -> np.ndarray:
    """1 in the first slot of each row, 0 elsewhere."""
    check_width(width, slots)
    m = np.zeros(slots)
    m[::width] = 1.0
    return m


def class_mask(slots: int, width: int, classes: int) -> np.ndarray:
    """1 in the first ``classes`` slots of each row (the real classes), 0 in the padding."""
    check_width(width, slots)
    if not 1 <= classes <= width:
        raise ValueError(f"{classes} classes do not fit rows of width {width}")
    return np.tile(np.r_[np.ones(classes), np.zeros(width - classes)], slots // width)


def row_sum(lm: LevelManager, ct: Ciphertext, width: int) -> Ciphertext:
    """Slot 0 of each row: the sum of its first ``width`` slots (other slots: sums of windows
    that may cross into the next row)."""
    for i in range(check_width(width, ct.slots)):
        ct = lm.add(ct, lm.rotate(ct, 1 << i))
    return ct


def broadcast(lm: LevelManager, ct: Ciphertext, width: int) -> Ciphertext:
    """Each row filled with its first slot's value; ``ct`` must be zero off the row starts."""
    for i in range(check_width(width, ct.slots)):
        ct = lm.add(ct, lm.rotate(ct, -(1 << i)))
    return ct


def pack(x: np.ndarray, width: int, slots: int) -> np.ndarray:
    """Rows of ``x`` (n x classes) laid out row-major at ``width`` slots per row, zero padded:
    one line per ciphertext, shape (ceil(n / rows per ciphertext), slots)."""
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape
    check_width(width, slots)
    if c > width:
        raise ValueError(f"{c} classes do not fit rows of width {width}")
    per = slots // width
    blocks = -(-n // per)
    out = np.zeros((blocks * per, width))
    out[:n, :c] = x
    return out.reshape(blocks, slots)


def unpack(blocks: np.ndarray, rows: int, classes: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``rows`` rows, real classes only."""
    return np.asarray(blocks).reshape(-1, width)[:rows, :classes]
