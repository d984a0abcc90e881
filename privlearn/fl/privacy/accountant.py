"""Privacy accounting: the epsilon a sequence of noisy steps spends, through dp-accounting.

A guarantee is only as good as its sampling assumption, so every figure names it: a
`Participation` says how a protected unit (a client for user-level DP, a record for
sample-level DP) can enter each noisy step. Poisson sampling gets amplification by
subsampling (add/remove-one neighbours); a fixed-size sample drawn without replacement is
accounted under replace-one neighbours (RDP only: dp-accounting's PLD does not support it);
a unit that takes part in every step gets no amplification.

RDP is a valid upper bound that is a little loose; PLD is tighter (its discretisation is
pessimistic). Both are offered; they are cross-checked in the tests.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dp_accounting as dpa

ACCOUNTANTS = ("rdp", "pld")
MAX_NOISE_MULTIPLIER = 1e4  # calibration searches below this; a target needing more is refused
# and, under fixed-size sampling, above this: there dp-accounting's RDP divides by a zero
# noise multiplier, so a target that less noise would meet gets this much (more noise errs on
# the safe side). Elsewhere the search starts at 0 (PLD at tiny noise exhausts memory)
MIN_NOISE_MULTIPLIER = 1e-2


@dataclass(frozen=True)
class Participation:
    """How one protected unit enters a noisy step.

    kind: "poisson" (independently with probability `rate`), "fixed" (a sample of `size` of
    the `population` drawn without replacement), or "every" (in every step)."""

    kind: str
    rate: float = 1.0
    population: int | None = None
    size: int | None = None

    def __post_init__(self):
        if self.kind == "poisson":
            if not 0 < self.rate <= 1:
                raise ValueError(f"a Poisson sampling rate must be in (0, 1], got {self.rate}")
        elif self.kind == "fixed":
            if not (
                isinstance(self.population, int)
                and isinstance(self.size, int)
                and 1 <= self.size <= self.population
            ):
                raise ValueError(
                    "fixed-size sampling needs 1 <= size <= population, got "
                    f"size={self.size}, population={self.population}"
                )
        elif self.kind != "every":
            raise ValueError(f"participation must be poisson, fixed or every, got {self.kind!r}")

    def describe(self) -> str:
        """The sampling assumption, as the output writes it next to epsilon."""
        if self.kind == "poisson":
            return f"Poisson sampling, rate {self.rate:.6g} (add/remove-one neighbours)"
        if self.kind == "fixed":
            return (
                f"{self.size} of {self.population} drawn without replacement per step "
                "(replace-one neighbours)"
            )
        return "in every step (no amplification by sampling)"


@contextlib.contextmanager
def _quiet():
    """dp-accounting logs a warning for each RDP order whose series does not converge (low
    noise, large sampling rates) and leaves that order out, which keeps the bound valid: the
    warnings, dozens a call, would bury a run's output."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _event(noise_multiplier: float, steps: int, p: Participation) -> dpa.DpEvent:
    # dp-accounting is imported where it is used: every client process (Flower's ClientApps)
    # imports this module through the algorithms, and only a DP run needs the library
    import dp_accounting as dpa

    step = dpa.GaussianDpEvent(noise_multiplier)
    if p.kind == "poisson" and p.rate < 1:
        step = dpa.PoissonSampledDpEvent(p.rate, step)
    elif p.kind == "fixed" and p.size < p.population:
        step = dpa.SampledWithoutReplacementDpEvent(p.population, p.size, step)
    return dpa.SelfComposedDpEvent(step, steps)


def _fresh(p: Participation, accountant: str, coarse: bool = False) -> dpa.PrivacyAccountant:
    import dp_accounting as dpa
    from dp_accounting import pld, rdp

    relation = (
        dpa.NeighboringRelation.REPLACE_ONE
        if p.kind == "fixed"
        else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    if accountant == "rdp":
        return rdp.RdpAccountant(neighboring_relation=relation)
    if p.kind == "fixed":
        raise ValueError(
            "the PLD accountant does not support fixed-size sampling without replacement; "
            "use the RDP accountant or Poisson sampling"
        )
    # a coarser grid is still pessimistic, so calibrating on it errs on the side of more noise
    return pld.PLDAccountant(relation, value_discretization_interval=1e-3 if coarse else 1e-4)


def check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def check_epsilon(target: float) -> None:
    if not (isinstance(target, (int, float)) and 0 < target < math.inf):
        raise ValueError(f"a target epsilon must be a finite number > 0, got {target!r}")


def _check(noise_multiplier: float, steps: int, delta: float, accountant: str) -> None:
    if not (isinstance(noise_multiplier, (int, float)) and 0 <= noise_multiplier < math.inf):
        raise ValueError(f"noise multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    check_delta(delta)
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")


def epsilon(
    noise_multiplier: float,
    steps: int,
    delta: float,
    participation: Participation,
    accountant: str = "rdp",
) -> float:
    """Epsilon at `delta` after `steps` Gaussian steps of `noise_multiplier` (noise standard
    deviation over sensitivity); inf without noise, 0 before the first step."""
    _check(noise_multiplier, steps, delta, accountant)
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = _fresh(participation, accountant)
    with _quiet():
        acc.compose(_event(noise_multiplier, steps, participation))
        return float(acc.get_epsilon(delta))


def noise_multiplier_for(
    target_epsilon: float,
    steps: int,
    delta: float,
    participation: Participation,
    accountant: str = "rdp",
) -> float:
    """The smallest noise multiplier whose `steps` steps spend at most `target_epsilon` at
    `delta` (within 1e-4, from above; under fixed-size sampling at least MIN_NOISE_MULTIPLIER);
    a ValueError when even MAX_NOISE_MULTIPLIER spends more."""
    check_epsilon(target_epsilon)
    _check(0.0, steps, delta, accountant)
    if steps == 0:
        return 0.0
    if epsilon(MAX_NOISE_MULTIPLIER, steps, delta, participation, accountant) > target_epsilon:
        raise ValueError(
            f"epsilon {target_epsilon} at delta {delta} cannot be reached in {steps} steps "
            f"({participation.describe()}) with a noise multiplier up to "
            f"{MAX_NOISE_MULTIPLIER:g}: raise the target or delta, or take fewer steps"
        )
    low = MIN_NOISE_MULTIPLIER if participation.kind == "fixed" else 0.0
    if low and epsilon(low, steps, delta, participation, accountant) <= target_epsilon:
        return low
    import dp_accounting as dpa

    with _quiet():
        z = dpa.calibrate_dp_mechanism(
            lambda: _fresh(participation, accountant, coarse=True),
            lambda s: _event(s, steps, participation),
            target_epsilon,
            delta,
            bracket_interval=dpa.ExplicitBracketInterval(low, MAX_NOISE_MULTIPLIER),
            tol=1e-4,
        )
    return float(z)
