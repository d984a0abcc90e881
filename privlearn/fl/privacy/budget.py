"""A run's privacy budget: how clients enter a round (for the accountant), the default delta,
the noise multiplier (given, or calibrated to a target epsilon over the planned rounds), the
epsilon after each round, and where an explicit noise multiplier must stop."""

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


@dataclass(frozen=True)
class Budget:
    noise_multiplier: float
    delta: float
    participation: Participation
    accountant: str
    target_epsilon: float | None
    calibrated: bool  # the multiplier was calibrated to the target over the planned rounds

    def epsilon(self, rounds: int) -> float:
        """User-level epsilon at delta after `rounds` noisy rounds."""
        return _epsilon(
            self.noise_multiplier, rounds, self.delta, self.participation, self.accountant
        )

    def allows(self, rounds: int) -> bool:
        """Whether `rounds` rounds stay within the target (always, without one)."""
        return self.target_epsilon is None or self.epsilon(rounds) <= self.target_epsilon


def plan_budget(
    noise_multiplier: float | None,
    target_epsilon: float | None,
    delta: float,
    p: Participation,
    accountant: str,
    rounds: int,
) -> Budget:
    """The budget of a run of `rounds` rounds; a ValueError when it cannot work: no noise
    multiplier and no target, a target no multiplier reaches, or one the given multiplier
    spends within the first round."""
    check_delta(delta)
    if target_epsilon is not None:
        check_epsilon(target_epsilon)
    if noise_multiplier is None:
        if target_epsilon is None:
            raise ValueError("--dp central needs --noise-multiplier or --target-epsilon")
        z = noise_multiplier_for(target_epsilon, rounds, delta, p, accountant)
        return Budget(z, delta, p, accountant, target_epsilon, True)
    if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise ValueError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier}")
    budget = Budget(noise_multiplier, delta, p, accountant, target_epsilon, False)
    if not budget.allows(1):
        raise ValueError(
            f"noise_multiplier {noise_multiplier} spends epsilon {budget.epsilon(1):.4g} in one "
            f"round, more than the target {target_epsilon}: raise it or leave it unset to "
            "calibrate it to the target"
        )
    return budget
