"""Bad input is refused with a specific error before a single homomorphic operation."""

from __future__ import annotations

import numpy as np
import pytest

from privlearn.he import (
    ClientContext,
    Evaluator,
    LevelError,
    MissingKeyError,
    ParameterMismatchError,
)
from privlearn.linalg import (
    BlockShape,
    Dims,
    EncMatrix,
    Layout,
    diag_abt,
    diag_atb,
    keyed_evaluator,
)

BLOCK = BlockShape(32, 64)
D = Dims(40, 70, 3)


@pytest.fixture
def setup(toy_sim):
    rng = np.random.default_rng(0)
    x = EncMatrix.encrypt(toy_sim, rng.uniform(-1, 1, (D.a, D.b)), BLOCK)
    w = EncMatrix.encrypt(toy_sim, rng.uniform(-1, 1, (D.c, D.b)), BLOCK, Layout.ROW_TILED)
    ev = keyed_evaluator(toy_sim, "diag_abt/ours", D, BLOCK)
    return toy_sim, ev, x, w


def _no_work(ev, fn, err, match):
    with ev.cost.measure() as counts, pytest.raises(err, match=match):
        fn()
    assert counts.by_op == {}, f"ran {dict(counts.by_op)} before failing"


def test_mismatched_inner_dimensions(setup):
    client, ev, x, _ = setup
    w = EncMatrix.encrypt(client, np.ones((D.c, D.b + 1)), BLOCK, Layout.ROW_TILED)
    _no_work(ev, lambda: diag_abt(ev, x, w), ValueError, "same number of columns")
    p = EncMatrix.encrypt(client, np.ones((D.a + 1, D.c)), BLOCK, Layout.COL_TILED)
    _no_work(ev, lambda: diag_atb(ev, p, x), ValueError, "same number of rows")


def test_operands_under_different_parameters(setup):
    client, ev, x, w = setup
    other = ClientContext.create("toy-n12-boot", "simulator", seed=1, insecure_for_testing=True)
    w2 = EncMatrix.encrypt(other, np.ones((D.c, D.b)), BLOCK, Layout.ROW_TILED)
    _no_work(ev, lambda: diag_abt(ev, x, w2), ParameterMismatchError, "encrypted under")


def test_too_few_levels_left(setup):
    client, ev, x, _ = setup
    low = EncMatrix.encrypt(client, np.ones((D.c, D.b)), BLOCK, Layout.ROW_TILED, level=2)
    _no_work(ev, lambda: diag_abt(ev, x, low), LevelError, "consumes 2 level.* of A and 3 of B")


def test_missing_rotation_keys_and_wrong_layouts(setup):
    client, ev, x, w = setup
    bare = Evaluator.from_bundle(
        client.public_bundle([1, 2], conjugation=True), insecure_for_testing=True
    )
    _no_work(bare, lambda: diag_abt(bare, x, w), MissingKeyError, "needs rotation keys")
    _no_work(ev, lambda: diag_abt(ev, x, x), ValueError, "expected row_tiled")


def test_block_too_narrow_for_the_classes(toy_sim):
    blk = BlockShape(1024, 2)  # B's 3 rows tile down it, but the 3 product columns need 4
    x = EncMatrix.encrypt(toy_sim, np.ones((8, 8)), blk)
    w = EncMatrix.encrypt(toy_sim, np.ones((3, 8)), blk, Layout.ROW_TILED)
    ev = Evaluator.from_bundle(
        toy_sim.public_bundle([1], conjugation=True), insecure_for_testing=True
    )
    _no_work(ev, lambda: diag_abt(ev, x, w), ValueError, "more than a side")
