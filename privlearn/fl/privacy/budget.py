"""A run's privacy budget: how the protected units (clients under central DP, records under
local DP) enter the noisy steps, the default delta, the noise multiplier (given, or
calibrated to a target epsilon over the planned rounds), the epsilon after each round, and
where an explicit noise multiplier must stop."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from privlearn.fl.privacy.accountant import (
    Participation,
    check_delta,
    check_epsilon,
    epsilon,
    noise_multiplier_for,
)

# what the accountant's epsilon does not bound, written next to it in the run's output
NOT_COVERED = (
    "the per-round train_loss each client reports (sent in the clear and averaged by sample "
    "weight)",
    "the sample counts (weights) clients upload, and which clients were rejected by screening "
    "or dropped as stragglers",
    "the number of rounds run and the data partition",
    "the hyper-parameters, the test-set evaluation and anything else computed outside the "
    "noisy aggregation",
)


def participation(sampling: str, n_clients: int, cohort: int, rate: float) -> Participation:
    """A client's participation in a round under the run's client sampling."""
    if sampling == "poisson":
        return Participation("poisson", rate)
    if sampling == "uniform":
        return Participation("fixed", population=n_clients, size=cohort)
    if sampling == "all":
        return Participation("every")
    raise ValueError(f"sampling {sampling!r} has no participation the accountant can describe")


def expected_clients(p: Participation, n_clients: int) -> float:
    """E, the expected cohort: the fixed denominator of the DP mean."""
    if p.kind == "poisson":
        return p.rate * n_clients
    return float(p.size if p.kind == "fixed" else n_clients)


def default_delta(n_units: int) -> float:
    """1 / N^1.1: below 1 / N, so that releasing one protected unit's data outright is not
    within the guarantee."""
    return 1.0 / n_units**1.1


@functools.lru_cache(maxsize=4096)
def _epsilon(z: float, steps: int, delta: float, p: Participation, accountant: str) -> float:
    return epsilon(z, steps, delta, p, accountant)


# a protected unit's kind: how it enters a noisy step, and how many such steps a round holds
Unit = tuple[Participation, int]


@dataclass(frozen=True)
class Budget:
    """A run's guarantee. `units` lists the distinct kinds of protected unit: one for
    user-level DP (a client, one noisy step a round); for sample-level DP one per distinct
    client size (a record, as many steps a round as its client's local work holds at most).
    The run's epsilon is the worst unit's, as if every client trained every round."""

    noise_multiplier: float
    delta: float
    units: tuple[Unit, ...]
    accountant: str
    target_epsilon: float | None
    calibrated: bool  # the multiplier was calibrated to the target over the planned rounds

    def epsilon(self, rounds: int) -> float:
        """Epsilon at delta after `rounds` rounds (the worst unit's)."""
        z, d, a = self.noise_multiplier, self.delta, self.accountant
        return max(_epsilon(z, rounds * s, d, p, a) for p, s in self.units)

    def allows(self, rounds: int) -> bool:
        """Whether `rounds` rounds stay within the target (always, without one)."""
        return self.target_epsilon is None or self.epsilon(rounds) <= self.target_epsilon

    def sampling(self) -> str:
        """The sampling assumption(s) behind the figure."""
        kinds = sorted({p.describe() for p, _ in self.units})
        return (
            kinds[0]
            if len(kinds) == 1
            else f"{len(self.units)} client sizes: "
            + "; ".join(kinds[:3])
            + (" ..." if len(kinds) > 3 else "")
        )


def _calibrate(target: float, rounds: int, delta: float, units, accountant: str) -> float:
    """The smallest multiplier under which every unit meets `target`: calibrated on the unit
    that spends most at z = 1, then raised for any other that still exceeds the target."""
    units = sorted(units, key=lambda u: -_epsilon(1.0, rounds * u[1], delta, u[0], accountant))
    z = 0.0
    for p, s in units:
        if z == 0.0 or _epsilon(z, rounds * s, delta, p, accountant) > target:
            z = max(z, noise_multiplier_for(target, rounds * s, delta, p, accountant))
    return z


def plan_budget(
    noise_multiplier: float | None,
    target_epsilon: float | None,
    delta: float,
    units: list[Unit],
    accountant: str,
    rounds: int,
) -> Budget:
    """The budget of a run of `rounds` rounds; a ValueError when it cannot work: no noise
    multiplier and no target, a target no multiplier reaches, or one the given multiplier
    spends within the first round."""
    check_delta(delta)
    units = tuple(dict.fromkeys(units))
    if target_epsilon is not None:
        check_epsilon(target_epsilon)
    if noise_multiplier is None:
        if target_epsilon is None:
            raise ValueError("--dp needs --noise-multiplier or --target-epsilon")
        z = _calibrate(target_epsilon, rounds, delta, units, accountant)
        return Budget(z, delta, units, accountant, target_epsilon, True)
    if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise ValueError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier}")
    budget = Budget(noise_multiplier, delta, units, accountant, target_epsilon, False)
    if not budget.allows(1):
        raise ValueError(
            f"noise_multiplier {noise_multiplier} spends epsilon {budget.epsilon(1):.4g} in one "
            f"round, more than the target {target_epsilon}: raise it or leave it unset to "
            "calibrate it to the target"
        )
    return budget
