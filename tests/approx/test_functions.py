"""Each function over its whole stated domain, on both backends, against its derived bound."""

from __future__ import annotations

import numpy as np
import pytest

from privlearn.approx import rows
from privlearn.approx.functions import (
    Comparison,
    Exp,
    Goldschmidt,
    NewtonInverse,
    NewtonInvSqrt,
    row_argmax,
    row_max,
)
from privlearn.approx.planner import LevelManager
from tests.approx.conftest import noise_tol


def _domain(client, lo, hi):
    return np.linspace(lo, hi, client.slots)  # the whole interval, endpoints included


@pytest.mark.parametrize("fn", [Exp(-8.0, 0.0, 7, 3), Exp(-1.0, 0.0, 8, 0), Exp(-30.0, 0.0, 15, 3)])
def test_exp(client, ev, lm, fn):
    x = _domain(client, fn.lo, fn.hi)
    ct = fn.evaluate(lm, client.encrypt(x))
    assert client.params.depth - ct.level == fn.depth()  # known before running
    out = client.decrypt(ct)
    rel = np.max(np.abs(out / np.exp(x) - 1))
    assert rel <= fn.rel_error() + noise_tol(client) * np.exp(-fn.lo)
    assert np.max(np.abs(fn(x) - out)) < noise_tol(client)


@pytest.mark.parametrize("fn", [NewtonInverse(1 / 16, 1.0, 7, 1), NewtonInverse(0.01, 1.0, 15, 2)])
def test_newton_inverse(client, ev, lm, fn):
    x = _domain(client, fn.a, fn.b)
    ct = fn.evaluate(lm, client.encrypt(x))
    assert client.params.depth - ct.level == fn.depth
    out = client.decrypt(ct) / fn.out_scale
    assert np.max(np.abs(out * x - 1)) <= fn.rel_error() + noise_tol(client) / fn.out_scale
    assert fn.rel_error() < 1e-2  # and the bound says something


def test_inverse_sqrt(client, ev, lm):
    fn = NewtonInvSqrt(1 / 16, 1.0, 7, 1)
    x = _domain(client, fn.a, fn.b)
    ct = fn.evaluate(lm, client.encrypt(x))
    assert client.params.depth - ct.level == fn.depth
    out = client.decrypt(ct) / fn.out_scale
    assert np.max(np.abs(out * np.sqrt(x) - 1)) <= fn.rel_error() + noise_tol(client) * 16
    assert fn.rel_error() < 1e-3


def test_goldschmidt(client, ev, lm):
    g, R = Goldschmidt(8.0, 6), 8.0
    x = _domain(client, 0.5, 12.0)
    y_scale = 1 / 32  # y ~ R/x <= 16
    ct = g.evaluate(lm, client.encrypt(x / R), y_scale)
    assert client.params.depth - ct.level == g.depth
    out = client.decrypt(ct) / (y_scale * R)
    assert np.max(np.abs(out * x - 1)) <= g.rel_error((0.5, 12.0)) + noise_tol(client) * 100
    np.testing.assert_allclose(out, g(x), atol=noise_tol(client) * 100)


def test_comparison_and_row_max_on_both_backends(client, ev, rng):
    cmp = Comparison.cheon()
    assert all(s.sup_abs() <= 1 + 1e-4 for s in cmp.stages)  # each stage maps into [-1, 1]
    assert cmp.depth == 9
    a = rng.uniform(-0.5, 0.5, (client.slots // 4, 4))
    lm = LevelManager(ev, "refresh", refresh=client.refresh)
    got = 2 * client.decrypt(row_max(lm, client.encrypt(a.ravel() / 2), 4, cmp)).reshape(-1, 4)
    short = a.max(axis=1, keepdims=True) - got  # never above the max, at most 2 rounds' error
    assert short.min() > -noise_tol(client) * 10
    assert short.max() <= 2 * cmp.max_error() + noise_tol(client) * 10
    assert np.allclose(got, got[:, :1])  # broadcast over the row


def test_row_argmax_finds_a_clear_winner(client, ev, rng):
    cmp = Comparison.cheon()
    a = rng.uniform(-0.5, 0.3, (client.slots // 4, 4))
    win = rng.integers(0, 4, a.shape[0])
    a[np.arange(a.shape[0]), win] = 0.5  # a gap of at least 0.2
    lm = LevelManager(ev, "refresh", refresh=client.refresh)
    idx = client.decrypt(row_argmax(lm, client.encrypt(a.ravel() / 2), 4, cmp))[::4] * 4
    assert np.array_equal(np.round(idx), win) and np.max(np.abs(idx - win)) < 0.1


def test_comparison_error_is_certified():
    cmp = Comparison.cheon()
    z = np.linspace(-1, 1, 2_000_001)
    actual = np.max(np.abs(z * (cmp.sign(z) + 1) / 2 - np.maximum(z, 0)))
    assert actual <= cmp.max_error() <= actual * 1.05


@pytest.mark.parametrize(
    "fn, bad",
    [
        (Exp(-8.0, 0.0, 7, 3), [0.5]),
        (NewtonInverse(0.1, 1.0), [0.05]),
        (NewtonInvSqrt(0.1, 1.0), [1.5]),
        (Goldschmidt(10.0, 4), [25.0]),
    ],
)
def test_plaintext_paths_refuse_inputs_outside_the_domain(fn, bad):
    with pytest.raises(ValueError, match="defined on"):
        fn(np.array(bad))


def test_constructors_check_their_domains():
    with pytest.raises(ValueError):
        Exp(-1.0, 1.0)
    with pytest.raises(ValueError):
        NewtonInverse(0.5, 2.0)
    with pytest.raises(ValueError, match="converges"):
        Goldschmidt(1.0, 3).rel_error((0.5, 3.0))
    with pytest.raises(ValueError, match="width"):
        rows.check_width(6, 2048)
