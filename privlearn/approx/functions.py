"""Functions on ciphertexts: exp, inverse, inverse square root, sign/compare, row max/argmax.

Each approximation is a small frozen object: a numpy ``__call__`` (the plaintext reference,
which checks that inputs lie in the stated domain), ``evaluate`` on ciphertexts through a
:class:`~privlearn.approx.planner.LevelManager`, its ``depth``, and an error bound derived from
certified suprema (:mod:`privlearn.approx.bounds`) over the whole stated domain. The encrypted
path cannot see its inputs: a slot outside the domain yields a wrong value silently, so the
caller must guarantee the domain (the plaintext paths raise ``ValueError`` instead).

Values a ciphertext holds stay in [-1, 1] where the level manager could bootstrap them (outputs
are scaled by powers of two where the function itself exceeds 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from privlearn.approx.bounds import Interval, certified_range, certified_sup
from privlearn.approx.planner import LevelManager
from privlearn.approx.poly import ChebyshevSeries
from privlearn.approx.rows import broadcast, check_width, row_start_mask
from privlearn.he import Ciphertext


def check_domain(x: np.ndarray, interval: Interval, what: str) -> np.ndarray:
    """``x`` as an array, after checking every entry lies in ``interval``."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = interval
    if x.size and (np.min(x) < lo or np.max(x) > hi):
        raise ValueError(
            f"{what} is defined on [{lo:g}, {hi:g}] but got inputs in "
            f"[{np.min(x):g}, {np.max(x):g}]; scale or clip them first"
        )
    return x


def _pow2_at_least(v: float) -> int:
    return 1 << max(0, math.ceil(math.log2(v)))


# -- exp ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Exp:
    """e^x on [lo, hi] (hi <= 0): a Chebyshev interpolant p of e^(x / 2^k), squared k times.

    Squaring is one level per halving of the range where a polynomial needs several, at the
    price of multiplying the polynomial's relative error by 2^k (the bound accounts for it).
    """

    lo: float
    hi: float = 0.0
    degree: int = 7
    squarings: int = 0

    def __post_init__(self) -> None:
        if not self.lo < self.hi <= 0:
            raise ValueError(f"Exp needs lo < hi <= 0, got [{self.lo}, {self.hi}]")

    @cached_property
    def series(self) -> ChebyshevSeries:
        s = 2.0**self.squarings
        return ChebyshevSeries.interpolate(lambda x: np.exp(x / s), (self.lo, self.hi), self.degree)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = check_domain(x, (self.lo, self.hi), "Exp")
        return self.series(x) ** (2**self.squarings)

    def depth(self, vector_scale: bool = False) -> int:
        return self.series.depth(vector_scale) + self.squarings

    def rel_error(self) -> float:
        """Certified bound of |approx / e^x - 1| on [lo, hi]."""
        s = 2.0**self.squarings
        p = self.series
        d1, d0, w = p.lipschitz(), p.sup_abs(), math.exp(-self.lo / s)
        lip = w * (d1 + d0 / s)  # bounds of (p e^(-x/s))' and '' on [lo, hi]
        curv = w * (p.curvature() + 2 * d1 / s + d0 / s**2)
        eta = certified_sup(
            lambda x: p(x) * np.exp(-x / s) - 1, (self.lo, self.hi), lip, curvature=curv
        )
        return (1 + eta) ** (2**self.squarings) - 1

    def evaluate(
        self, lm: LevelManager, ct: Ciphertext, *, scale: np.ndarray | None = None
    ) -> Ciphertext:
        """e^x slot-wise; ``scale`` (a 0/1 mask) is folded in as in ChebyshevSeries."""
        y = self.series.evaluate(lm, ct, scale=scale)
        for _ in range(self.squarings):
            y = lm.square(y)
        return y


# -- inverse --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Goldschmidt:
    """1/x for x in (0, 2R) by Goldschmidt's iteration (HETAL's ``approx_inv``):
    y = 2 - x/R, e = 1 - x/R; ``rounds`` times e <- e^2, y <- y (1 + e); return y / R.
    In exact arithmetic y / R = (1 - (1 - x/R)^(2^(rounds+1))) / x: relative error
    |1 - x/R|^(2^(rounds+1)), largest at the ends of the domain."""

    R: float
    rounds: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = check_domain(x, (np.nextafter(0, 1), 2 * self.R), "Goldschmidt")
        y = 2 - x / self.R
        e = y - 1
        for _ in range(self.rounds):
            e = e * e
            y = y * (1 + e)
        return y / self.R

    def rel_error(self, interval: Interval) -> float:
        a, b = interval
        if not 0 < a <= b < 2 * self.R:
            raise ValueError(
                f"Goldschmidt with R={self.R} converges on (0, {2 * self.R}), not on [{a}, {b}]"
            )
        e = max(abs(1 - a / self.R), abs(1 - b / self.R))
        return e ** (2 ** (self.rounds + 1))

    @property
    def depth(self) -> int:
        """Levels from a ciphertext holding x/R to y * y_scale."""
        return self.rounds + 1

    def evaluate(self, lm: LevelManager, u: Ciphertext, y_scale: float) -> Ciphertext:
        """From ``u`` = x/R, a ciphertext of y * ``y_scale`` (so R * y_scale / x); choose
        ``y_scale`` <= 1/2 with y * y_scale <= 1 to keep values bootstrappable."""
        e = lm.sub(lm.neg(u), -1.0)  # 1 - u
        y = lm.add(lm.mul(u, -y_scale), 2 * y_scale)  # (2 - u) * y_scale: one level
        for _ in range(self.rounds):
            e = lm.square(e)
            y = lm.add(y, lm.mul(y, e))  # y (1 + e) without a factor above 1
        return y


@dataclass(frozen=True)
class NewtonInverse:
    """1/x on [a, b] with 0 < a < b <= 1: a Chebyshev interpolant of degree ``degree``, then
    ``steps`` Newton steps y <- y (2 - x y), each squaring the relative error 1 - x y.

    The ciphertext result is ``out_scale / x`` with ``out_scale`` = 2^-ceil(log2(1/a)), the
    largest power of two that keeps it in [0, 1]."""

    a: float
    b: float
    degree: int = 7
    steps: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.a < self.b <= 1:
            raise ValueError(f"NewtonInverse needs 0 < a < b <= 1, got [{self.a}, {self.b}]")

    @property
    def out_scale(self) -> float:
        return 1.0 / _pow2_at_least(1 / self.a)

    @cached_property
    def series(self) -> ChebyshevSeries:
        return ChebyshevSeries.interpolate(
            lambda x: self.out_scale / x, (self.a, self.b), self.degree
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = check_domain(x, (self.a, self.b), "NewtonInverse")
        z = self.series(x)
        for _ in range(self.steps):
            z = 2 * z - z * (x * z) / self.out_scale
        return z / self.out_scale

    def rel_error(self) -> float:
        p, o = self.series, self.out_scale
        lip = (p.sup_abs() + self.b * p.lipschitz()) / o
        e0 = certified_sup(lambda x: 1 - x * p(x) / o, (self.a, self.b), lip)
        return e0 ** (2**self.steps)

    @property
    def depth(self) -> int:
        return self.series.depth() + 2 * self.steps

    def evaluate(self, lm: LevelManager, ct: Ciphertext) -> Ciphertext:
        """``out_scale / x`` slot-wise, for ``ct`` holding x in [a, b]."""
        z = self.series.evaluate(lm, ct)
        inv_o = int(round(1 / self.out_scale))
        for _ in range(self.steps):
            zw = lm.mul(z, lm.mul(ct, z))  # z * (x z), every factor in [0, 1]
            z = lm.sub(lm.mul(z, 2), lm.mul(zw, inv_o))
        return z


@dataclass(frozen=True)
class NewtonInvSqrt:
    """1/sqrt(x) on [a, b] with 0 < a < b <= 1: a Chebyshev interpolant, then ``steps`` Newton
    steps y <- y (3 - x y^2) / 2. With e = 1 - x y^2 a step gives e' = (3/4) e^2 + (1/4) e^3.
    The ciphertext result is ``out_scale / sqrt(x)``, ``out_scale`` = 2^-ceil(log2(1/sqrt a))."""

    a: float
    b: float
    degree: int = 7
    steps: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.a < self.b <= 1:
            raise ValueError(f"NewtonInvSqrt needs 0 < a < b <= 1, got [{self.a}, {self.b}]")

    @property
    def out_scale(self) -> float:
        return 1.0 / _pow2_at_least(1 / math.sqrt(self.a))

    @cached_property
    def series(self) -> ChebyshevSeries:
        return ChebyshevSeries.interpolate(
            lambda x: self.out_scale / np.sqrt(x), (self.a, self.b), self.degree
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = check_domain(x, (self.a, self.b), "NewtonInvSqrt")
        o = self.out_scale
        z = self.series(x)
        for _ in range(self.steps):
            z = 1.5 * z - (0.5 * x * z) * (z * z) / o**2
        return z / o

    def rel_error(self) -> float:
        """Certified bound of |approx * sqrt(x) - 1|."""
        p, o = self.series, self.out_scale
        lip = (p.sup_abs() ** 2 + 2 * self.b * p.sup_abs() * p.lipschitz()) / o**2
        lo, hi = certified_range(lambda x: 1 - x * p(x) ** 2 / o**2, (self.a, self.b), lip)
        for _ in range(self.steps):
            g = [0.75 * e**2 + 0.25 * e**3 for e in (lo, hi)]
            lo, hi = (min(g), max(g)) if lo > 0 or hi < 0 else (0.0, max(g))
        e = max(abs(lo), abs(hi))
        if e >= 1:
            return math.inf
        return max(abs(1 / math.sqrt(1 - e) - 1), abs(1 / math.sqrt(1 + e) - 1))

    @property
    def depth(self) -> int:
        return self.series.depth() + 2 * self.steps  # x / 2 is ready while p runs

    def evaluate(self, lm: LevelManager, ct: Ciphertext) -> Ciphertext:
        """``out_scale / sqrt(x)`` slot-wise, for ``ct`` holding x in [a, b]."""
        z = self.series.evaluate(lm, ct)
        half_x = lm.mul(ct, 0.5)
        k = int(round(1 / self.out_scale**2))
        for _ in range(self.steps):
            cube = lm.mul(lm.mul(half_x, z), lm.square(z))  # x z^3 / 2
            z = lm.sub(lm.mul(z, 1.5), lm.mul(cube, k))
        return z


# -- sign, comparison, max ------------------------------------------------------------------------
# Cheon, Kim, Kim, Lee, "Efficient homomorphic comparison methods with optimal complexity"
# (Asiacrypt 2020): f_n = sum_{i<=n} binom(2i, i) / 4^i * x (1 - x^2)^i has f_n(x) -> sign(x)
# with flat ends; the degree-7 g below (the constants HETAL publishes) pulls small |x| out fast.
def cheon_f(n: int) -> np.ndarray:
    """Power coefficients of f_n (degree 2n + 1)."""
    out = np.zeros(2 * n + 2)
    for i in range(n + 1):
        term = np.polynomial.polynomial.polypow([1.0, 0.0, -1.0], i)  # (1 - x^2)^i
        out[1 : 2 * i + 2] += math.comb(2 * i, i) / 4**i * term
    return out


CHEON_G3 = np.array([0, 4589, 0, -16577, 0, 25614, 0, -12860]) / 1024


# f_n overshoots 1 by ~1e-5 near its ends; this keeps compare() inside [0, 1] with room for
# CKKS noise, so a bootstrap may take it (it moves max~ by at most 2^-17 |a - b|).
HEADROOM = 1 - 2.0**-16


@dataclass(frozen=True)
class Comparison:
    """sign(z) for z in [-1, 1] by a composite h = stages[-1] o ... o stages[0];
    compare(a, b) = (HEADROOM h(a - b) + 1) / 2 for a, b in [-1/2, 1/2]."""

    stages: tuple[ChebyshevSeries, ...]

    @classmethod
    def cheon(cls, f_iters: int = 1, g_iters: int = 2, n: int = 3) -> Comparison:
        """HETAL's choice with the defaults: g, g, then f_3 (depth 9)."""
        g = ChebyshevSeries.from_power(CHEON_G3)
        f = ChebyshevSeries.from_power(cheon_f(n))
        return cls((g,) * g_iters + (f,) * f_iters)

    def sign(self, z: np.ndarray) -> np.ndarray:
        h = check_domain(z, (-1, 1), "Comparison")
        for s in self.stages:
            h = s(h)
        return h

    def compare(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (HEADROOM * self.sign(np.asarray(a) - np.asarray(b)) + 1) / 2

    @property
    def depth(self) -> int:
        return sum(s.depth(input_scale=0.5) for s in self.stages)

    def max_error(self) -> float:
        """Certified bound of |max~(a, b) - max(a, b)| for a, b in [-1/2, 1/2], where
        max~(a, b) = b + (a - b) compare(a, b): sup over z of |z s(z) - max(z, 0)|.
        max~ is a convex combination of a and b (s in [0, 1]), so it never exceeds max."""
        lip = 1.0
        for s in self.stages:  # each stage maps [-1, 1] into [-1, 1] (checked in tests)
            lip *= s.lipschitz()
        return certified_sup(
            lambda z: z * (HEADROOM * self.sign(z) + 1) / 2 - np.maximum(z, 0),
            (-1, 1),
            1 + lip / 2,
            n=1 << 20,
        )

    def half_sign(self, lm: LevelManager, z_half: Ciphertext) -> Ciphertext:
        """HEADROOM * h(z) / 2 from ``z_half`` holding z / 2: every stage takes and gives
        halved values, so no change of variable costs a level."""
        for s in self.stages[:-1]:
            z_half = s.scaled(0.5).evaluate(lm, z_half, input_scale=0.5)
        return self.stages[-1].scaled(HEADROOM / 2).evaluate(lm, z_half, input_scale=0.5)


def row_max(
    lm: LevelManager, ct: Ciphertext, width: int, cmp: Comparison, group: int | None = None
) -> Ciphertext:
    """Approximate max of each row, copied over the whole row; ``ct`` holds the values halved
    (a / 2 for a in [-1/2, 1/2]) and so does the result.

    Rows are ``width`` slots apart and the max is over their first ``group`` slots (default:
    all). log2(group) rounds of a <- max~(a, rot(a, 2^i)) leave it in the row's first slot
    (rotations cross rows elsewhere); the last round's products carry the row-start mask,
    which costs no level there, and :func:`broadcast` spreads it. The result lies within
    ``log2(width) * cmp.max_error()`` below the true max, never above it."""
    check_width(width, ct.slots)
    rounds = check_width(group or width, width)
    if rounds == 0:
        return ct
    mask = row_start_mask(ct.slots, width)
    for i in range(rounds):
        b = lm.rotate(ct, 1 << i)
        z = lm.sub(ct, b)
        s = lm.add(cmp.half_sign(lm, z), 0.5)
        if i == rounds - 1:
            b, z = lm.mul(b, mask), lm.mul(z, mask)
        ct = lm.add(b, lm.mul(z, s))
    return broadcast(lm, ct, width)


def row_argmax(
    lm: LevelManager, ct: Ciphertext, width: int, cmp: Comparison, group: int | None = None
) -> Ciphertext:
    """Approximate index of each row's max divided by ``width``, in the row's first slot
    (zero elsewhere), for ``ct`` holding halved values as in :func:`row_max`: the max
    tournament of :func:`row_max`, carrying the winner's index with
    the same weights. Ties within ``cmp``'s resolution give a blend of the tied indices."""
    check_width(width, ct.slots)
    rounds = check_width(group or width, width)
    if rounds == 0:
        raise ValueError("argmax needs groups of width >= 2")
    mask = row_start_mask(ct.slots, width)
    idx: Ciphertext | np.ndarray = np.tile(np.arange(width) / width, ct.slots // width)
    for i in range(rounds):
        b = lm.rotate(ct, 1 << i)
        z = lm.sub(ct, b)
        s = lm.add(cmp.half_sign(lm, z), 0.5)
        if isinstance(idx, Ciphertext):
            ib = lm.rotate(idx, 1 << i)
            di = lm.sub(idx, ib)
        else:
            ib = np.roll(idx, -(1 << i))
            di = idx - ib
        if i == rounds - 1:
            ib = lm.mul(ib, mask) if isinstance(ib, Ciphertext) else ib * mask
            di = lm.mul(di, mask) if isinstance(di, Ciphertext) else di * mask
        else:
            ct = lm.add(b, lm.mul(z, s))
        idx = lm.add(lm.mul(s, di) if not isinstance(di, Ciphertext) else lm.mul(di, s), ib)
    return idx
