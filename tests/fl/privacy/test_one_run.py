"""One-run auditing (Steinke, Nasr, Jagielski 2023): the bound on hand cases, a mechanism of
known eps, and example and client canaries in a non-private federated run."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from privlearn.fl import tree as T
from privlearn.fl.aggregate import chain, clip_by_norm, sgd, weighted_mean
from privlearn.fl.algorithms import LocalSGD
from privlearn.fl.algorithms.fedavg import fedavg
from privlearn.fl.privacy.audit.one_run import (
    audit,
    audit_grid,
    canary_clients,
    canary_directions,
    client_canary_scores,
    epsilon_lower_bound,
    example_scores,
    guesses,
    inclusion,
    insert_example_canaries,
    mislabelled_canaries,
    p_value,
)
from privlearn.fl.run import Experiment, RunConfig


def test_all_correct_guesses_match_the_binomial_tail_by_hand():
    # r right of r: P[Bin(r, q) >= r] = q^r = beta at q = beta^(1/r), eps = log(q / (1 - q))
    for r in (10, 50, 200):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(1000, r, r, beta=0.05) == pytest.approx(
            math.log(q / (1 - q)), abs=1e-6
        )
    assert epsilon_lower_bound(1000, 10, 10) == pytest.approx(1.0519, abs=1e-4)


def test_the_bound_is_the_edge_of_the_tail_test():
    m, r, v = 1000, 200, 150
    eps = epsilon_lower_bound(m, r, v)
    q = lambda e: 1 / (1 + math.exp(-e))  # noqa: E731
    assert binom.sf(v - 1, r, q(eps)) < 0.05 <= binom.sf(v - 1, r, q(eps + 1e-6))


def test_chance_level_guesses_give_no_bound():
    assert epsilon_lower_bound(1000, 1000, 500) == 0.0
    assert epsilon_lower_bound(1000, 100, 52) == 0.0
    assert epsilon_lower_bound(10, 0, 0) == 0.0


def test_the_bound_grows_with_correct_guesses_and_with_guesses_at_fixed_accuracy():
    by_v = [epsilon_lower_bound(1000, 100, v) for v in (60, 70, 80, 90, 100)]
    assert all(a < b for a, b in zip(by_v, by_v[1:], strict=False))
    by_r = [epsilon_lower_bound(1000, r, int(0.8 * r)) for r in (20, 100, 500)]
    assert all(a < b for a, b in zip(by_r, by_r[1:], strict=False))


def test_delta_weakens_the_bound():
    pure = epsilon_lower_bound(1000, 100, 95)
    assert 0 < epsilon_lower_bound(1000, 100, 95, delta=1e-5) < pure
    assert p_value(1000, 100, 95, 1.0, 1e-5) > p_value(1000, 100, 95, 1.0, 0.0)


def test_randomised_response_with_eps_one_is_bounded_below_one():
    m, eps = 1000, 1.0
    inc = inclusion(m, seed=0)
    flip = np.random.default_rng(1).random(m) < 1 / (1 + math.e)  # eps-DP on each bit
    out = np.where(inc ^ flip, 1.0, -1.0)
    k_plus = int((out > 0).sum())
    a = audit(out, inc, k_plus, m - k_plus)
    assert a["guesses"] == m and 0 < a["epsilon_lower_bound"] < eps


def test_guesses_take_the_extremes_and_abstain_between():
    g = guesses([0.5, 3.0, -1.0, 2.0, 0.0], 2, 1)
    np.testing.assert_array_equal(g, [0, 1, -1, 1, 0])


def test_grid_pays_a_union_bound():
    inc = inclusion(200, seed=3)
    scores = inc + np.random.default_rng(4).normal(0, 0.5, 200)
    one = audit(scores, inc, 20, 20)
    grid = audit_grid(scores, inc, [(20, 20), (40, 40), (80, 80)])
    assert grid["union_bound"] == 3 and grid["beta"] == 0.05
    at_20 = audit(scores, inc, 20, 20, beta=0.05 / 3)["epsilon_lower_bound"]
    assert at_20 <= one["epsilon_lower_bound"] and grid["epsilon_lower_bound"] >= at_20


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="beta"):
        epsilon_lower_bound(10, 5, 5, beta=0.0)
    with pytest.raises(ValueError, match="v, r, m"):
        p_value(10, 5, 6, 1.0)
    with pytest.raises(ValueError, match="k_plus, k_minus"):
        guesses(np.zeros(4), 3, 2)
    with pytest.raises(ValueError, match="scores, included"):
        audit(np.zeros(4), np.zeros(3, dtype=bool), 1, 1)
    with pytest.raises(ValueError, match="norm"):
        canary_clients({}, np.zeros(0, dtype=bool), 0.0, 1.0)


def _cfg(**kw) -> RunConfig:
    base = dict(
        dataset="digits",
        partition="homo",
        n_clients=4,
        sampling="all",
        model="mlp",
        hidden=[64],
        rounds=4,
        epochs=10,
        batch_size=16,
        lr=0.2,
        seed=0,
    )
    return RunConfig(**{**base, **kw})


def _train(exp: Experiment):
    server, bank = exp.init_state()
    start = exp.algo.global_model(server)
    for r in range(exp.cfg.rounds):
        server, _, _ = exp.round(server, bank, r)
    return start, exp.algo.global_model(server)


def test_example_canaries_in_a_non_private_run_give_a_clear_bound():
    exp = Experiment.build(_cfg(hidden=[128], rounds=5, epochs=20))
    few = dataclasses.replace(exp.data, clients=[c[:100] for c in exp.data.clients])  # overfit
    exp = dataclasses.replace(exp, data=few)
    m = 100
    x, y = mislabelled_canaries(exp.data.x_test[:m], exp.data.y_test[:m], 10, seed=0)
    assert (y != exp.data.y_test[:m]).all()
    inc = inclusion(m, seed=0)
    ds, rows = insert_example_canaries(exp.data, x, y, inc, seed=0)
    assert (rows >= 0).sum() == inc.sum()
    held = np.concatenate(ds.clients)
    assert set(rows[rows >= 0]) <= set(held) and (ds.y_train[rows[rows >= 0]] == y[inc]).all()
    start, final = _train(dataclasses.replace(exp, data=ds))
    scores = example_scores(exp.model, final, x, y, initial=start)
    a = audit(scores, inc, 20, 20)
    # every one of 40 guesses right would give 2.56; a non-private run memorises canaries
    assert a["epsilon_lower_bound"] > 1.5, a


def test_client_canaries_in_a_non_private_run_give_a_clear_bound():
    cfg = _cfg(model="mclr", rounds=5, epochs=2)
    exp = Experiment.build(cfg)
    params, _ = exp.model.init(torch.Generator().manual_seed(0))
    m = 60
    dirs = canary_directions(params, m, seed=0)
    assert T.flat_rows(dirs).norm(dim=1) == pytest.approx(torch.ones(m, dtype=torch.float64))
    inc = inclusion(m, seed=1)
    weight = float(np.mean([len(c) for c in exp.data.clients]))
    # canaries first, then the clip DP-FedAvg applies to every client (canaries at the clip)
    server = chain(
        canary_clients(dirs, inc, norm=0.5, weight=weight),
        clip_by_norm(0.5),
        weighted_mean(),
        sgd(1.0),
    )
    algo = fedavg(exp.model, LocalSGD(cfg.lr), server=server)
    start, final = _train(dataclasses.replace(exp, algo=algo))
    change = T.sub(final[0], start[0])
    scores = client_canary_scores(change, dirs)
    a = audit(scores, inc, 10, 10)
    assert a["correct"] == 20 and a["epsilon_lower_bound"] > 1.0, a


def test_the_ceiling_is_the_bound_of_all_guesses_right_and_falls_with_delta():
    inc = np.arange(100) % 2 == 0
    perfect = audit(np.where(inc, 1.0, -1.0), inc, 20, 20)
    assert perfect["correct"] == 40 and perfect["epsilon_ceiling"] == perfect["epsilon_lower_bound"]
    noisy = audit(np.random.default_rng(0).normal(size=100), inc, 20, 20)
    assert noisy["epsilon_lower_bound"] <= noisy["epsilon_ceiling"] == perfect["epsilon_ceiling"]
    assert audit(np.where(inc, 1.0, -1.0), inc, 20, 20, delta=5e-3)["epsilon_ceiling"] < 0.6
