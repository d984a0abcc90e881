"""Level management: refresh ciphertexts where depth runs out, and know how often beforehand.

Every algorithm in :mod:`privlearn.approx` does its arithmetic through a :class:`LevelManager`.
Before an operation that consumes a level, the manager checks each ciphertext operand and, when
too few levels are left, refreshes it by the caller's policy:

- ``"bootstrap"``: ``ev.bootstrap`` (a ciphertext is refreshed while it still has the one level
  bootstrapping needs);
- ``"refresh"``: a callback, typically ``client.refresh`` (decrypt and re-encrypt on the data
  owner's side, as in Lattigo's ``sk_bootstrapper``);
- ``"none"``: nothing; running out of levels raises :class:`~privlearn.he.LevelError`.

A ciphertext used by several products (a polynomial's basis element) is refreshed once.

Contract for ``"bootstrap"``: every ciphertext the algorithms hand to the manager holds values
in [-1, 1] (the input contract of :meth:`Evaluator.bootstrap`). The algorithms here keep that
invariant by scaling; the simulator checks it.

:func:`plan` runs an algorithm on a :class:`SymbolicEvaluator`, which applies the same level
rules and records the same costs as the real backends but computes nothing, and so reports
depth, operation counts and the number of bootstraps (or refreshes) before anything is
encrypted: the role of Lattigo's ``polynomial_evaluator_sim``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from privlearn.he import (
    Ciphertext,
    CKKSParams,
    Counts,
    Evaluator,
    LevelError,
    Operand,
    is_integer_scalar,
)

Policy = Literal["bootstrap", "refresh", "none"]


class LevelManager:
    """The evaluator's arithmetic, with refreshes placed where levels run out.

    ``refresh``: for policy ``"refresh"``, a function ciphertext -> fresh ciphertext (e.g.
    ``client.refresh``); it is called with ciphertexts whose values the data owner may see.
    """

    def __init__(
        self,
        ev: Evaluator,
        policy: Policy = "none",
        refresh: Callable[[Ciphertext], Ciphertext] | None = None,
    ) -> None:
        if policy not in ("bootstrap", "refresh", "none"):
            raise ValueError(f"policy must be 'bootstrap', 'refresh' or 'none', got {policy!r}")
        if policy == "refresh" and refresh is None:
            raise ValueError("policy 'refresh' needs a refresh callback (e.g. client.refresh)")
        if policy == "bootstrap" and not (ev.params.bootstrappable and ev.can_bootstrap):
            raise ValueError(
                f"policy 'bootstrap' needs a bootstrappable preset and bootstrapping "
                f"keys; {ev.params.name} with this bundle has none"
            )
        self.ev = ev
        self.policy = policy
        self._refresh = refresh
        self._done: weakref.WeakKeyDictionary[Ciphertext, Ciphertext] = weakref.WeakKeyDictionary()
        self.refreshes = 0

    @property
    def params(self) -> CKKSParams:
        return self.ev.params

    @property
    def spare(self) -> int:
        """Levels a ciphertext must keep so that it can still be refreshed later."""
        return 1 if self.policy == "bootstrap" else 0

    def ready(self, ct: Ciphertext, need: int = 1) -> Ciphertext:
        """``ct``, or its refreshed copy, with ``need`` levels to spend (plus the spare)."""
        if self.policy == "none" or ct.level >= need + self.spare:
            return ct
        if ct in self._done:
            return self._done[ct]
        if self.policy == "bootstrap":
            if ct.level < 1:
                raise LevelError(
                    f"a level-{ct.level} ciphertext can no longer be bootstrapped; "
                    "it was produced outside the level manager"
                )
            out = self.ev.bootstrap(ct)
        else:
            out = self._refresh(ct)
        if out.level < need + self.spare:
            raise LevelError(
                f"an operation needs {need} level(s) but a refreshed ciphertext has "
                f"{out.level - self.spare} to spend"
            )
        self.refreshes += 1
        self._done[ct] = out
        return out

    # -- arithmetic: level-consuming operations refresh their operands first -------------------
    def mul(self, a: Ciphertext, b: Operand, *, rescale: bool = True) -> Ciphertext:
        if not isinstance(b, Ciphertext) and _is_scalar(b) and is_integer_scalar(b):
            return self.ev.mul(a, b)
        a = self.ready(a)
        if isinstance(b, Ciphertext):
            b = self.ready(b)
        return self.ev.mul(a, b, rescale=rescale)

    def square(self, a: Ciphertext) -> Ciphertext:
        a = self.ready(a)
        return self.ev.mul(a, a)

    def add(self, a: Ciphertext, b: Operand) -> Ciphertext:
        return self.ev.add(a, b)

    def sub(self, a: Ciphertext, b: Operand) -> Ciphertext:
        return self.ev.sub(a, b)

    def neg(self, a: Ciphertext) -> Ciphertext:
        return self.ev.neg(a)

    def rotate(self, a: Ciphertext, k: int) -> Ciphertext:
        return self.ev.rotate(a, k)

    def rotate_many(self, a: Ciphertext, ks: Iterable[int]) -> dict[int, Ciphertext]:
        return self.ev.rotate_many(a, ks)


def _is_scalar(b: Any) -> bool:
    return np.ndim(b) == 0


class SymbolicEvaluator(Evaluator):
    """An Evaluator that only tracks levels and counts: same rules, same cost records, no data.

    Not a backend: it has no client and no keys. Use :meth:`input` for a ciphertext handle.
    """

    backend_name = "symbolic"

    def __init__(
        self, params: CKKSParams, rotations: Iterable[int] = (), *, bootstrap: bool | None = None
    ) -> None:
        rotations = rotations if rotations else range(1, params.slots)
        boot = params.bootstrappable if bootstrap is None else bootstrap
        super().__init__(params, rotations, conjugation=True, bootstrap=boot)

    def input(self, level: int | None = None) -> Ciphertext:
        """A handle standing for a fresh ciphertext at ``level`` (default: the top)."""
        level = self.params.depth if level is None else level
        if not 0 <= level <= self.params.depth:
            raise LevelError(f"level must be in 0..{self.params.depth}, got {level}")
        return self._handle(None, level)

    def _raw_to_bytes(self, raw: Any) -> bytes:
        raise TypeError("symbolic ciphertexts hold no data")

    def _raws_from_bytes(self, payloads: list[bytes], shapes: list[tuple[int, int]]) -> list:
        raise TypeError("symbolic ciphertexts hold no data")

    def _p_none(self, *args: Any) -> None:
        return None

    _p_neg = _p_add_ct = _p_add_scalar = _p_add_plain = _p_mul_int = _p_none
    _p_mul_ct = _p_mul_scalar = _p_mul_plain = _p_rescale = _p_rotate = _p_none
    _p_conjugate = _p_level_down = _p_bootstrap = _p_none

    def _p_rotate_hoisted(self, ct: Ciphertext, rs: list[int]) -> list[None]:
        return [None] * len(rs)


@dataclass(frozen=True)
class Plan:
    """What a computation will cost, known before it runs.

    ``depth``: levels consumed from input to output when nothing is refreshed (``None`` when
    the computation needed refreshes, where depth is no longer one number); ``refreshes``:
    bootstraps (or refresh callbacks) the policy placed; ``counts``: every operation.
    """

    params: str
    policy: str
    input_level: int
    output_level: int
    depth: int | None
    refreshes: int
    counts: Counts

    @property
    def mults(self) -> int:
        """Ciphertext x ciphertext multiplications."""
        return self.counts["mult"]

    def as_dict(self) -> dict:
        return {
            "params": self.params,
            "policy": self.policy,
            "input_level": self.input_level,
            "output_level": self.output_level,
            "depth": self.depth,
            "refreshes": self.refreshes,
            **self.counts.as_dict(),
        }


def plan(
    fn: Callable[[LevelManager, Ciphertext], Ciphertext],
    params: CKKSParams,
    *,
    policy: Policy = "none",
    input_level: int | None = None,
) -> Plan:
    """Dry-run ``fn(lm, ct)`` on a :class:`SymbolicEvaluator` for ``params``.

    ``policy="bootstrap"`` counts the bootstraps the computation needs; ``"refresh"`` counts
    client refreshes (to the top level); ``"none"`` gives the pure depth (and raises
    :class:`LevelError` if ``params`` has too little).
    """
    ev = SymbolicEvaluator(params)
    refresh = (lambda ct: ev.input()) if policy == "refresh" else None
    lm = LevelManager(ev, policy, refresh=refresh)
    ct = ev.input(input_level)
    with ev.cost.measure() as counts:
        out = fn(lm, ct)
    depth = ct.level - out.level if lm.refreshes == 0 else None
    return Plan(params.name, policy, ct.level, out.level, depth, lm.refreshes, counts)
