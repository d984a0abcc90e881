"""Closed-form cost of every matrix product: op counts, rotation keys and levels.

Formulas in the shape ``(a, b, c)`` (HETAL's notation: A·Bᵀ with A a x b and B c x b, Aᵀ·B
with A a x c and B a x b) and the block shape ``s0 x s1``; no algorithm is run. They equal
what an Evaluator's CostCounter records when the algorithm runs (tests/linalg check this at
many shapes), so they can predict time, key memory and levels before anything is encrypted.

Notation: ``R = ceil(a/s0)`` block rows, ``J = ceil(b/s1)`` block columns, ``c'`` = c rounded
up to a power of two (>= 2), ``h = c'/2`` complex diagonals, ``lg = log2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from privlearn.he import Counts
from privlearn.linalg.kernels import log2
from privlearn.linalg.packing import BlockShape, next_pow2, padded_classes

# Count fields, named as the CostCounter's ops.
OPS = ("cmult", "mult", "smult", "rotate", "hoisted_rotate", "decompose", "conjugate", "rescale")


@dataclass(frozen=True)
class Dims:
    """HETAL's (a, b, c): A·Bᵀ is (a x b)(c x b)ᵀ and Aᵀ·B is (a x c)ᵀ(a x b)."""

    a: int
    b: int
    c: int

    def __post_init__(self) -> None:
        if min(self.a, self.b, self.c) < 1:
            raise ValueError(f"matrix sides must be positive, got {self}")

    def __str__(self) -> str:
        return f"({self.a},{self.b},{self.c})"


# HETAL's benchmark shapes; b = 768 features + a bias column.
HETAL_SHAPES = (
    Dims(128, 128, 4),
    Dims(256, 256, 8),
    Dims(512, 769, 4),
    Dims(1024, 769, 8),
    Dims(2048, 769, 16),
)


@dataclass(frozen=True)
class Cost:
    """Op counts of one product, the rotation keys it needs, and its level bookkeeping:
    the output has ``min(level_A - lag[0], level_B - lag[1])`` levels left."""

    cmult: int = 0
    mult: int = 0
    smult: int = 0  # complex-scalar products: multiplication by i (free in HEaaN, not here)
    rotate: int = 0
    hoisted_rotate: int = 0
    decompose: int = 0
    conjugate: int = 0
    rescale: int = 0
    rotation_keys: frozenset[int] = field(default_factory=frozenset)
    lag: tuple[int, int] = (0, 0)

    @property
    def rotations(self) -> int:
        """Rotations of any kind: the paper's "Rot"."""
        return self.rotate + self.hoisted_rotate

    @property
    def key_switches(self) -> int:
        """Relinearisations, rotations and conjugations: each is one key switch."""
        return self.mult + self.rotations + self.conjugate

    @property
    def depth(self) -> int:
        """Levels consumed when both operands enter at the same level."""
        return max(self.lag)

    def out_level(self, level_a: int, level_b: int) -> int:
        return min(level_a - self.lag[0], level_b - self.lag[1])

    def counts(self) -> dict[str, int]:
        """The counts in the CostCounter's terms, for comparison with a measured run."""
        d = {op: getattr(self, op) for op in OPS}
        d["rotations"], d["key_switches"] = self.rotations, self.key_switches
        return d

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            **{
                f.name: getattr(self, f.name) + getattr(other, f.name)
                for f in fields(self)
                if f.name in OPS
            },
            rotation_keys=self.rotation_keys | other.rotation_keys,
            lag=(max(self.lag[0], other.lag[0]), max(self.lag[1], other.lag[1])),
        )


def measured(counts: Counts) -> dict[str, int]:
    """A CostCounter measurement restricted to the fields a :class:`Cost` predicts."""
    d = {op: counts[op] for op in OPS}
    d["rotations"], d["key_switches"] = counts.rotations, counts.key_switches
    return d


def _keys(slots: int, offsets) -> frozenset[int]:
    return frozenset(k % slots for k in offsets) - {0}


def _pow2_upto(limit: int) -> list[int]:
    """Powers of two strictly below ``limit``."""
    return [1 << e for e in range(max(limit, 1).bit_length()) if 1 << e < limit]


def _family(count: int) -> Cost:
    """kernels.shifted_family: count - 1 rotations; source 0 has lg(count) children, the
    2^(q-1-e) sources whose lowest bit is 2^e have e children each, and a source with two or
    more children shares one decomposition."""
    q = log2(count)
    if q < 2:
        return Cost(rotate=count - 1)
    sources = [(q, 1)] + [(e, 1 << (q - 1 - e)) for e in range(1, q)]  # (children, how many)
    return Cost(
        rotate=sum(n for e, n in sources if e == 1),
        decompose=sum(n for e, n in sources if e >= 2),
        hoisted_rotate=sum(e * n for e, n in sources if e >= 2),
    )


def _geometry(d: Dims, blk: BlockShape) -> tuple[int, int, int, int]:
    """R, J, c', h: the big operand (a x b) has R x J blocks."""
    cp = padded_classes(d.c)
    if cp > min(blk.s0, blk.s1):
        raise ValueError(
            f"c = {d.c} pads to {cp}, more than a side of the {blk} block: the "
            f"small operand and the product are tiled inside one block; use "
            f"hetal_block_shape or a block with s0, s1 >= {cp}"
        )
    return math.ceil(d.a / blk.s0), math.ceil(d.b / blk.s1), cp, cp // 2


def hetal_abt(d: Dims, blk: BlockShape) -> Cost:
    R, J, cp, h = _geometry(d, blk)
    s1, lg1 = blk.s1, log2(blk.s1)
    return Cost(
        cmult=2 * h * R,
        mult=h * R * J,
        smult=J,
        rotate=h * J + 2 * h * R * lg1,
        conjugate=R,
        rescale=J + R * (2 * h + 1),
        rotation_keys=_keys(
            blk.slots,
            [k * s1 for k in range(1, h + 1)] + [x for p in _pow2_upto(s1) for x in (p, -p)],
        ),
        lag=(3, 4),
    )


def ours_abt(d: Dims, blk: BlockShape) -> Cost:
    R, J, cp, h = _geometry(d, blk)
    s1, lg1 = blk.s1, log2(blk.s1)
    fam = _family(h)
    return Cost(
        cmult=R * cp * h,
        mult=h * R * J,
        smult=J,
        rotate=J * (1 + fam.rotate) + R * (h * lg1 + cp - 1 + log2(s1 // cp)),
        hoisted_rotate=J * fam.hoisted_rotate,
        decompose=J * fam.decompose,
        conjugate=R,
        rescale=J + R * (h + cp),
        rotation_keys=_keys(
            blk.slots,
            [p * s1 for p in _pow2_upto(2 * h)] + [x for p in _pow2_upto(s1) for x in (p, -p)],
        ),
        lag=(2, 3),
    )


def hetal_atb(d: Dims, blk: BlockShape, *, prot_up: bool) -> Cost:
    R, J, cp, h = _geometry(d, blk)
    s0, s1, lg0 = blk.s0, blk.s1, log2(blk.s0)
    colsum = [p * s1 for p in _pow2_upto(s0)]
    common = dict(mult=h * R * J, smult=R, conjugate=J)
    if not prot_up:
        return Cost(
            cmult=R * h + J * h,
            rotate=2 * R * h + J * h * lg0,
            rescale=R * (h + 1) + J * (h + 1),
            rotation_keys=_keys(
                blk.slots, [x for k in range(1, h + 1) for x in (k, k - s1)] + colsum
            ),
            lag=(5 if h > 1 else 4, 2),
            **common,
        )
    return Cost(
        cmult=R + R * J * (h - 1) + J * h,
        rotate=R * (h + 1) + R * J * (h - 1) + J * h * lg0,
        rescale=2 * R + R * J * (h - 1) + J * (h + 1),
        rotation_keys=_keys(blk.slots, [h, h - s1, s1] + list(range(1, h)) + colsum),
        lag=(4, 3 if h > 1 else 2),
        **common,
    )


def ours_atb(d: Dims, blk: BlockShape, *, split: int) -> Cost:
    R, J, cp, h = _geometry(d, blk)
    s0, s1 = blk.s0, blk.s1
    pairs, odd = divmod(J, 2)
    groups = cp // split
    fam = _family(cp)
    shifts = cp if pairs else h  # real shifts RotLeft(A, k) built for k < shifts

    def select(terms: int) -> Cost:  # diag._select_and_sum over `terms` diagonals
        return Cost(
            rotate=terms * log2(split) + groups - 1 + log2(s0 // cp),
            cmult=terms * groups,
            rescale=groups,
        )

    per_pair = Cost(smult=R, mult=cp * R, rescale=R + cp) + select(cp)
    per_odd = Cost(mult=h * R, rescale=h, conjugate=1) + select(h)
    a_side = Cost(
        rotate=fam.rotate + cp - 1,
        hoisted_rotate=fam.hoisted_rotate,
        decompose=fam.decompose,
        cmult=2 * (shifts - 1) + 2 * h * odd,
        rescale=shifts - 1 + h * odd,
    )
    total = _times(a_side, R) + _times(per_pair, pairs) + _times(per_odd, odd)
    keys = _keys(blk.slots, _pow2_upto(cp) + [-cp] + [p * s1 for p in _pow2_upto(s0)])
    return Cost(
        **{op: getattr(total, op) for op in OPS}, rotation_keys=keys, lag=(3, 3 if pairs else 2)
    )


# Time of a CMult over a rotation on OpenFHE at N=2^16: 0.25 at level 5 to 0.4 at level 24 in
# `privlearn bench matmul`'s time model, because the Evaluator encodes every mask afresh.
CMULT_PER_KEY_SWITCH = 0.4


def balanced_split(d: Dims, blk: BlockShape) -> int:
    """The ours_atb split minimising key switches + CMULT_PER_KEY_SWITCH x CMults."""
    cp = padded_classes(d.c)
    return min(
        _pow2_upto(2 * cp),
        key=lambda g: (
            (c := ours_atb(d, blk, split=g)).key_switches + CMULT_PER_KEY_SWITCH * c.cmult
        ),
    )


def _times(c: Cost, n: int) -> Cost:
    return Cost(**{op: n * getattr(c, op) for op in OPS})


def colmajor_abt(d: Dims, blk: BlockShape) -> Cost:
    R, J, _, _ = _geometry(d, blk)
    s0, s1, c = blk.s0, blk.s1, d.c
    return Cost(
        cmult=c * (J + R),
        mult=c * R * J,
        rotate=c * J * log2(s0) + c * R * log2(s1) + R * (c - 1),
        rescale=c * (J + 2 * R),
        rotation_keys=_keys(
            blk.slots, [p * s1 for p in _pow2_upto(s0)] + _pow2_upto(s1) + [-k for k in range(1, c)]
        ),
        lag=(2, 3),
    )


def rowmajor_atb(d: Dims, blk: BlockShape) -> Cost:
    R, J, _, _ = _geometry(d, blk)
    s0, s1, c = blk.s0, blk.s1, d.c
    return Cost(
        cmult=c * (R + J),
        mult=c * R * J,
        rotate=R * (c - 1) + c * R * log2(s1) + c * J * log2(s0),
        rescale=c * R + c * J + J,
        rotation_keys=_keys(
            blk.slots,
            list(range(1, c)) + [-p for p in _pow2_upto(s1)] + [p * s1 for p in _pow2_upto(s0)],
        ),
        lag=(3, 2),
    )


def _jin_fits(d: Dims, n: int) -> None:
    if d.a > n:
        raise ValueError(f"Jin et al. put a column of {d.a} rows in one ciphertext of {n} slots")


def jin_abt(d: Dims, blk: BlockShape) -> Cost:
    _jin_fits(d, blk.slots)
    return Cost(mult=d.b * d.c, rescale=d.c, lag=(1, 1))


def jin_atb(d: Dims, blk: BlockShape) -> Cost:
    n = blk.slots
    _jin_fits(d, n)
    return Cost(
        mult=d.b * d.c,
        rotate=d.b * d.c * log2(n),
        rescale=d.b * d.c,
        rotation_keys=_keys(n, _pow2_upto(n)),
        lag=(1, 1),
    )


def halevi_shoup_abt(d: Dims, blk: BlockShape) -> Cost:
    """``blk`` is the segment geometry: ``s1 = 2b'`` slots per row of A, ``s0`` rows per
    ciphertext (see :func:`halevi_shoup_block`)."""
    cp, width = padded_classes(d.c), blk.s1 // 2
    cts = math.ceil(d.a / blk.s0)
    return Cost(
        mult=cts * cp,
        rotate=cts * (cp - 1 + log2(width // cp)),
        rescale=cts,
        rotation_keys=_keys(
            blk.slots, list(range(1, cp)) + [p for p in _pow2_upto(width) if p >= cp]
        ),
        lag=(1, 1),
    )


def halevi_shoup_block(d: Dims, slots: int) -> BlockShape:
    """Segments of 2b' slots, b' = b rounded up to a power of two (at least c')."""
    width = max(padded_classes(d.c), next_pow2(d.b))
    if 2 * width > slots:
        raise ValueError(
            f"Halevi-Shoup needs 2 x {width} slots per row of A; the ciphertext has {slots}"
        )
    return BlockShape(slots // (2 * width), 2 * width)
