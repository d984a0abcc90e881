"""The paper-faithful algorithms count exactly HETAL's published table at its five shapes.

Published numbers: the corrected Table 7 shipped with HETAL's code (CryptoLabInc/HETAL,
src/benchmark/hetal_matmul_table_fixed.pdf, March 2024), as CMult / Mult / Rot, with HETAL's
benchmark block shape (a, 2^15 / a) and 2^15 slots.
"""

from __future__ import annotations

import pytest

from privlearn.linalg import ALGORITHMS, hetal_block_shape
from privlearn.linalg.cost import HETAL_SHAPES
from tests.linalg.conftest import max_error, run

PUBLISHED = {
    "diag_abt/hetal": [(4, 2, 34), (8, 8, 64), (4, 26, 50), (8, 100, 140), (16, 392, 456)],
    "diag_atb/hetal": [(4, 2, 18), (12, 8, 72), (28, 26, 238), (104, 100, 1008), (400, 392, 4328)],
    "diag_atb/hetal-protup": [
        (4, 2, 18),
        (15, 8, 75),
        (40, 26, 250),
        (176, 100, 1080),
        (736, 392, 4664),
    ],
    "colmajor": [(8, 4, 63), (24, 16, 191), (56, 52, 495), (208, 200, 2047), (800, 784, 8703)],
    "rowmajor": [(8, 4, 63), (24, 16, 191), (56, 52, 495), (208, 200, 2047), (800, 784, 8703)],
    "jin_abt": [(0, 512, 0), (0, 2048, 0), (0, 3076, 0), (0, 6152, 0), (0, 12304, 0)],
    "jin_atb": [
        (0, 512, 7680),
        (0, 2048, 30720),
        (0, 3076, 46140),
        (0, 6152, 92280),
        (0, 12304, 184560),
    ],
}
CASES = [(name, i) for name in PUBLISHED for i in range(5)]
SLOTS = 2**15


def _id(case):
    return f"{case[0]}-{HETAL_SHAPES[case[1]]}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_closed_form_model_reproduces_the_table(case):
    name, i = case
    d = HETAL_SHAPES[i]
    c = ALGORITHMS[name].cost(d, hetal_block_shape(d.a, d.c, SLOTS))
    assert (c.cmult, c.mult, c.rotations) == PUBLISHED[name][i]


# Executed at full size on the simulator. The paper's algorithms at all five shapes; the
# baselines where they run in seconds (Jin et al. hold one 2^15-slot ciphertext per entry of B,
# gigabytes on the simulator beyond the first shape), the rest under `-m slow`.
_FAST = {
    "diag_abt/hetal": 5,
    "diag_atb/hetal": 5,
    "diag_atb/hetal-protup": 5,
    "colmajor": 3,
    "rowmajor": 3,
    "jin_abt": 1,
    "jin_atb": 0,
}
EXECUTED = [
    pytest.param(c, id=_id(c), marks=[] if c[1] < _FAST[c[0]] else [pytest.mark.slow])
    for c in CASES
    if c[1] < (1 if c[0].startswith("jin") else 5)
]


@pytest.mark.parametrize("case", EXECUTED)
def test_executed_counts_equal_the_table(full_sim, case):
    name, i = case
    d = HETAL_SHAPES[i]
    r = run(full_sim, ALGORITHMS[name], d, hetal_block_shape(d.a, d.c, SLOTS))
    assert (r.counts["cmult"], r.counts["mult"], r.counts.rotations) == PUBLISHED[name][i]
    assert max_error(r, full_sim) < 1e-6
