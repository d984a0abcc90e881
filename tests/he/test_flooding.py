from __future__ import annotations

import numpy as np
import pytest

from privlearn.he.flooding import flood, flooding_sigma, security_bits


def test_sigma_grows_with_security_and_queries():
    base = flooding_sigma(1e-9)
    assert base == pytest.approx(2**15 * 1e-9)
    assert flooding_sigma(1e-9, statistical_security=40) == pytest.approx(base * 2**5)
    assert flooding_sigma(1e-9, queries=16) == pytest.approx(base * 4)
    with pytest.raises(ValueError):
        flooding_sigma(0.0)


def test_flooded_values_hide_an_error_shift():
    """Two decryptions that differ by the whole error bound give flooded outputs whose
    distributions overlap almost entirely (total variation <= B / sigma)."""
    rng = np.random.default_rng(0)
    b = 1e-8
    a = flood(np.full(200_000, 0.5), b, rng=rng)
    c = flood(np.full(200_000, 0.5 + b), b, rng=rng)
    sigma = flooding_sigma(b)
    assert abs(a.std() / sigma - 1) < 0.01
    assert abs(a.mean() - c.mean()) < 5 * sigma / np.sqrt(len(a))


def test_complex_values_get_noise_on_both_parts():
    out = flood(np.zeros(1000, complex), 1e-6, rng=np.random.default_rng(1))
    assert out.real.std() > 0 and out.imag.std() > 0


def test_security_bits_inverts_the_sigma():
    sigma = flooding_sigma(3e-9, statistical_security=30, queries=10)
    assert security_bits(sigma, 3e-9, queries=10) == pytest.approx(30)
    assert security_bits(sigma, 6e-9, queries=10) == pytest.approx(28)  # twice the error: -2 bits
    with pytest.raises(ValueError):
        security_bits(sigma, 0.0)
