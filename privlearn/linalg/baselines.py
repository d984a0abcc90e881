"""The algorithms HETAL measured itself against, at the same interface as the diagonal ones.

- Crockett (2020), "A low-depth homomorphic circuit for logistic regression model training":
  ColMajor (A·Bᵀ) and RowMajor (Aᵀ·B) on the same blocks as HETAL; each row (column) of the
  small operand is masked out, replicated by a rotate-and-sum, multiplied and summed.
- Jin et al. (2020), "Secure transfer learning for machine fault diagnosis under different
  operating conditions": one ciphertext per column, one per entry of the small operand.
- Halevi–Shoup (2014) diagonal method for matrix x vector, here the c x b weights times each
  row of A: rows of A packed side by side (each repeated once so rotations stay inside its
  segment), c' generalized diagonals of B (the hybrid form for wide matrices), one rotation
  per diagonal and a final fold.
"""

from __future__ import annotations

from privlearn.he import Evaluator
from privlearn.linalg import masks
from privlearn.linalg.kernels import dot, masked_sum, rotate_sum
from privlearn.linalg.packing import EncMatrix, Layout, padded_classes


def colmajor_abt(ev: Evaluator, a: EncMatrix, b: EncMatrix) -> EncMatrix:
    """Crockett's ColMajor: for each row k of B, replicate it down the block, multiply, sum
    each row of the product into column 0, mask it and move it to column k."""
    blk, c = a.block, b.shape[0]
    s0, s1 = blk.s0, blk.s1
    e0 = masks.columns(blk, 0, 1)
    acc: list = [None] * a.grid[0]
    for k in range(c):
        row_k = [rotate_sum(ev, ev.mul(bj, masks.rows(blk, k, k + 1)), s1, s0) for bj in b.blocks]
        for r in range(a.grid[0]):
            z = rotate_sum(ev, dot(ev, [a.at(r, j) for j in range(a.grid[1])], row_k), 1, s1)
            z = ev.rotate(ev.mul(z, e0), -k)
            acc[r] = z if acc[r] is None else ev.add(acc[r], z)
    return EncMatrix(tuple(acc), (a.shape[0], c), blk, Layout.PLAIN)


def rowmajor_atb(ev: Evaluator, a: EncMatrix, b: EncMatrix) -> EncMatrix:
    """Crockett's RowMajor: for each column k of A, move it to column 0 and replicate it across
    the row, multiply, sum the columns down the block, and keep row k."""
    blk, c = a.block, a.shape[1]
    s0, s1 = blk.s0, blk.s1
    acc: list = [[] for _ in range(b.grid[1])]
    for k in range(c):
        col_k = [
            rotate_sum(ev, ev.rotate(ev.mul(ar, masks.columns(blk, k, k + 1)), k), -1, s1)
            for ar in a.blocks
        ]
        for j in range(b.grid[1]):
            z = rotate_sum(ev, dot(ev, col_k, [b.at(r, j) for r in range(b.grid[0])]), s1, s0)
            acc[j].append(z)
    row_masks = [masks.rows(blk, k, k + 1) for k in range(c)]
    out = tuple(masked_sum(ev, zs, row_masks) for zs in acc)
    return EncMatrix(out, (c, b.shape[1]), blk, Layout.PLAIN)


def jin_abt(ev: Evaluator, a: EncMatrix, b: EncMatrix) -> EncMatrix:
    """Column k of A·Bᵀ = sum_j (column j of A) * B[k, j], B's entries each a ciphertext."""
    c, nb = b.shape
    out = tuple(dot(ev, a.blocks, b.blocks[k * nb : (k + 1) * nb]) for k in range(c))
    return EncMatrix(out, (a.shape[0], c), a.block, Layout.COLUMNS)


def jin_atb(ev: Evaluator, a: EncMatrix, b: EncMatrix) -> EncMatrix:
    """Entry (k, j) of Aᵀ·B = the slot sum of (column k of A) * (column j of B), replicated."""
    n = a.block.slots
    out = tuple(rotate_sum(ev, ev.mul(ak, bj), 1, n) for ak in a.blocks for bj in b.blocks)
    return EncMatrix(out, (a.shape[1], b.shape[1]), a.block, Layout.REPLICATED)


def halevi_shoup_abt(ev: Evaluator, a: EncMatrix, b: EncMatrix) -> EncMatrix:
    """y = sum_k diag_k * Rot(x, k), then a fold over the c'-strided partial sums, for every
    row x of A at once (rows sit in segments of 2·b' slots)."""
    blk, c = a.block, b.shape[0]
    cp, width = padded_classes(c), a.block.s1 // 2
    out = []
    for x in a.blocks:
        y = dot(ev, [x] + [ev.rotate(x, k) for k in range(1, cp)], b.blocks)
        out.append(rotate_sum(ev, y, cp, width // cp))
    return EncMatrix(tuple(out), (a.shape[0], c), blk, Layout.PLAIN)
