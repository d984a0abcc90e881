"""Every encrypted matrix product behind one interface, with checks before any work.

An :class:`Algorithm` knows its operand layouts, its kernel and its closed-form cost, so a
caller (the benchmark, the training loop) can encrypt operands for it, ask the client for
exactly the rotation keys it needs (:func:`rotation_keys`), and run it. Calling an algorithm
first checks shapes, parameters, levels and keys, and raises a specific error before a single
homomorphic operation if anything is wrong.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from privlearn.he import (
    ClientContext,
    Evaluator,
    LevelError,
    MissingKeyError,
    ParameterMismatchError,
)
from privlearn.linalg import baselines, cost, diag
from privlearn.linalg.cost import Cost, Dims
from privlearn.linalg.packing import BlockShape, EncMatrix, Layout, check_fits

Product = Literal["abt", "atb"]


@dataclass(frozen=True)
class Algorithm:
    """One way to compute A·Bᵀ ("abt") or Aᵀ·B ("atb") on encrypted operands."""

    name: str
    product: Product
    summary: str
    layouts: tuple[Layout, Layout]
    kernel: Callable[[Evaluator, EncMatrix, EncMatrix], EncMatrix]
    cost_model: Callable[[Dims, BlockShape], Cost]
    # Layouts that ignore the caller's block shape pick their own from the shape and slots.
    own_block: Callable[[Dims, int], BlockShape] | None = None

    def block_for(self, d: Dims, block: BlockShape) -> BlockShape:
        return self.own_block(d, block.slots) if self.own_block else block

    def cost(self, d: Dims, block: BlockShape) -> Cost:
        """Closed-form cost at shape ``d`` with the caller's block shape ``block``."""
        return self.cost_model(d, self.block_for(d, block))

    def operand_shapes(self, d: Dims) -> tuple[tuple[int, int], tuple[int, int]]:
        if self.product == "abt":
            return (d.a, d.b), (d.c, d.b)
        return (d.a, d.c), (d.a, d.b)

    def encrypt_operands(
        self,
        client: ClientContext,
        a: np.ndarray,
        b: np.ndarray,
        block: BlockShape,
        *,
        level: int | None = None,
    ) -> tuple[EncMatrix, EncMatrix]:
        """The client's side: A and B packed in this algorithm's layouts and encrypted."""
        d = dims_of(self.product, np.shape(a), np.shape(b))
        blk = self.block_for(d, block)
        return (
            EncMatrix.encrypt(client, a, blk, self.layouts[0], level=level),
            EncMatrix.encrypt(client, b, blk, self.layouts[1], level=level),
        )

    def __call__(self, ev: Evaluator, a: EncMatrix, b: EncMatrix) -> EncMatrix:
        self.check(ev, a, b)
        return self.kernel(ev, a, b)

    def check(self, ev: Evaluator, a: EncMatrix, b: EncMatrix) -> Cost:
        """Everything that can be known wrong before computing; returns the predicted cost."""
        for name, m, layout in (("A", a, self.layouts[0]), ("B", b, self.layouts[1])):
            if m.layout is not layout:
                raise ValueError(
                    f"{self.name}: {name} is packed {m.layout.value}, expected "
                    f"{layout.value} (use Algorithm.encrypt_operands)"
                )
            ct = m.blocks[0]
            if any(x.params_fp != ct.params_fp or x.backend != ct.backend for x in m.blocks):
                raise ParameterMismatchError(
                    f"{self.name}: the ciphertexts of {name} come from different parameter sets"
                )
            if ct.params_fp != ev.params.fingerprint() or ct.backend != ev.backend_name:
                raise ParameterMismatchError(
                    f"{self.name}: {name} was encrypted under {ct.backend} parameters "
                    f"{ct.params_fp}, the evaluator uses {ev.backend_name} "
                    f"{ev.params.fingerprint()} ({ev.params.name})"
                )
        d = dims_of(self.product, a.shape, b.shape)
        blk = self.block_for(d, a.block)
        if a.block != blk or b.block != blk:
            raise ValueError(
                f"{self.name}: blocks {a.block} and {b.block} differ from the "
                f"{blk} this shape needs"
            )
        for shape, layout in zip(self.operand_shapes(d), self.layouts, strict=True):
            check_fits(shape, blk, layout)
        c = self.cost_model(d, blk)
        if c.out_level(a.level, b.level) < 0:
            raise LevelError(
                f"{self.name} consumes {c.lag[0]} level(s) of A and {c.lag[1]} of B; A has "
                f"{a.level} and B {b.level} left. Encrypt at a higher level, bootstrap, or "
                f"refresh on the client"
            )
        missing = c.rotation_keys - ev.rotation_keys
        if missing:
            raise MissingKeyError(
                f"{self.name} at {d} needs rotation keys {sorted(missing)} that the bundle "
                f"lacks; build it with rotation_keys(...) (see privlearn.linalg)"
            )
        if c.conjugate and not ev.has_conjugation_key:
            raise MissingKeyError(
                f"{self.name} needs the conjugation key; request conjugation=True"
            )
        return c


def dims_of(product: Product, shape_a, shape_b) -> Dims:
    """HETAL's (a, b, c) from the operand shapes; raises if the inner dimensions differ."""
    (ra, ca), (rb, cb) = shape_a, shape_b
    if product == "abt":
        if ca != cb:
            raise ValueError(
                f"A·Bᵀ needs A and B with the same number of columns; got "
                f"A {ra}x{ca} and B {rb}x{cb}"
            )
        return Dims(ra, ca, rb)
    if ra != rb:
        raise ValueError(
            f"Aᵀ·B needs A and B with the same number of rows; got A {ra}x{ca} and B {rb}x{cb}"
        )
    return Dims(ra, cb, ca)


_ALGORITHMS = [
    Algorithm(
        "diag_abt/hetal",
        "abt",
        "HETAL DiagABT as published (paper-faithful counts)",
        (Layout.PLAIN, Layout.ROW_TILED),
        diag.hetal_abt,
        cost.hetal_abt,
    ),
    Algorithm(
        "diag_abt/ours",
        "abt",
        "DiagABT, hoisted power-of-two shifts, one mask level",
        (Layout.PLAIN, Layout.ROW_TILED),
        diag.ours_abt,
        cost.ours_abt,
    ),
    Algorithm(
        "diag_atb/hetal",
        "atb",
        "HETAL DiagATB with RotLeft (level A >= level B)",
        (Layout.COL_TILED, Layout.PLAIN),
        partial(diag.hetal_atb, prot_up=False),
        partial(cost.hetal_atb, prot_up=False),
    ),
    Algorithm(
        "diag_atb/hetal-protup",
        "atb",
        "HETAL DiagATB with PRotUp (level A < level B)",
        (Layout.COL_TILED, Layout.PLAIN),
        partial(diag.hetal_atb, prot_up=True),
        partial(cost.hetal_atb, prot_up=True),
    ),
    Algorithm(
        "diag_atb/ours",
        "atb",
        "DiagATB, paired output blocks, one shared sum tree (fewest key switches)",
        (Layout.COL_TILED, Layout.PLAIN),
        partial(diag.ours_atb, split=1),
        partial(cost.ours_atb, split=1),
    ),
    Algorithm(
        "diag_atb/ours-balanced",
        "atb",
        "DiagATB ours, splitting the sum tree to trade rotations for fewer masks",
        (Layout.COL_TILED, Layout.PLAIN),
        lambda ev, a, b: diag.ours_atb(
            ev, a, b, split=cost.balanced_split(dims_of("atb", a.shape, b.shape), a.block)
        ),
        lambda d, blk: cost.ours_atb(d, blk, split=cost.balanced_split(d, blk)),
    ),
    Algorithm(
        "colmajor",
        "abt",
        "Crockett ColMajor (A·Bᵀ)",
        (Layout.PLAIN, Layout.ROW_TILED),
        baselines.colmajor_abt,
        cost.colmajor_abt,
    ),
    Algorithm(
        "rowmajor",
        "atb",
        "Crockett RowMajor (Aᵀ·B)",
        (Layout.COL_TILED, Layout.PLAIN),
        baselines.rowmajor_atb,
        cost.rowmajor_atb,
    ),
    Algorithm(
        "jin_abt",
        "abt",
        "Jin et al. column packing (A·Bᵀ)",
        (Layout.COLUMNS, Layout.REPLICATED),
        baselines.jin_abt,
        cost.jin_abt,
        own_block=lambda d, n: BlockShape(1, n),
    ),
    Algorithm(
        "jin_atb",
        "atb",
        "Jin et al. column packing (Aᵀ·B)",
        (Layout.COLUMNS, Layout.COLUMNS),
        baselines.jin_atb,
        cost.jin_atb,
        own_block=lambda d, n: BlockShape(1, n),
    ),
    Algorithm(
        "halevi_shoup",
        "abt",
        "Halevi-Shoup diagonal matrix x vector, per row of A",
        (Layout.DUPLICATED_ROWS, Layout.DIAGONALS),
        baselines.halevi_shoup_abt,
        cost.halevi_shoup_abt,
        own_block=cost.halevi_shoup_block,
    ),
]
ALGORITHMS: dict[str, Algorithm] = {alg.name: alg for alg in _ALGORITHMS}


def get(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(
            f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}"
        ) from None


def rotation_keys(
    names: str | list[str],
    d: Dims,
    block: BlockShape,
) -> tuple[frozenset[int], bool]:
    """The rotation offsets (mod slots) and whether the conjugation key is needed to run the
    named algorithms at shape ``d``: pass them to ``ClientContext.public_bundle``."""
    names = [names] if isinstance(names, str) else names
    costs = [get(n).cost(d, block) for n in names]
    return (frozenset().union(*(c.rotation_keys for c in costs)), any(c.conjugate for c in costs))


def keyed_evaluator(
    client: ClientContext, names: str | list[str], d: Dims, block: BlockShape
) -> Evaluator:
    """A server holding exactly the keys the named algorithms need at shape ``d``. The bundle
    goes through a directory: as bytes, OpenFHE's keys (~100 MB each at N=2^16) would be
    copied several times."""
    keys, conj = rotation_keys(names, d, block)
    with tempfile.TemporaryDirectory(prefix="privlearn-keys-") as tmp:
        path = client.public_bundle(sorted(keys), conjugation=conj, path=Path(tmp) / "bundle")
        return Evaluator.from_bundle(path, insecure_for_testing=not client.params.secure)


def diag_abt(
    ev: Evaluator,
    a: EncMatrix,
    b: EncMatrix,
    *,
    variant: str = "ours",
) -> EncMatrix:
    """A·Bᵀ for A (a x b, PLAIN) and B (c x b, ROW_TILED); result a x c, COL_TILED.
    ``variant``: "ours" (fewer key switches, one level less) or "hetal" (as published)."""
    return get(f"diag_abt/{variant}")(ev, a, b)


def diag_atb(
    ev: Evaluator,
    a: EncMatrix,
    b: EncMatrix,
    *,
    variant: str = "ours",
) -> EncMatrix:
    """Aᵀ·B for A (a x c, COL_TILED) and B (a x b, PLAIN); result c x b, ROW_TILED
    ("hetal", choosing RotLeft or PRotUp by the operands' levels as the paper does) or
    ROW_TILED_PAIRED ("ours")."""
    if variant == "hetal" and a.level < b.level:
        variant = "hetal-protup"
    return get(f"diag_atb/{variant}")(ev, a, b)
