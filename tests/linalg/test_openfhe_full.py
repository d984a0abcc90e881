"""Full size on real encryption (OpenFHE, n16-d24: N = 2^16, 2^15 slots, 128-bit): the
diagonal products at HETAL's smallest benchmark shape. Slow: rotation keys are ~100 MB each."""

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


@pytest.mark.parametrize("name", ["diag_abt/hetal", "diag_abt/ours", "diag_atb/hetal",
                                  "diag_atb/hetal-protup", "diag_atb/ours"])
def test_full_size_on_openfhe(client, name):
    d = HETAL_SHAPES[0]
    blk = hetal_block_shape(d.a, d.c, client.slots)
    alg = ALGORITHMS[name]
    model = alg.cost(d, blk)
    r = run(client, alg, d, blk, level=model.depth)
    assert measured(r.counts) == model.counts()
    assert r.out.level == 0
    assert max_error(r, client) < 1e-5
