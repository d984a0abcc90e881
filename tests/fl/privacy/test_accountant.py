"""The accountant against independent implementations and closed forms."""

import math

import pytest
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp as opacus_rdp
from scipy.optimize import brentq
from scipy.stats import norm

from privlearn.fl.privacy.accountant import Participation, epsilon, noise_multiplier_for

# DP-SGD on MNIST as the TF-Privacy and Opacus tutorials configure it
Q, STEPS, Z, DELTA = 256 / 60000, 14062, 1.1, 1e-5
POISSON = Participation("poisson", Q)


def test_rdp_equals_opacus_rdp_on_the_mnist_tutorial_setting():
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    curve = opacus_rdp.compute_rdp(q=Q, noise_multiplier=Z, steps=STEPS, orders=orders)
    theirs, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=curve, delta=DELTA)
    assert epsilon(Z, STEPS, DELTA, POISSON) == pytest.approx(float(theirs), rel=1e-3)


def test_pld_agrees_with_opacus_prv_and_is_tighter_than_rdp():
    prv = PRVAccountant()
    prv.history = [(Z, Q, STEPS)]
    ours = epsilon(Z, STEPS, DELTA, POISSON, "pld")
    assert ours == pytest.approx(prv.get_epsilon(DELTA), rel=0.02)
    assert ours < epsilon(Z, STEPS, DELTA, POISSON, "rdp")


def _gaussian_exact_epsilon(mu: float, delta: float) -> float:
    """Balle & Wang (2018): the Gaussian mechanism of privacy parameter mu = 1/sigma is
    (eps, delta)-DP exactly when delta >= Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu)."""

    def gap(eps):
        return norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * norm.cdf(-mu / 2 - eps / mu) - delta

    return brentq(gap, 0.0, 100.0)


@pytest.mark.parametrize("z,steps", [(1.0, 1), (2.0, 10), (5.0, 100)])
def test_full_participation_against_the_analytic_gaussian(z, steps):
    # T Gaussian steps of multiplier z compose to one Gaussian of multiplier z / sqrt(T)
    exact = _gaussian_exact_epsilon(math.sqrt(steps) / z, DELTA)
    every = Participation("every")
    assert epsilon(z, steps, DELTA, every, "pld") == pytest.approx(exact, rel=0.01)
    rdp = epsilon(z, steps, DELTA, every, "rdp")
    assert exact <= rdp <= 1.3 * exact


def test_sampling_without_replacement_costs_more_than_poisson_but_less_than_every_step():
    fixed = Participation("fixed", population=1000, size=10)
    e_fixed = epsilon(1.0, 100, DELTA, fixed)
    assert epsilon(1.0, 100, DELTA, Participation("poisson", 0.01)) < e_fixed
    assert e_fixed < epsilon(1.0, 100, DELTA, Participation("every"))
    with pytest.raises(ValueError, match="PLD accountant does not support"):
        epsilon(1.0, 100, DELTA, fixed, "pld")


def test_no_noise_is_infinite_and_no_step_is_free():
    assert epsilon(0.0, 5, DELTA, POISSON) == math.inf
    assert epsilon(1.0, 0, DELTA, POISSON) == 0.0


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_calibrated_noise_meets_the_target_and_no_less_does(accountant):
    z = noise_multiplier_for(2.0, 500, DELTA, Participation("poisson", 0.02), accountant)
    p = Participation("poisson", 0.02)
    assert epsilon(z + 1e-4, 500, DELTA, p, accountant) <= 2.0
    assert epsilon(0.99 * z, 500, DELTA, p, accountant) > 2.0


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: epsilon(1.0, 10, 0.0, POISSON), "delta must be in"),
        (lambda: epsilon(1.0, 10, 1.0, POISSON), "delta must be in"),
        (lambda: epsilon(-1.0, 10, DELTA, POISSON), "noise multiplier"),
        (lambda: epsilon(1.0, 10, DELTA, POISSON, "moments"), "accountant must be"),
        (lambda: noise_multiplier_for(0.0, 10, DELTA, POISSON), "target epsilon"),
        (lambda: noise_multiplier_for(-1.0, 10, DELTA, POISSON), "target epsilon"),
        (lambda: noise_multiplier_for(1e-9, 10**6, DELTA, POISSON), "cannot be reached"),
        (lambda: Participation("poisson", 0.0), "rate must be in"),
        (lambda: Participation("fixed", population=5, size=6), "size <= population"),
        (lambda: Participation("shuffle"), "poisson, fixed or every"),
    ],
)
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
