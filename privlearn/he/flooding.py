"""Noise flooding for decrypted values that leave the client (IND-CPA^D).

CKKS decryption returns the message plus an error that depends on the secret key. Li and
Micciancio (Eurocrypt 2021) showed that handing such decryptions to an adversary can leak the
key; Li, Micciancio, Schultz and Sorrell (CRYPTO 2022) showed that adding Gaussian noise to the
decrypted values restores security (IND-CPA^D), with a standard deviation of order
``2^(s/2) · sqrt(q) · B`` for ``s`` bits of statistical security, ``q`` decryptions released
and a bound ``B`` on the CKKS error of each value. That is the Gaussian mechanism's Rényi
divergence argument: a shift by at most ``B`` under noise ``σ`` costs ``q·B²/(2σ²)``.

``B`` must bound the error the whole computation accumulated, not only the noise of the last
decryption: the attack reads the key out of the difference between the decrypted value and the
exact one. :func:`security_bits` inverts the formula, for reporting what a given σ achieves.

Use :func:`flood` on anything decrypted that another party will see (a decision derived from a
decrypted value counts). Values the client keeps need no flooding.
"""

from __future__ import annotations

import numpy as np


class FloodingWarning(UserWarning):
    """Flooding gives less statistical security than configured against an error bound."""


def flooding_sigma(
    error_bound: float, *, statistical_security: int = 30, queries: int = 1
) -> float:
    """Standard deviation that hides a CKKS error of at most ``error_bound`` per value across
    ``queries`` released decryptions at ``statistical_security`` bits (OpenFHE's default: 30)."""
    if error_bound <= 0 or queries < 1 or statistical_security < 1:
        raise ValueError("need error_bound > 0, queries >= 1, statistical_security >= 1")
    return float(2.0 ** (statistical_security / 2) * np.sqrt(queries) * error_bound)


def security_bits(sigma: float, error_bound: float, *, queries: int = 1) -> float:
    """The statistical security ``s`` that noise of standard deviation ``sigma`` gives values
    with CKKS error at most ``error_bound`` over ``queries`` releases (flooding_sigma inverted)."""
    if sigma <= 0 or error_bound <= 0 or queries < 1:
        raise ValueError("need sigma > 0, error_bound > 0, queries >= 1")
    return float(2 * np.log2(sigma / (np.sqrt(queries) * error_bound)))


def flood(
    values: np.ndarray,
    error_bound: float,
    *,
    statistical_security: int = 30,
    queries: int = 1,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """``values`` plus Gaussian noise of :func:`flooding_sigma` (complex values get noise on
    both parts)."""
    sigma = flooding_sigma(error_bound, statistical_security=statistical_security, queries=queries)
    rng = rng or np.random.default_rng()
    values = np.asarray(values)
    noise = sigma * rng.standard_normal(values.shape)
    if np.iscomplexobj(values):
        noise = noise + 1j * sigma * rng.standard_normal(values.shape)
    return values + noise
