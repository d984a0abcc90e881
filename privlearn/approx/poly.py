"""Chebyshev series and their depth-optimal evaluation on ciphertexts.

A :class:`ChebyshevSeries` is p(x) = sum_i c_i T_i(t) with t = (2x - a - b) / (b - a) for x in
[a, b]. On a ciphertext it is evaluated by baby-step giant-step in the Chebyshev basis: the
basis T_i is built with T_2i = 2 T_i^2 - 1 and T_(a+b) = 2 T_a T_b - T_(a-b), whose integer
factors cost no level; p is divided recursively by giant steps T_m (m a power of two),
p = q T_m + r, down to leaves sum c_i T_i. Every constant multiplies a ciphertext that has a
level to spare, so the result consumes exactly ceil(log2(d + 1)) levels, the minimum for
degree d, plus one for the change of variable unless it is an integer factor (see below). A leaf is
split further only where it would cost a level more than the budget allows; odd and even
series carry only basis elements of their own parity.

The evaluation is fixed by a plan made from the coefficients alone, so its depth and its
count of ciphertext multiplications are known before any ciphertext exists (:attr:`depth`,
:attr:`mults`), and :func:`privlearn.approx.planner.plan` gives every other count.

Values: the basis is carried halved (H_i = T_i / 2, in [-1/2, 1/2]) and a quotient whose
coefficients could exceed 1 in absolute sum is evaluated divided by a power of two and
multiplied back by that integer after its product (free), so every ciphertext a bootstrap might
see stays inside [-1, 1] with room for noise. The halving is why a series on [-1, 1] wants its
input as x / 2 (``input_scale=0.5``) to spend no level on the change of variable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.polynomial import chebyshev as C
from numpy.polynomial import polynomial as P

from privlearn.approx.bounds import Interval, certified_sup
from privlearn.approx.planner import LevelManager
from privlearn.he import Ciphertext

Parity = Literal["odd", "even"] | None
CHOP = 2.0**-40  # relative size below which a coefficient is dropped (CKKS keeps ~30-40 bits)
SAFE = 1 - 2.0**-10  # a value a bootstrap may take stays this far inside [-1, 1]
TINY = 2.0**-60  # plaintext slot values below this are zero to CKKS (scale <= 2^60)


def _tdepth(i: int) -> int:
    """Levels consumed by T_i computed from t (T_0 is the constant 1)."""
    return 0 if i <= 1 else math.ceil(math.log2(i))


def _is_int(c: float) -> bool:
    return float(c).is_integer() and abs(c) < 2**31


@dataclass(frozen=True)
class _Leaf:
    terms: tuple[tuple[int, float], ...]  # (i, c_i), i >= 1, c_i != 0
    const: float


@dataclass(frozen=True)
class _Split:
    m: int  # giant step T_m, a power of two
    q: _Leaf | _Split  # quotient, divided by qscale
    r: _Leaf | _Split  # remainder
    qscale: int


_Node = _Leaf | _Split


@dataclass(frozen=True)
class _Plan:
    root: _Node
    depth: int  # from t
    basis: frozenset[int]  # T_i computed (i >= 2)
    splits: int  # products quotient x giant step


@dataclass(frozen=True, eq=False)
class ChebyshevSeries:
    """p(x) = sum_i coeffs[i] T_i(t), t the image of x in [-1, 1]; degree >= 1."""

    coeffs: np.ndarray
    interval: Interval = (-1.0, 1.0)
    _plans: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        c = np.array(self.coeffs, dtype=np.float64)
        if c.size:  # terms below CKKS's own precision are dropped (OpenFHE cannot encode them)
            c[np.abs(c) < CHOP * np.max(np.abs(c))] = 0.0
        c = np.trim_zeros(c, "b")
        a, b = (float(v) for v in self.interval)
        if c.size < 2:
            raise ValueError("a ChebyshevSeries needs degree >= 1; use a plain constant instead")
        if not (np.all(np.isfinite(c)) and a < b):
            raise ValueError(
                f"bad series: interval {self.interval}, coefficients finite: "
                f"{bool(np.all(np.isfinite(c)))}"
            )
        object.__setattr__(self, "coeffs", c)
        object.__setattr__(self, "interval", (a, b))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def interpolate(
        cls,
        f: Callable[[np.ndarray], np.ndarray],
        interval: Interval,
        degree: int,
        parity: Parity = None,
    ) -> ChebyshevSeries:
        """Interpolant of ``f`` at the degree + 1 Chebyshev points of ``interval``. With
        ``parity`` (for an odd or even ``f`` on a symmetric interval) the other parity's
        coefficients, zero up to rounding, are dropped so evaluation skips them."""
        a, b = interval
        if parity and not math.isclose(a, -b):
            raise ValueError(f"parity needs a symmetric interval, got {interval}")
        c = C.chebinterpolate(lambda t: f((b - a) / 2 * t + (a + b) / 2), degree)
        if parity:
            c[(0 if parity == "odd" else 1) :: 2] = 0.0
        return cls(c, (a, b))

    @classmethod
    def from_power(
        cls, coeffs: np.ndarray | list[float], interval: Interval = (-1.0, 1.0)
    ) -> ChebyshevSeries:
        """The polynomial sum_k coeffs[k] x^k, re-expressed in the Chebyshev basis of
        ``interval`` (exact up to rounding): how published power-basis polynomials enter."""
        a, b = interval
        x_of_t = P.Polynomial([(a + b) / 2, (b - a) / 2])
        in_t = P.Polynomial(np.asarray(coeffs, dtype=np.float64))(x_of_t).coef
        return cls(C.poly2cheb(in_t), (a, b))

    def scaled(self, k: float) -> ChebyshevSeries:
        """k * p (the constant folded into the coefficients: no level)."""
        return ChebyshevSeries(self.coeffs * k, self.interval)

    # -- plaintext --------------------------------------------------------------------------------
    def _t(self, x: np.ndarray) -> np.ndarray:
        a, b = self.interval
        return (2 * np.asarray(x, dtype=np.float64) - a - b) / (b - a)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return C.chebval(self._t(x), self.coeffs)

    @property
    def degree(self) -> int:
        return self.coeffs.size - 1

    @property
    def parity(self) -> Parity:
        if not np.any(self.coeffs[0::2]):
            return "odd"
        if not np.any(self.coeffs[1::2]):
            return "even"
        return None

    def lipschitz(self, interval: Interval | None = None) -> float:
        """Certified upper bound of |p'| on ``interval`` (default: the series' own): p'
        sampled, with Markov's inequality (|T_i'| <= i^2 on [-1, 1]) bounding p'' between
        the samples."""
        a, b = self.interval
        d = C.chebder(self.coeffs) * (2 / (b - a))
        if d.size < 2:
            return float(abs(d[0]))
        i = np.arange(d.size)
        markov = float(2 / (b - a) * np.sum(np.abs(d) * i**2))
        return certified_sup(lambda x: C.chebval(self._t(x), d), interval or self.interval, markov)

    def curvature(self) -> float:
        """Upper bound of |p''| on the interval (Markov: |T_i''| <= i^2 (i^2 - 1) / 3)."""
        a, b = self.interval
        i = np.arange(self.coeffs.size)
        return float((2 / (b - a)) ** 2 * np.sum(np.abs(self.coeffs) * i**2 * (i**2 - 1) / 3))

    def sup_abs(self, interval: Interval | None = None) -> float:
        """Certified upper bound of |p| on ``interval`` (default: the series' own)."""
        return certified_sup(
            self, interval or self.interval, self.lipschitz(), curvature=self.curvature()
        )

    def error_bound(
        self,
        f: Callable[[np.ndarray], np.ndarray],
        f_lipschitz: float,
        f_curvature: float | None = None,
    ) -> float:
        """Certified upper bound of |p - f| on the interval, for ``f`` with |f'| <=
        ``f_lipschitz`` (and |f''| <= ``f_curvature``, if given) there."""
        curv = None if f_curvature is None else self.curvature() + f_curvature
        return certified_sup(
            lambda x: self(x) - f(x), self.interval, self.lipschitz() + f_lipschitz, curvature=curv
        )

    # -- the plan ---------------------------------------------------------------------------------
    def _map(self, input_scale: float) -> tuple[float, float]:
        """(k, c) with t / 2 = k * ct + c for a ciphertext holding x * input_scale."""
        a, b = self.interval
        return 1 / ((b - a) * input_scale), -(a + b) / (2 * (b - a))

    def map_levels(self, input_scale: float = 1.0) -> int:
        """Levels the change of variable costs: none when 1 / ((b - a) input_scale) is an
        integer (a series on [-1, 1] applied to a ciphertext holding x / 2, for instance)."""
        return 0 if _is_int(self._map(input_scale)[0]) else 1

    def _plan(self, vector_scale: bool) -> _Plan:
        if vector_scale not in self._plans:
            self._plans[vector_scale] = _make_plan(self.coeffs, vector_scale)
        return self._plans[vector_scale]

    def depth(self, vector_scale: bool = False, input_scale: float = 1.0) -> int:
        """Levels an evaluation consumes (with ``vector_scale``: when ``scale=`` is given)."""
        return self.map_levels(input_scale) + self._plan(vector_scale).depth

    def mults(self, vector_scale: bool = False) -> int:
        """Ciphertext x ciphertext multiplications an evaluation performs."""
        p = self._plan(vector_scale)
        return len(p.basis) + p.splits

    # -- ciphertexts ------------------------------------------------------------------------------
    def evaluate(
        self,
        lm: LevelManager,
        ct: Ciphertext,
        *,
        input_scale: float = 1.0,
        scale: np.ndarray | None = None,
    ) -> Ciphertext:
        """p(x) slot-wise for ``ct`` holding x * ``input_scale``; with ``scale`` (a slot vector,
        entries in [-1, 1]) p(x) * scale, the vector folded into the coefficient products, so
        it costs no extra level (a 0/1 mask this way zeroes padding slots for free)."""
        k, c = self._map(input_scale)
        half_t = ct if k == 1 else lm.mul(ct, int(k) if _is_int(k) else k)
        if c:
            half_t = lm.add(half_t, c)
        plan = self._plan(scale is not None)
        out = _evaluate(plan.root, _Basis(lm, half_t), scale)
        if not isinstance(out, Ciphertext):
            raise AssertionError("a series of degree >= 1 evaluates to a ciphertext")
        return out


def _make_plan(coeffs: np.ndarray, vector_scale: bool) -> _Plan:
    d = coeffs.size - 1
    baby = 1 << math.ceil(math.log2(d + 1) / 2)  # ~sqrt(d): Paterson-Stockmeyer's balance
    root = _build(coeffs, math.ceil(math.log2(d + 1)), baby, vector_scale)
    basis: set[int] = set()
    splits = 0

    def need(i: int) -> None:  # the T_i a _Basis will compute to reach T_i
        if i < 2 or i in basis:
            return
        basis.add(i)
        a = 1 << (i.bit_length() - 1)
        if a == i:
            need(i // 2)
        else:
            need(a), need(i - a), need(2 * a - i)

    def walk(node: _Node) -> None:
        nonlocal splits
        if isinstance(node, _Leaf):
            for i, _ in node.terms:
                need(i)
            return
        need(node.m)
        if not _constant(node.q):
            splits += 1
        walk(node.q), walk(node.r)

    walk(root)
    return _Plan(root, _depth(root, vector_scale), frozenset(basis), splits)


def _constant(node: _Node) -> bool:
    return isinstance(node, _Leaf) and not node.terms


def _term_depth(i: int, c: float, vector_scale: bool) -> int:
    return _tdepth(i) + (1 if vector_scale or not _is_int(2 * c) else 0)  # c T_i = 2c H_i


def _depth(node: _Node, vs: bool) -> int:
    if isinstance(node, _Leaf):
        return max((_term_depth(i, c, vs) for i, c in node.terms), default=0)
    if _constant(node.q):
        top = _term_depth(node.m, node.q.const, vs)
    else:
        top = max(_depth(node.q, vs), _tdepth(node.m)) + 1
    return max(top, _depth(node.r, vs))


def _build(c: np.ndarray, budget: int, baby: int, vs: bool) -> _Node:
    nz = np.flatnonzero(c)
    d = int(nz[-1]) if nz.size else 0
    terms = tuple((int(i), float(c[i])) for i in nz if i >= 1)
    leaf = _Leaf(terms, float(c[0]))
    fits = all(i <= baby or i & (i - 1) == 0 for i, _ in terms)
    if fits and _depth(leaf, vs) <= budget:
        return leaf
    m = 1 << (d.bit_length() - 1)
    if m < 2 or _tdepth(m) + 1 > budget:
        raise AssertionError(f"no plan of depth {budget} for degree {d}")  # cannot happen
    q, r = _divide(c[: d + 1], m)
    qsum = float(np.sum(np.abs(q))) / SAFE  # bounds the quotient's values
    qscale = 1 if qsum <= 1 else 1 << math.ceil(math.log2(qsum))
    return _Split(m, _build(q / qscale, budget - 1, baby, vs), _build(r, budget, baby, vs), qscale)


def _divide(c: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """c = q T_m + r in the Chebyshev basis, for m <= deg < 2m (T_m T_j = (T_m+j + T_m-j)/2)."""
    d = c.size - 1
    q = np.empty(d - m + 1)
    q[0] = c[m]
    q[1:] = 2 * c[m + 1 :]
    r = c[:m].copy()
    for j in range(1, d - m + 1):
        r[m - j] -= c[m + j]
    return q, r


class _Basis:
    """H_i = T_i(t) / 2, computed on demand at the minimal depth ceil(log2 i), each once, from
    H_j of its own parity and powers of two only: H_2a = 4 H_a^2 - 1/2 and
    H_i = 4 H_a H_(i-a) - H_(2a-i), integer factors again. Halving keeps every basis element
    in [-1/2, 1/2]: T_i reaches +-1 inside the interval, where noise would push a bootstrap
    input past 1."""

    def __init__(self, lm: LevelManager, half_t: Ciphertext) -> None:
        self.lm = lm
        self.H = {1: half_t}

    def __getitem__(self, i: int) -> Ciphertext:
        if i not in self.H:
            lm = self.lm
            a = 1 << (i.bit_length() - 1)
            if a == i:
                prod = lm.square(self[i // 2])
                self.H[i] = lm.sub(lm.mul(prod, 4), 0.5)
            else:
                prod = lm.mul(self[a], self[i - a])
                self.H[i] = lm.sub(lm.mul(prod, 4), self[2 * a - i])
        return self.H[i]


def _evaluate(node: _Node, T: _Basis, scale: np.ndarray | None) -> Ciphertext | np.ndarray | float:
    lm = T.lm

    def times(c: float) -> np.ndarray | float:
        if scale is None:
            return c
        v = c * scale
        v[np.abs(v) < TINY] = 0.0  # OpenFHE refuses to encode values far below its scale
        return v

    if isinstance(node, _Leaf):
        acc = None
        for i, c in node.terms:
            term = lm.mul(T[i], times(2 * c))  # c T_i = 2c H_i
            acc = term if acc is None else lm.add(acc, term)
        if node.const:
            return times(node.const) if acc is None else lm.add(acc, times(node.const))
        return acc if acc is not None else times(0.0)
    if _constant(node.q):
        prod = lm.mul(lm.mul(T[node.m], times(2 * node.q.const)), node.qscale)
    else:
        q = _evaluate(node.q, T, scale)
        prod = lm.mul(lm.mul(q, T[node.m]), 2 * node.qscale)  # q T_m = 2 q H_m
    r = _evaluate(node.r, T, scale)
    return prod if _is_zero(r) else lm.add(prod, r)


def _is_zero(v: Ciphertext | np.ndarray | float) -> bool:
    return not isinstance(v, Ciphertext) and not np.any(v)
