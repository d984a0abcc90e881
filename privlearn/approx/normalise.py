"""Row normalisers for normalise-and-square softmax, designed by linear programming.

Normalise-and-square (after Cho, Hanrot, Kim, Park, Stehlé, "Fast and accurate homomorphic
softmax evaluation", CCS 2024) computes softmax(x) from softmax(x / 2^k) by k steps
y <- y^2 / sum(y^2) along each row. A step's divisor is one number per row, so an error in it
scales the whole row and the next step's normalisation removes it: only the last divisor must
be accurate. The others only have to keep the row sum S in a band [alpha, beta] (beta <= 1, so
every value is bootstrappable, alpha away from 0, so no value drowns in noise).

A step sees q = sum(y^2) / 2 in [S^2 / (2c), S^2 / 2] (c the number of real classes; the 1/2
keeps every slot's value, including the row-crossing sums of rotation, in [0, S^2]) and
multiplies the row by nu(q), giving a new sum 2 q nu(q). nu is a Chebyshev series on
[-1/64, 63/64], an interval of width 1 (its change of variable costs no level) that holds every
slot's q strictly inside. :func:`band_step` finds, by a linear program on a fine grid, the
degree-d nu maximising the lowest new sum while the highest stays <= 1 - margin and |nu| stays
bounded on its whole interval; :func:`final_step` finds the nu minimising |2 q nu(q) - 1|. Both
then certify the band they reach over the whole input band (:mod:`privlearn.approx.bounds`):
the LP's grid is only how the polynomial is found, never what is claimed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.polynomial import chebyshev as C
from scipy.optimize import linprog

from privlearn.approx.bounds import Interval, certified_range
from privlearn.approx.poly import ChebyshevSeries

GRID = 600  # LP constraint points over the band (log-spaced) and over [0, 1]
MARGIN = 0.02  # headroom below 1 for the top of the band (noise, bootstrap contract)
NU_CAP = 3.0  # |nu| <= NU_CAP * (the largest value the band needs) over all of [0, 1]


@dataclass(frozen=True)
class Step:
    """One normalisation: nu on q in ``q_band``, giving row sums in ``out_band`` (certified)."""

    nu: ChebyshevSeries  # on NU_INTERVAL
    q_band: Interval
    out_band: Interval


def q_band(band: Interval, classes: int) -> Interval:
    """Where q = sum(y^2) / 2 lies for a row of ``classes`` values with sum in ``band``."""
    lo, hi = band
    return lo * lo / (2 * classes), hi * hi / 2


NU_INTERVAL = (-1 / 64, 63 / 64)


def _lp(qb: Interval, degree: int, final: bool) -> np.ndarray:
    ql, qh = qb
    q = np.geomspace(ql, qh, GRID)
    t = 2 * q - 1 + 1 / 32
    A = 2 * q[:, None] * C.chebvander(t, degree)  # rows: 2 q nu(q)
    g = C.chebvander(np.linspace(-1, 1, GRID), degree)
    cap = NU_CAP / (2 * ql)
    n, m = degree + 1, q.size
    zeros, ones = np.zeros((m, 1)), np.ones((m, 1))
    gz = np.zeros((GRID, 1))
    if final:  # minimise e: |2 q nu - 1| <= e
        a_ub = np.vstack(
            [np.hstack([A, -ones]), np.hstack([-A, -ones]), np.hstack([g, gz]), np.hstack([-g, gz])]
        )
        b_ub = np.r_[np.ones(m), -np.ones(m), np.full(2 * GRID, cap)]
        cost, last = np.r_[np.zeros(n), 1.0], (0, None)
    else:  # maximise a: a <= 2 q nu <= 1 - margin
        a_ub = np.vstack(
            [np.hstack([A, zeros]), np.hstack([-A, ones]), np.hstack([g, gz]), np.hstack([-g, gz])]
        )
        b_ub = np.r_[np.full(m, 1 - MARGIN), np.zeros(m), np.full(2 * GRID, cap)]
        cost, last = np.r_[np.zeros(n), -1.0], (0, 1)
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * n + [last], method="highs")
    if res.status != 0:
        raise RuntimeError(f"normaliser LP failed on q in {qb}, degree {degree}: {res.message}")
    return res.x[:n]


def _certify(nu: ChebyshevSeries, qb: Interval) -> Interval:
    d1 = nu.lipschitz(qb)
    lip = 2 * nu.sup_abs(qb) + 2 * qb[1] * d1  # |(2 q nu)'| on the band
    curv = 4 * d1 + 2 * qb[1] * nu.curvature()  # |(2 q nu)''|
    return certified_range(lambda q: 2 * q * nu(q), qb, lip, curvature=curv)


def band_step(band: Interval, classes: int, degree: int) -> Step:
    """The normaliser of ``degree`` that keeps the row sum highest above 0, from ``band``."""
    qb = q_band(band, classes)
    nu = ChebyshevSeries(_lp(qb, degree, final=False), NU_INTERVAL)
    return Step(nu, qb, _certify(nu, qb))


def final_step(band: Interval, classes: int, degree: int) -> Step:
    """The most accurate normaliser of ``degree``: row sums in ``out_band`` around 1."""
    qb = q_band(band, classes)
    nu = ChebyshevSeries(_lp(qb, degree, final=True), NU_INTERVAL)
    return Step(nu, qb, _certify(nu, qb))
