"""scikit-learn's own estimator checks, on the simulator (slow: most checks fit afresh).

Every check scikit-learn runs on a classifier whose ``fit`` takes no ``sample_weight``
passes (55 of 55 with scikit-learn 1.7), so ``EXPECTED_FAILURES`` is empty; a check that
starts failing must be fixed, or listed there with its reason (it then runs as xfail)."""

from __future__ import annotations

from functools import partial

import pytest
from sklearn.utils.estimator_checks import estimator_checks_generator

from privlearn.transfer.estimator import EncryptedSoftmaxClassifier

CHECKED = EncryptedSoftmaxClassifier(
    backend="simulator", preset="toy-n12", insecure_for_testing=True, progress=False
)
EXPECTED_FAILURES: dict[str, str] = {}
CHECKS = list(
    estimator_checks_generator(CHECKED, expected_failed_checks=EXPECTED_FAILURES, mark="xfail")
)


def _name(check) -> str:
    check = check.func if isinstance(check, partial) else check
    return getattr(check, "__name__", "estimator")


@pytest.mark.slow
@pytest.mark.parametrize(("estimator", "check"), CHECKS, ids=_name)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
