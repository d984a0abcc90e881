"""Certified suprema: the error bounds the approximations quote are computed here, not guessed.

A function's maximum over an interval is bounded from above by its maximum over a uniform grid
plus half the grid step times a Lipschitz constant L, or, for a twice differentiable function,
plus h^2/8 times a bound K of |f''| (between two samples f lies below their chord plus
K h^2 / 8). With L and K themselves upper bounds (Markov's inequality for polynomials, closed
forms for target functions), the result is rigorous up to floating-point rounding of the
sampled values.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Interval = tuple[float, float]
GRID = 1 << 18  # default sample count: bounds are tight to ~(b - a) / 2^18 times the slope


def _pad(interval: Interval, n: int, lipschitz: float, curvature: float | None) -> float:
    a, b = interval
    if not a <= b:
        raise ValueError(f"empty interval {interval}")
    h = (b - a) / (n - 1)
    pad = lipschitz * h / 2
    return pad if curvature is None else min(pad, curvature * h * h / 8)


def certified_sup(
    fn: Callable[[np.ndarray], np.ndarray],
    interval: Interval,
    lipschitz: float,
    n: int = GRID,
    curvature: float | None = None,
) -> float:
    """An upper bound of ``sup |fn|`` on ``interval``, for ``fn`` with |fn'| <= ``lipschitz``
    (and, if given, |fn''| <= ``curvature``) there."""
    pad = _pad(interval, n, lipschitz, curvature)
    return float(np.max(np.abs(fn(np.linspace(*interval, n))))) + pad


def certified_range(
    fn: Callable[[np.ndarray], np.ndarray],
    interval: Interval,
    lipschitz: float,
    n: int = GRID,
    curvature: float | None = None,
) -> Interval:
    """An interval certain to contain ``fn(interval)`` (arguments as in certified_sup)."""
    pad = _pad(interval, n, lipschitz, curvature)
    y = fn(np.linspace(*interval, n))
    return float(np.min(y)) - pad, float(np.max(y)) + pad
