"""Packing matrices into CKKS slot vectors, and :class:`EncMatrix`, the encrypted result.

HETAL's packing: a matrix is cut into ``s0 x s1`` blocks (``s0 * s1`` = the slot count), each
block stored row-major in one ciphertext, zero-padded at the right and bottom edges. The small
operand with ``c`` rows (the weights, the gradient) is padded to ``c'`` rows (a power of two) and
repeated down the block, so that rotating a block by whole rows never needs a mask; the product's
``c`` columns are repeated across a block the same way. The baselines pack differently (one
ciphertext per column, per entry, or per diagonal); their layouts live here too, so every packed
matrix encrypts, decrypts and reports its levels through the same class.

Pure numpy ``pack``/``unpack`` are separate from encryption so layouts can be tested exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from privlearn.he import Ciphertext, ClientContext


def _is_pow2(x: int) -> bool:
    return x >= 1 and x & (x - 1) == 0


def next_pow2(x: int) -> int:
    """The smallest power of two >= x (1 for x <= 1)."""
    return 1 << (max(x, 1) - 1).bit_length()


def padded_classes(c: int) -> int:
    """``c'``: ``c`` rounded up to a power of two, at least 2 (complexification pairs diagonals)."""
    if c < 1:
        raise ValueError(f"need at least one row/column in the small operand, got {c}")
    return max(2, next_pow2(c))


@dataclass(frozen=True)
class BlockShape:
    """``s0`` rows by ``s1`` columns, both powers of two, filling one ciphertext."""

    s0: int
    s1: int

    def __post_init__(self) -> None:
        if not (_is_pow2(self.s0) and _is_pow2(self.s1)):
            raise ValueError(f"block sides must be powers of two, got {self.s0} x {self.s1}")

    @property
    def slots(self) -> int:
        return self.s0 * self.s1

    def grid(self, rows: int, cols: int) -> tuple[int, int]:
        """Number of block rows and block columns covering a ``rows x cols`` matrix."""
        return math.ceil(rows / self.s0), math.ceil(cols / self.s1)

    def __str__(self) -> str:
        return f"{self.s0}x{self.s1}"


def hetal_block_shape(batch: int, classes: int, slots: int) -> BlockShape:
    """HETAL's rule: ``s0 = min(max(batch, c'), slots / c')``, ``s1 = slots / s0``.

    ``batch`` is rounded up to a power of two. The rule keeps ``s0, s1 >= c'`` so both tiled
    layouts fit, and makes one block row hold a whole mini-batch when it can.
    """
    if not _is_pow2(slots):
        raise ValueError(f"slot count must be a power of two, got {slots}")
    cp = padded_classes(classes)
    if cp * cp > slots:
        raise ValueError(f"{classes} classes need {cp}^2 > {slots} slots; use a larger ring")
    s0 = min(max(next_pow2(batch), cp), slots // cp)
    return BlockShape(s0, slots // s0)


class Layout(str, Enum):
    """How a matrix sits in its ciphertexts (see the module docstring)."""

    PLAIN = "plain"  # s0 x s1 blocks, row-major inside, grid of ceil(rows/s0) x ceil(cols/s1)
    ROW_TILED = "row_tiled"  # rows padded to c' and repeated down each block; one block row
    COL_TILED = "col_tiled"  # cols padded to c' and repeated across each block; one block column
    ROW_TILED_PAIRED = "row_tiled_paired"  # ROW_TILED, block columns 2p, 2p+1 as real + i*imag
    DUPLICATED_ROWS = "duplicated_rows"  # PLAIN with each row repeated in the block's right half
    DIAGONALS = "diagonals"  # c' generalized diagonals of a c x cols matrix (Halevi-Shoup)
    COLUMNS = "columns"  # one ciphertext per column, entries in slots 0..rows-1 (Jin et al.)
    REPLICATED = "replicated"  # one ciphertext per entry, every slot holding it (Jin et al.)


def pack(matrix: np.ndarray, block: BlockShape, layout: Layout) -> list[np.ndarray]:
    """Slot vectors (one per ciphertext, ``block.slots`` long) holding ``matrix`` in ``layout``."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or 0 in m.shape:
        raise ValueError(f"expected a non-empty 2-D matrix, got shape {m.shape}")
    check_fits(m.shape, block, layout)
    rows, cols = m.shape
    s0, s1, n = block.s0, block.s1, block.slots
    if layout is Layout.PLAIN:
        return [
            _block(m, i, j, block)
            for i in range(block.grid(rows, cols)[0])
            for j in range(block.grid(rows, cols)[1])
        ]
    if layout is Layout.DUPLICATED_ROWS:
        half = BlockShape(s0, s1 // 2)
        out = []
        for i in range(half.grid(rows, cols)[0]):
            b = _block(m, i, 0, half).reshape(s0, s1 // 2)
            out.append(np.hstack([b, b]).reshape(-1))
        return out
    if layout in (Layout.ROW_TILED, Layout.ROW_TILED_PAIRED):
        cp = padded_classes(rows)
        tiles = [
            np.tile(
                _block(_pad_rows(m, cp), 0, j, BlockShape(cp, s1)).reshape(cp, s1), (s0 // cp, 1)
            ).reshape(-1)
            for j in range(block.grid(rows, cols)[1])
        ]
        if layout is Layout.ROW_TILED:
            return tiles
        pairs = [tiles[2 * p] + 1j * tiles[2 * p + 1] for p in range(len(tiles) // 2)]
        return pairs + tiles[len(pairs) * 2 :]
    if layout is Layout.COL_TILED:
        cp = padded_classes(cols)
        mp = np.zeros((rows, cp))
        mp[:, :cols] = m
        return [
            np.tile(_block(mp, i, 0, BlockShape(s0, cp)).reshape(s0, cp), (1, s1 // cp)).reshape(-1)
            for i in range(block.grid(rows, cols)[0])
        ]
    if layout is Layout.DIAGONALS:
        cp, width = padded_classes(rows), s1 // 2
        mp = np.zeros((cp, width))
        mp[:rows, :cols] = m
        j = np.arange(width)
        out = []
        for k in range(cp):
            seg = np.zeros(s1)
            seg[:width] = mp[j % cp, (j + k) % width]
            out.append(np.tile(seg, s0))
        return out
    if layout is Layout.COLUMNS:
        return [_pad_vector(m[:, j], n) for j in range(cols)]
    if layout is Layout.REPLICATED:
        return [np.full(n, v) for v in m.reshape(-1)]
    raise ValueError(f"unknown layout {layout!r}")  # pragma: no cover


def ciphertext_count(shape: tuple[int, int], block: BlockShape, layout: Layout) -> int:
    """How many ciphertexts :func:`pack` makes (without packing anything)."""
    rows, cols = shape
    nr, nc = block.grid(rows, cols)
    return {
        Layout.PLAIN: nr * nc,
        Layout.ROW_TILED: nc,
        Layout.ROW_TILED_PAIRED: (nc + 1) // 2,
        Layout.COL_TILED: nr,
        Layout.DUPLICATED_ROWS: nr,
        Layout.DIAGONALS: padded_classes(rows),
        Layout.COLUMNS: cols,
        Layout.REPLICATED: rows * cols,
    }[layout]


def unpack(
    vectors: Sequence[np.ndarray], shape: tuple[int, int], block: BlockShape, layout: Layout
) -> np.ndarray:
    """Inverse of :func:`pack` (reads the first tile of tiled layouts, real parts elsewhere)."""
    rows, cols = shape
    s0, s1 = block.s0, block.s1
    if layout is Layout.ROW_TILED_PAIRED:
        real = []
        for v in vectors:
            real += [v.real, v.imag] if np.iscomplexobj(v) else [v]
        return unpack(real[: block.grid(rows, cols)[1]], shape, block, Layout.ROW_TILED)
    vs = [np.real(v) for v in vectors]
    if layout is Layout.PLAIN:
        nr, nc = block.grid(rows, cols)
        full = np.block([[vs[i * nc + j].reshape(s0, s1) for j in range(nc)] for i in range(nr)])
        return full[:rows, :cols]
    if layout is Layout.DUPLICATED_ROWS:
        full = np.vstack([v.reshape(s0, s1)[:, : s1 // 2] for v in vs])
        return full[:rows, :cols]
    if layout is Layout.ROW_TILED:
        return np.hstack([v.reshape(s0, s1) for v in vs])[:rows, :cols]
    if layout is Layout.COL_TILED:
        return np.vstack([v.reshape(s0, s1) for v in vs])[:rows, :cols]
    if layout is Layout.COLUMNS:
        return np.stack([v[:rows] for v in vs], axis=1)
    if layout is Layout.REPLICATED:
        return np.array([v[0] for v in vs]).reshape(rows, cols)
    raise ValueError(f"layout {layout.value} is an input-only layout")


def check_fits(shape: tuple[int, int], block: BlockShape, layout: Layout) -> None:
    """Raise a ValueError saying why ``shape`` cannot be packed in ``layout`` with ``block``."""
    rows, cols = shape
    s0, s1 = block.s0, block.s1
    if layout in (Layout.ROW_TILED, Layout.ROW_TILED_PAIRED) and padded_classes(rows) > s0:
        raise ValueError(
            f"{rows} rows tile to {padded_classes(rows)}, more than the block's "
            f"s0 = {s0}; choose a taller block (hetal_block_shape does)"
        )
    if layout is Layout.COL_TILED and padded_classes(cols) > s1:
        raise ValueError(
            f"{cols} columns tile to {padded_classes(cols)}, more than the block's "
            f"s1 = {s1}; choose a wider block (hetal_block_shape does)"
        )
    if layout is Layout.DUPLICATED_ROWS and cols > s1 // 2:
        raise ValueError(f"{cols} columns do not fit half a {s1}-slot segment")
    if layout is Layout.DIAGONALS and not padded_classes(rows) <= s1 // 2:
        raise ValueError(
            f"{rows} rows need {padded_classes(rows)} diagonals, more than the "
            f"segment's {s1 // 2} columns"
        )
    if layout is Layout.DIAGONALS and cols > s1 // 2:
        raise ValueError(f"{cols} columns do not fit half a {s1}-slot segment")
    if layout is Layout.COLUMNS and rows > block.slots:
        raise ValueError(f"a column of {rows} entries does not fit {block.slots} slots")


def _block(m: np.ndarray, i: int, j: int, block: BlockShape) -> np.ndarray:
    out = np.zeros((block.s0, block.s1))
    part = m[i * block.s0 : (i + 1) * block.s0, j * block.s1 : (j + 1) * block.s1]
    out[: part.shape[0], : part.shape[1]] = part
    return out.reshape(-1)


def _pad_rows(m: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, m.shape[1]))
    out[: m.shape[0]] = m
    return out


def _pad_vector(v: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    out[: v.size] = v
    return out


@dataclass(frozen=True)
class EncMatrix:
    """A ``shape`` matrix packed in ``layout`` with ``block``, one ciphertext per vector of
    :func:`pack`. Built by :meth:`encrypt` on the client, or by an algorithm on the server."""

    blocks: tuple[Ciphertext, ...]
    shape: tuple[int, int]
    block: BlockShape
    layout: Layout

    @classmethod
    def encrypt(
        cls,
        client: ClientContext,
        matrix: np.ndarray,
        block: BlockShape,
        layout: Layout = Layout.PLAIN,
        *,
        level: int | None = None,
    ) -> EncMatrix:
        if block.slots != client.slots:
            raise ValueError(
                f"block {block} holds {block.slots} slots but the context has {client.slots}"
            )
        m = np.asarray(matrix, dtype=np.float64)
        vectors = pack(m, block, layout)
        return cls(tuple(client.encrypt(v, level=level) for v in vectors), m.shape, block, layout)

    def decrypt(self, client: ClientContext) -> np.ndarray:
        return unpack(
            [client.decrypt(ct) for ct in self.blocks], self.shape, self.block, self.layout
        )

    @property
    def grid(self) -> tuple[int, int]:
        return self.block.grid(*self.shape)

    @property
    def level(self) -> int:
        """Levels left: the lowest over its ciphertexts."""
        return min(ct.level for ct in self.blocks)

    def at(self, i: int, j: int) -> Ciphertext:
        """Block (i, j) of a PLAIN matrix."""
        return self.blocks[i * self.grid[1] + j]
