"""Plaintext masks over one ``s0 x s1`` block, as flat slot vectors (row-major).

``(i, j)`` below is (row, column) inside a block. The diagonal products leave, at every slot,
a value of a known diagonal; these masks pick out and place those values. Complex masks carry
the complexification: a slot's real part holds diagonal ``k`` and its imaginary part diagonal
``k + c'/2``, so weight 1/2 keeps the first and -i/2 turns the second into a real part, and the
final ``x + conj(x)`` doubles the real part and drops the rest.
"""

from __future__ import annotations

import numpy as np

from privlearn.linalg.packing import BlockShape


def _grid(block: BlockShape) -> tuple[np.ndarray, np.ndarray]:
    return np.divmod(np.arange(block.slots), block.s1)


def columns(block: BlockShape, lo: int, hi: int) -> np.ndarray:
    """1 on columns ``lo <= j < hi`` of every row."""
    _, j = _grid(block)
    return ((j >= lo) & (j < hi)).astype(np.float64)


def rows(block: BlockShape, lo: int, hi: int) -> np.ndarray:
    """1 on rows ``lo <= i < hi``."""
    i, _ = _grid(block)
    return ((i >= lo) & (i < hi)).astype(np.float64)


def _pair(match_re: np.ndarray, match_im: np.ndarray) -> np.ndarray:
    return 0.5 * match_re - 0.5j * match_im


def abt_diagonal(block: BlockShape, cp: int, k: int) -> np.ndarray:
    """Row i's replicated sum of complex diagonal k, kept at columns ``(i + k) mod c'`` (real
    part) and ``(i + k + c'/2) mod c'`` (imaginary part), in every tile of the row."""
    i, j = _grid(block)
    d = (j - i - k) % cp
    return _pair(d == 0, d == cp // 2)


def abt_placement(block: BlockShape, cp: int, k: int, rho: int) -> np.ndarray:
    """Column 0 of the rows whose complex diagonal k belongs in column ``rho`` (real part when
    ``(i + k) mod c' = rho``, imaginary part when ``(i + k + c'/2) mod c' = rho``)."""
    i, j = _grid(block)
    d = (rho - i - k) % cp
    return _pair((j == 0) & (d == 0), (j == 0) & (d == cp // 2))


def atb_selection(block: BlockShape, cp: int, k: int, *, complex_pair: bool) -> np.ndarray:
    """Rows ``i = j + k (mod c')`` of column j: where diagonal k belongs in the row-tiled
    product. ``complex_pair`` adds rows ``j + k + c'/2`` for the imaginary part."""
    i, j = _grid(block)
    d = (i - j - k) % cp
    if complex_pair:
        return _pair(d == 0, d == cp // 2)
    return (d == 0).astype(np.float64)
