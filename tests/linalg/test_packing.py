"""Packing layouts round-trip exactly; encryption round-trips on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privlearn.linalg import BlockShape, EncMatrix, Layout, hetal_block_shape, padded_classes
from privlearn.linalg.cost import HETAL_SHAPES
from privlearn.linalg.packing import ciphertext_count, pack, unpack
from tests.conftest import BACKENDS

N = 2048  # toy-n12 slots

OUTPUT_LAYOUTS = [
    Layout.PLAIN,
    Layout.ROW_TILED,
    Layout.COL_TILED,
    Layout.ROW_TILED_PAIRED,
    Layout.DUPLICATED_ROWS,
    Layout.COLUMNS,
    Layout.REPLICATED,
]


@st.composite
def packed_case(draw):
    layout = draw(st.sampled_from(OUTPUT_LAYOUTS))
    s0 = 1 << draw(st.integers(1, 10))
    block = BlockShape(s0, N // s0)
    small = st.integers(1, min(block.s0, block.s1))
    if layout in (Layout.ROW_TILED, Layout.ROW_TILED_PAIRED):
        shape = (draw(st.integers(1, block.s0)), draw(st.integers(1, 5 * block.s1)))
    elif layout is Layout.COL_TILED:
        shape = (draw(st.integers(1, 5 * block.s0)), draw(st.integers(1, block.s1)))
    elif layout is Layout.DUPLICATED_ROWS:
        shape = (draw(st.integers(1, 3 * block.s0)), draw(st.integers(1, max(1, block.s1 // 2))))
    elif layout is Layout.REPLICATED:
        shape = (draw(small.filter(lambda x: x <= 6)), draw(st.integers(1, 6)))
    elif layout is Layout.COLUMNS:
        shape = (draw(st.integers(1, N)), draw(st.integers(1, 5)))
    else:
        shape = (draw(st.integers(1, 3 * block.s0)), draw(st.integers(1, 3 * block.s1)))
    if layout in (Layout.ROW_TILED, Layout.ROW_TILED_PAIRED) and padded_classes(shape[0]) > s0:
        shape = (1, shape[1])
    if layout is Layout.COL_TILED and padded_classes(shape[1]) > block.s1:
        shape = (shape[0], 1)
    if layout is Layout.DUPLICATED_ROWS and block.s1 < 2:
        block = BlockShape(N // 2, 2)
    return layout, block, shape


@settings(max_examples=150, deadline=None)
@given(packed_case(), st.integers(0, 2**32 - 1))
def test_pack_then_unpack_is_the_identity(case, seed):
    layout, block, shape = case
    m = np.random.default_rng(seed).uniform(-1, 1, shape)
    vectors = pack(m, block, layout)
    assert all(v.shape == (block.slots,) for v in vectors)
    assert len(vectors) == ciphertext_count(shape, block, layout)
    np.testing.assert_array_equal(unpack(vectors, shape, block, layout), m)


def test_plain_blocks_are_row_major_and_zero_padded():
    m = np.arange(1, 13, dtype=float).reshape(3, 4)  # 3 x 4 in 2 x 4 blocks of 8 slots
    v = pack(m, BlockShape(2, 4), Layout.PLAIN)
    np.testing.assert_array_equal(v[0], [1, 2, 3, 4, 5, 6, 7, 8])
    np.testing.assert_array_equal(v[1], [9, 10, 11, 12, 0, 0, 0, 0])


def test_small_operand_is_tiled_down_and_across_the_block():
    w = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # c = 3 rows, padded to 4
    (rows,) = pack(w, BlockShape(8, 2), Layout.ROW_TILED)
    np.testing.assert_array_equal(
        rows.reshape(8, 2), np.tile([[1, 2], [3, 4], [5, 6], [0, 0]], (2, 1))
    )
    (cols,) = pack(w.T, BlockShape(2, 8), Layout.COL_TILED)
    np.testing.assert_array_equal(cols.reshape(2, 8), np.tile([[1, 3, 5, 0], [2, 4, 6, 0]], (1, 2)))


def test_paired_blocks_carry_two_block_columns_and_an_odd_one_real():
    w = np.arange(6.0).reshape(2, 3)  # three block columns of width 1
    v = pack(w, BlockShape(2, 1), Layout.ROW_TILED_PAIRED)
    assert len(v) == 2 and np.iscomplexobj(v[0]) and not np.iscomplexobj(v[1])
    np.testing.assert_array_equal(v[0], [0 + 1j, 3 + 4j])


@pytest.mark.parametrize("d", HETAL_SHAPES, ids=str)
def test_hetal_block_rule_at_the_benchmark_shapes(d):
    # HETAL's rule, batch = a: the public benchmark uses (a, slots / a) at every shape
    assert hetal_block_shape(d.a, d.c, 2**15) == BlockShape(d.a, 2**15 // d.a)


def test_hetal_block_rule_in_training_and_at_the_edges():
    assert hetal_block_shape(1024, 10, 2**15) == BlockShape(1024, 32)  # HETAL: batch 1024
    assert hetal_block_shape(1000, 3, 2**15) == BlockShape(1024, 32)  # batch rounded up
    assert hetal_block_shape(1, 7, 2**15) == BlockShape(8, 4096)  # at least c' rows
    assert hetal_block_shape(10**6, 16, 2**15) == BlockShape(2048, 16)  # at least c' columns
    with pytest.raises(ValueError, match="classes"):
        hetal_block_shape(64, 300, 2**15)


def test_bad_shapes_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="2-D"):
        pack(np.zeros(5), BlockShape(2, 4), Layout.PLAIN)
    with pytest.raises(ValueError, match="taller block"):
        pack(np.zeros((9, 2)), BlockShape(4, 512), Layout.ROW_TILED)
    with pytest.raises(ValueError, match="wider block"):
        pack(np.zeros((2, 9)), BlockShape(512, 4), Layout.COL_TILED)
    with pytest.raises(ValueError, match="powers of two"):
        BlockShape(3, 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "shape,layout",
    [
        ((1, 700), Layout.PLAIN),
        ((700, 1), Layout.PLAIN),
        ((37, 300), Layout.PLAIN),
        ((5, 300), Layout.ROW_TILED),
        ((300, 5), Layout.COL_TILED),
        ((3, 130), Layout.ROW_TILED_PAIRED),
    ],
    ids=str,
)
def test_encrypt_decrypt_round_trip(backend, shape, layout, request):
    client = request.getfixturevalue("toy_sim" if backend == "simulator" else "toy_openfhe")
    block = BlockShape(16, N // 16)
    m = np.random.default_rng(1).uniform(-1, 1, shape)
    enc = EncMatrix.encrypt(client, m, block, layout, level=3)
    assert len(enc.blocks) == len(pack(m, block, layout)) and enc.level == 3
    np.testing.assert_allclose(enc.decrypt(client), m, atol=1e-7)
