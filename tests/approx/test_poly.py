"""Chebyshev series: interpolation bounds, depth-optimal evaluation, counts known beforehand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privlearn.approx.planner import plan
from privlearn.approx.poly import ChebyshevSeries
from tests.approx.conftest import noise_tol

CASES = [  # (function, interval, degree, parity)
    (np.exp, (-1.0, 1.0), 7, None),
    (np.exp, (-8.0, 0.0), 12, None),  # change of variable costs a level
    (np.exp, (-1.0, 0.0), 8, None),  # 2 / (b - a) = 2: free
    (np.tanh, (-1.0, 1.0), 15, "odd"),
    (lambda x: np.sin(3 * x), (-1.0, 1.0), 27, "odd"),
    (np.cos, (-2.0, 2.0), 10, "even"),
    (lambda x: 1 / (x + 2), (-1.0, 1.0), 63, None),
    (np.arctan, (-1.0, 1.0), 100, "odd"),
]


def test_from_power_is_exact():
    coeffs = [0.5, -1.0, 0.25, 2.0, 0.0, -0.75]
    s = ChebyshevSeries.from_power(coeffs, (-3.0, 5.0))
    x = np.linspace(-3, 5, 101)
    np.testing.assert_allclose(
        s(x), np.polynomial.polynomial.polyval(x, coeffs), rtol=1e-12, atol=1e-9
    )


@pytest.mark.parametrize("f, interval, degree, parity", CASES)
def test_interpolation_error_is_within_its_certified_bound(f, interval, degree, parity):
    s = ChebyshevSeries.interpolate(f, interval, degree, parity)
    x = np.linspace(*interval, 200_001)
    actual = np.max(np.abs(s(x) - f(x)))
    h = 1e-5
    lip = np.max(np.abs(f(x + h) - f(x - h))) / (2 * h) * 1.01 + 1e-9
    bound = s.error_bound(f, lip)
    assert actual <= bound <= actual + 1e-3 * max(1.0, lip)
    if parity:
        assert s.parity == parity


@pytest.mark.parametrize("parity", ["odd", "even"])
def test_parity_keeps_the_basis_to_its_own_parity(parity):
    f = np.arctan if parity == "odd" else (lambda x: np.cos(3 * x))
    s = ChebyshevSeries.interpolate(f, (-1, 1), 63 if parity == "odd" else 62, parity)
    assert s.parity == parity
    assert not np.any(s.coeffs[(0 if parity == "odd" else 1) :: 2])
    basis = s._plan(False).basis  # T_i computed: own parity, plus powers of two
    assert all(i % 2 == (parity == "odd") or i & (i - 1) == 0 for i in basis)


@pytest.mark.parametrize("degree", [1, 2, 3, 4, 7, 8, 15, 16, 31, 33, 64, 127, 255])
def test_depth_is_optimal_for_every_degree(degree):
    s = ChebyshevSeries(np.random.default_rng(degree).uniform(0.5, 1, degree + 1) / degree)
    assert s.degree == degree
    assert s.depth(input_scale=0.5) == s.depth(True, 0.5) == math.ceil(math.log2(degree + 1))
    assert s.depth() == s.depth(input_scale=0.5) + 1  # x itself: t / 2 = x / 2 takes a level


@pytest.mark.parametrize("f, interval, degree, parity", CASES)
@pytest.mark.parametrize("vector", [False, True])
def test_evaluation_matches_numpy_and_the_counts_known_beforehand(
    client, ev, lm, f, interval, degree, parity, vector
):
    s = ChebyshevSeries.interpolate(f, interval, degree, parity)
    x = np.linspace(*interval, client.slots)
    k = 1 / (interval[1] - interval[0])  # the input scale that makes the change of variable free
    scale = np.linspace(-1, 1, client.slots) if vector else None
    pl = plan(lambda lm_, ct_: s.evaluate(lm_, ct_, input_scale=k, scale=scale), ev.params)
    ct = client.encrypt(x * k)
    with ev.cost.measure() as counts:
        out = s.evaluate(lm, ct, input_scale=k, scale=scale)
    want = s(x) * (1 if scale is None else scale)
    assert np.max(np.abs(client.decrypt(out) - want)) < noise_tol(client) * 10
    assert (
        ct.level - out.level == s.depth(vector, k) == pl.depth == math.ceil(math.log2(s.degree + 1))
    )
    assert counts["mult"] == s.mults(vector) == pl.mults
    assert counts.as_dict() == pl.counts.as_dict()  # every operation, as the backend counts


def test_constructor_rejects_constants_and_bad_intervals():
    with pytest.raises(ValueError, match="degree >= 1"):
        ChebyshevSeries([1.0, 0.0])
    with pytest.raises(ValueError, match="bad series"):
        ChebyshevSeries([0.0, 1.0], (1.0, 1.0))
    with pytest.raises(ValueError, match="symmetric"):
        ChebyshevSeries.interpolate(np.tanh, (0, 1), 7, "odd")
