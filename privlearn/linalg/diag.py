"""HETAL's diagonal matrix products, as the paper describes them and with fewer key switches.

``A·Bᵀ`` (A: a x b plain blocks, B: c x b row-tiled) gives a x c column-tiled; ``Aᵀ·B``
(A: a x c column-tiled, B: a x b plain blocks) gives c x b row-tiled, so in training the
gradient has the layout of the weights and the logits the layout the gradient step needs.
Both compute c' "diagonals" (row i of A against row i + k of the tiled operand) and carry two
diagonals per complex slot (complexification), halving the ciphertext multiplications.

``hetal_*``: the paper's algorithms (RotLeft, PRotUp, masks after the sums, no hoisting). Its
implementation is closed (inside CryptoLab's HEaaN SDK), so they are re-derived from the
paper's description and its published op counts, which they reproduce exactly at HETAL's
benchmark shapes.
``ours_*``: the same products with fewer key switches: hoisted power-of-two rotations, masks
moved in front of the rotate-and-sum trees so one tree serves all diagonals, and for Aᵀ·B two
output block columns per complex ciphertext. Inputs are assumed validated (see ``matmul``).
"""

from __future__ import annotations

import numpy as np

from privlearn.he import Ciphertext, Evaluator
from privlearn.linalg import masks
from privlearn.linalg.kernels import (
    dot,
    masked_sum,
    rotate_sum,
    shifted_family,
    times_i,
    tree_sum,
)
from privlearn.linalg.packing import BlockShape, EncMatrix, Layout, padded_classes


def _complexified_b(ev: Evaluator, bj: Ciphertext, s1: int, h: int) -> Ciphertext:
    """Row-tiled ``B + i·(B moved up h rows)``: diagonals k and k + h in one ciphertext."""
    return ev.add(bj, times_i(ev, ev.rotate(bj, h * s1)))


def _conj_sum(ev: Evaluator, w: Ciphertext) -> Ciphertext:
    return ev.add(w, ev.conjugate(w))


def hetal_abt(ev: Evaluator, a: EncMatrix, b: EncMatrix) -> EncMatrix:
    """HETAL's DiagABT: per complex diagonal, a row sum, a column-0 mask, a row replication
    and a diagonal mask; B's row shifts rotated one by one."""
    blk, c = a.block, b.shape[0]
    s1, cp = blk.s1, padded_classes(c)
    h = cp // 2
    bt = []
    for bj in b.blocks:
        b0 = _complexified_b(ev, bj, s1, h)
        bt.append([b0] + [ev.rotate(b0, k * s1) for k in range(1, h)])
    e0 = masks.columns(blk, 0, 1)
    out = []
    for r in range(a.grid[0]):
        acc = None
        for k in range(h):
            z = dot(ev, [a.at(r, j) for j in range(a.grid[1])], [bj[k] for bj in bt])
            z = ev.mul(rotate_sum(ev, z, 1, s1), e0)
            z = ev.mul(rotate_sum(ev, z, -1, s1), masks.abt_diagonal(blk, cp, k), rescale=False)
            acc = z if acc is None else ev.add(acc, z)
        out.append(_conj_sum(ev, ev.rescale(acc)))
    return EncMatrix(tuple(out), (a.shape[0], c), blk, Layout.COL_TILED)


def ours_abt(ev: Evaluator, a: EncMatrix, b: EncMatrix) -> EncMatrix:
    """DiagABT with hoisted power-of-two shifts of B, and one mask level that both picks each
    row sum out of column 0 and routes it to its column: a binary tree then moves all c'
    columns at once (c' - 1 rotations instead of c'/2 row replications)."""
    blk, c = a.block, b.shape[0]
    s1, cp = blk.s1, padded_classes(c)
    h = cp // 2
    bt = [shifted_family(ev, _complexified_b(ev, bj, s1, h), s1, h) for bj in b.blocks]
    place = [[masks.abt_placement(blk, cp, k, rho) for k in range(h)] for rho in range(cp)]
    out = []
    for r in range(a.grid[0]):
        sums = [
            rotate_sum(
                ev, dot(ev, [a.at(r, j) for j in range(a.grid[1])], [bj[k] for bj in bt]), 1, s1
            )
            for k in range(h)
        ]
        routed = tree_sum(ev, [masked_sum(ev, sums, place[rho]) for rho in range(cp)], -1)
        out.append(_conj_sum(ev, rotate_sum(ev, routed, -cp, s1 // cp)))
    return EncMatrix(tuple(out), (a.shape[0], c), blk, Layout.COL_TILED)


def _rot_left(ev: Evaluator, x: Ciphertext, k: int, blk: BlockShape) -> Ciphertext:
    """HETAL's RotLeft: every row of the block rotated left by k (1 CMult, 2 rotations)."""
    keep = ev.mul(x, masks.columns(blk, k, blk.s1))
    return ev.add(ev.rotate(keep, k), ev.rotate(ev.sub(x, keep), k - blk.s1))


def _prot_up(ev: Evaluator, x: Ciphertext, k: int, blk: BlockShape) -> Ciphertext:
    """HETAL's PRotUp: the last k columns of every row taken from the row below."""
    stay = ev.mul(x, masks.columns(blk, 0, blk.s1 - k))
    return ev.add(stay, ev.rotate(ev.sub(x, stay), blk.s1))


def hetal_atb(ev: Evaluator, a: EncMatrix, b: EncMatrix, *, prot_up: bool) -> EncMatrix:
    """HETAL's DiagATB: RotLeft shifts of the complexified A, a column sum and a mask per
    complex diagonal. With ``prot_up`` (the paper's choice when A has fewer levels than
    B), A is shifted by plain rotations and B fixed up by PRotUp, sparing A one level."""
    blk, c = a.block, a.shape[1]
    s0, s1, cp = blk.s0, blk.s1, padded_classes(c)
    h = cp // 2
    at = []
    for ar in a.blocks:
        a0 = ev.add(ar, times_i(ev, _rot_left(ev, ar, h, blk)))
        at.append(
            [a0] + [ev.rotate(a0, k) if prot_up else _rot_left(ev, a0, k, blk) for k in range(1, h)]
        )
    out = []
    for j in range(b.grid[1]):
        acc = None
        for k in range(h):
            bs = [
                b.at(r, j) if k == 0 or not prot_up else _prot_up(ev, b.at(r, j), k, blk)
                for r in range(b.grid[0])
            ]
            z = rotate_sum(ev, dot(ev, [ar[k] for ar in at], bs), s1, s0)
            z = ev.mul(z, masks.atb_selection(blk, cp, k, complex_pair=True), rescale=False)
            acc = z if acc is None else ev.add(acc, z)
        out.append(_conj_sum(ev, ev.rescale(acc)))
    return EncMatrix(tuple(out), (c, b.shape[1]), blk, Layout.ROW_TILED)


def ours_atb(ev: Evaluator, a: EncMatrix, b: EncMatrix, *, split: int) -> EncMatrix:
    """DiagATB with two output block columns per ciphertext and one shared column-sum tree.

    B's block columns are paired as ``B[2p] + i·B[2p+1]`` (one level of B), so each product
    of a real shift of A fills both the real and the imaginary part; the odd last block column
    falls back to HETAL's complexified A. Row shifts of A use hoisted power-of-two rotations.
    The selection masks act before the column sum: after ``log2(split)`` doublings per
    diagonal, c'/split masked groups are merged by a binary tree and summed once, so
    ``split = 1`` gives the fewest key switches and ``split = c'`` the fewest masks. The
    result is ROW_TILED_PAIRED: the real and imaginary parts of block p are block columns
    2p and 2p+1 of Aᵀ·B.
    """
    blk, c = a.block, a.shape[1]
    s1, cp = blk.s1, padded_classes(c)
    h = cp // 2
    npairs, odd = divmod(b.grid[1], 2)
    left = [masks.columns(blk, 0, s1 - k) for k in range(cp)]
    right = [masks.columns(blk, s1 - k, s1) for k in range(cp)]
    real, imag = [], []
    for ar in a.blocks:
        rk = shifted_family(ev, ar, 1, cp)
        # tiled rows repeat every c' columns, so the last k columns of RotLeft(A, k) are
        # Rot(A, k) moved right by c'
        dk = [None] + [ev.rotate(rk[k], -cp) for k in range(1, cp)]

        def rot_left(k: int, w: complex = 1, rk=rk, dk=dk) -> Ciphertext:
            return masked_sum(ev, [rk[k], dk[k]], [w * left[k], w * right[k]])

        real.append([ar] + [rot_left(k) for k in range(1, cp if npairs else h)])
        if odd:
            imag.append([rot_left(k + h, 1j) for k in range(h)])
    out = []
    rows = range(b.grid[0])
    for p in range(npairs):
        xs = [ev.add(b.at(r, 2 * p), times_i(ev, b.at(r, 2 * p + 1))) for r in rows]
        zs = [dot(ev, [re[k] for re in real], xs) for k in range(cp)]
        out.append(_select_and_sum(ev, zs, blk, cp, split, complex_pair=False))
    if odd:
        zs = [
            dot(
                ev,
                [ev.add(real[r][k], imag[r][k]) for r in rows],
                [b.at(r, b.grid[1] - 1) for r in rows],
            )
            for k in range(h)
        ]
        out.append(_conj_sum(ev, _select_and_sum(ev, zs, blk, cp, split, complex_pair=True)))
    return EncMatrix(tuple(out), (c, b.shape[1]), blk, Layout.ROW_TILED_PAIRED)


def _select_and_sum(
    ev: Evaluator, zs: list[Ciphertext], blk: BlockShape, cp: int, split: int, *, complex_pair: bool
) -> Ciphertext:
    """``sum_k M_k * colsum(zs[k])`` with the masks moved inside the sum (see ours_atb)."""
    s0, s1 = blk.s0, blk.s1
    sel = [masks.atb_selection(blk, cp, k, complex_pair=complex_pair) for k in range(len(zs))]
    parts = [rotate_sum(ev, z, s1, split) for z in zs]
    groups = [
        masked_sum(ev, parts, [np.roll(m, u * split * s1) for m in sel]) for u in range(cp // split)
    ]
    return rotate_sum(ev, tree_sum(ev, groups, split * s1), cp * s1, s0 // cp)
