"""The level planner: refreshes placed where depth runs out, and counted before running."""

from __future__ import annotations

import numpy as np
import pytest

from privlearn.approx.planner import LevelManager, SymbolicEvaluator, plan
from privlearn.approx.poly import ChebyshevSeries
from privlearn.he import PRESETS, ClientContext, Evaluator, LevelError

SERIES = ChebyshevSeries(np.r_[0.0, [0.9 / 16, 0.0] * 16][:32])  # odd, degree 31, |p| <= 0.9


def chain(lm, ct):
    """Deeper than any toy preset: the series applied 6 times (30 levels), on halved values."""
    for _ in range(6):
        ct = SERIES.scaled(0.5).evaluate(lm, ct, input_scale=0.5)
    return ct


@pytest.fixture(
    scope="module",
    params=["simulator", pytest.param("openfhe", marks=[pytest.mark.openfhe, pytest.mark.slow])],
)
def boot(request):
    client = ClientContext.create("toy-n12-boot", request.param, seed=0, insecure_for_testing=True)
    return client, Evaluator.from_bundle(
        client.public_bundle(bootstrap=True), insecure_for_testing=True
    )


def test_plan_predicts_the_bootstraps_a_run_places(boot):
    client, ev = boot
    x = np.linspace(-1, 1, client.slots)
    predicted = plan(chain, ev.params, policy="bootstrap")
    lm = LevelManager(ev, "bootstrap")
    with ev.cost.measure() as counts:
        out = chain(lm, client.encrypt(x / 2))
    assert lm.refreshes == predicted.refreshes == counts["bootstrap"] > 0
    assert counts.as_dict() == predicted.counts.as_dict()
    want = x
    for _ in range(6):
        want = SERIES(want)
    assert np.max(np.abs(2 * client.decrypt(out) - want)) < 1e-4  # bootstrap keeps ~20 bits


def test_refresh_callback_at_planned_points():
    client = ClientContext.create("toy-n12", "simulator", seed=0, insecure_for_testing=True)
    ev = Evaluator.from_bundle(client.public_bundle(), insecure_for_testing=True)
    calls = []

    def refresh(ct):
        calls.append(ct.level)
        return client.refresh(ct)

    lm = LevelManager(ev, "refresh", refresh=refresh)
    chain(lm, client.encrypt(np.linspace(-0.5, 0.5, client.slots)))
    assert len(calls) == plan(chain, ev.params, policy="refresh").refreshes > 0
    assert all(level < 5 for level in calls)  # refreshed only where the next step cannot fit


def test_without_a_policy_running_out_of_depth_raises():
    with pytest.raises(LevelError):
        plan(chain, PRESETS["toy-n12"])
    with pytest.raises(LevelError):
        plan(chain, PRESETS["n16-d28"])  # 28 < 30


def test_pure_depth_is_reported_when_it_fits():
    p = plan(lambda lm, ct: SERIES.evaluate(lm, ct, input_scale=0.5), PRESETS["toy-n12"])
    assert p.depth == 5 and p.refreshes == 0 and p.mults == SERIES.mults()


def test_manager_checks_its_policy():
    client = ClientContext.create("toy-n12", "simulator", insecure_for_testing=True)
    ev = Evaluator.from_bundle(client.public_bundle(), insecure_for_testing=True)
    with pytest.raises(ValueError, match="callback"):
        LevelManager(ev, "refresh")
    with pytest.raises(ValueError, match="bootstrappable"):
        LevelManager(ev, "bootstrap")
    with pytest.raises(ValueError, match="policy"):
        LevelManager(ev, "sometimes")


def test_a_shared_operand_is_refreshed_once():
    ev = SymbolicEvaluator(PRESETS["toy-n12-boot"])
    lm = LevelManager(ev, "bootstrap")
    ct = ev.level_down(ev.input(), 1)
    a, b = lm.mul(ct, ct), lm.mul(ct, 0.5)
    after = PRESETS["toy-n12-boot"].levels_after_bootstrap
    assert lm.refreshes == 1 and a.level == b.level == after - 1
