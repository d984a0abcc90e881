"""Full size on real encryption (OpenFHE, n16-d24: N = 2^16, 2^15 slots, 128-bit): the
diagonal products at HETAL's smallest benchmark shapes. Slow: rotation keys are ~100 MB each."""

from __future__ import annotations

import pytest

from privlearn.he import ClientContext
from privlearn.linalg import ALGORITHMS, hetal_block_shape
from privlearn.linalg.cost import HETAL_SHAPES, measured
from tests.linalg.conftest import max_error, run

pytestmark = [pytest.mark.slow, pytest.mark.openfhe]


@pytest.fixture(scope="module")
def client() -> ClientContext:
    return ClientContext.create("n16-d24", "openfhe")


@pytest.mark.parametrize(
    "name,i",
    [
        ("diag_abt/hetal", 0),
        ("diag_abt/ours", 0),
        ("diag_atb/hetal", 0),
        ("diag_atb/hetal-protup", 0),
        ("diag_atb/ours", 0),
        ("diag_atb/ours", 1),
    ],
)  # (256,256,8): two block columns, the paired path
def test_full_size_on_openfhe(client, name, i):
    d = HETAL_SHAPES[i]
    blk = hetal_block_shape(d.a, d.c, client.slots)
    alg = ALGORITHMS[name]
    model = alg.cost(d, blk)
    r = run(client, alg, d, blk, level=model.depth)
    assert measured(r.counts) == model.counts()
    assert r.out.level == 0
    assert max_error(r, client) < 1e-5
