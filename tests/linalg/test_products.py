"""Every algorithm against numpy at random shapes: values, executed op counts == the closed-form
model, and levels consumed as documented. Simulator at full size (2^15 slots), OpenFHE at
toy-n12 (2^11 slots) in the default run."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from privlearn.linalg import (
    ALGORITHMS,
    BlockShape,
    Dims,
    EncMatrix,
    keyed_evaluator,
    padded_classes,
)
from privlearn.linalg.cost import measured
from tests.linalg.conftest import operands

NAMES = sorted(ALGORITHMS)
# Max |error| for operands in [-1, 1]: the simulator's calibrated noise (n16-d24) and
# OpenFHE at toy-n12 both stay near 1e-8 on these sums of up to ~800 products.
TOL = 1e-6
MAX_OPS = 1500
SETTINGS = dict(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


@st.composite
def case(draw, name: str, slots: int, max_side: int):
    """A shape, a block shape that fits it, and input levels the algorithm can afford."""
    alg = ALGORITHMS[name]
    if name.startswith("jin"):  # one ciphertext per entry of B: keep b x c small
        c = draw(st.integers(1, 3))
        d = Dims(draw(st.integers(1, max_side)), draw(st.integers(1, 24 // c)), c)
    else:
        d = Dims(*(draw(st.integers(1, max_side)) for _ in range(2)), draw(st.integers(1, 16)))
    cp = padded_classes(d.c)
    s0 = 1 << draw(st.integers(cp.bit_length() - 1, (slots // cp).bit_length() - 1))
    block = BlockShape(s0, slots // s0)
    c = alg.cost(d, block)
    assume(c.key_switches + c.cmult <= MAX_OPS)  # extreme block shapes: thousands of blocks
    levels = tuple(draw(st.integers(lag, lag + 4)) for lag in c.lag)
    return d, block, levels


def check(client, name: str, d: Dims, block: BlockShape, levels: tuple[int, int]) -> None:
    alg = ALGORITHMS[name]
    a, b = operands(alg, d, seed=d.a * 1000 + d.b)
    blk = alg.block_for(d, block)
    ea = EncMatrix.encrypt(client, a, blk, alg.layouts[0], level=levels[0])
    eb = EncMatrix.encrypt(client, b, blk, alg.layouts[1], level=levels[1])
    ev = keyed_evaluator(client, alg.name, d, block)
    with ev.cost.measure() as counts:
        out = alg(ev, ea, eb)
    model = alg.cost(d, block)
    assert measured(counts) == model.counts()
    assert out.level == model.out_level(*levels)  # depth as documented
    assert out.shape == ((d.a, d.c) if alg.product == "abt" else (d.c, d.b))
    want = a @ b.T if alg.product == "abt" else a.T @ b
    err = abs(out.decrypt(client) - want).max()
    assert err < TOL, f"max error {err:.3g}"


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=4, **SETTINGS)
@given(data=st.data())
def test_simulator_full_size(full_sim, name, data):
    d, block, levels = data.draw(case(name, full_sim.slots, max_side=600))
    check(full_sim, name, d, block, levels)


@pytest.mark.openfhe
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=2, **SETTINGS)
@given(data=st.data())
def test_openfhe_toy_size(toy_openfhe, name, data):
    d, block, levels = data.draw(case(name, toy_openfhe.slots, max_side=80))
    check(toy_openfhe, name, d, block, levels)


DEGENERATE = [Dims(1, 1, 1), Dims(1, 300, 2), Dims(300, 1, 3), Dims(7, 9, 5)]


@pytest.mark.parametrize(
    "name,d,flat",
    [
        pytest.param(n, d, flat, id=f"{n}-{d}-{'s0' if flat else 's1'}=c'")
        for n in NAMES
        for d in DEGENERATE
        for flat in (True, False)
        if flat or ALGORITHMS[n].own_block is None
    ],
)  # Jin et al., Halevi-Shoup: their own blocks
def test_degenerate_shapes(toy_sim, name, d, flat):
    cp = padded_classes(d.c)
    block = BlockShape(cp, toy_sim.slots // cp) if flat else BlockShape(toy_sim.slots // cp, cp)
    check(toy_sim, name, d, block, ALGORITHMS[name].cost(d, block).lag)
