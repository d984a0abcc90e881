"""FL rounds under secure aggregation: the server step from the masked sum equals the one from
the rows, dropouts are survived or fail cleanly, and what needs rows is refused."""

import numpy as np
import pytest

from privlearn.fl.engine import TrainData, make_engine
from privlearn.fl.plan import LocalWork, Sampling, plan_round
from privlearn.fl.privacy.central import CentralDP
from privlearn.fl.privacy.secagg.masking import SecAggPlus
from privlearn.fl.rounds import SCREENING_OFF, SecureRound, init_federation, run_round, server_rng

from ..helpers import make, max_abs_diff


@pytest.fixture(scope="module")
def digits_dir():
    """digits over 16 clients (homogeneous): cohorts large enough for secure aggregation."""
    from privlearn.fl.data import DataSpec, build_federated

    return build_federated(DataSpec("digits", 16, "homo"), seed=0)


def rounds(algo, model, ds, n_rounds=2, secure=None, per_round=8):
    server, bank = init_federation(algo, model, ds.n_clients, 0)
    data = TrainData(ds.x_train, ds.y_train)
    eng = make_engine("vectorised")
    stats = []
    for r in range(n_rounds):
        plan = plan_round(ds.clients, Sampling("uniform", per_round), LocalWork(1, 16), 0, r)
        server, st = run_round(
            algo, eng, server, bank, plan, data, server_rng(0, r), round_idx=r, secure=secure
        )
        stats.append(st)
    return server, stats


@pytest.mark.parametrize(
    "name, hp",
    [
        ("fedavg", {}),
        ("fedprox", {"mu": 0.1}),
        ("fedadam", {}),
        ("fedavg", {"model": "mlp-bn"}),  # batch-norm statistics summed as w * buffers
    ],
)
def test_the_secure_step_equals_the_plain_one(name, hp, digits_dir):
    model, algo = make(name, digits_dir, **hp)
    plain, plain_stats = rounds(algo, model, digits_dir)
    secure, stats = rounds(algo, model, digits_dir, secure=SecureRound(SecAggPlus()))
    assert max_abs_diff(plain, secure) < 1e-5
    assert stats[-1].train_loss == pytest.approx(plain_stats[-1].train_loss, abs=1e-6)
    assert stats[-1].secure["screening"] == SCREENING_OFF
    assert stats[-1].secure["summed"] == 8 and stats[-1].secure["protocol"] == "secagg+"


def test_central_dp_adds_its_noise_once_to_the_secure_sum(digits_dir):
    from privlearn.fl.aggregate import chain, sgd
    from privlearn.fl.privacy.central import dp_mean

    spec = CentralDP(1.0, 0.5, 8, quantile=0.5, count_noise=2.0)
    model, algo = make("fedavg", digits_dir, server=chain(dp_mean(spec, seed=3), sgd(1.0)))
    plain, _ = rounds(algo, model, digits_dir)
    secure, _ = rounds(algo, model, digits_dir, secure=SecureRound(SecAggPlus()))
    assert max_abs_diff(plain["params"], secure["params"]) < 1e-5
    assert float(plain["opt"][0]["clip"]) == pytest.approx(float(secure["opt"][0]["clip"]))


def test_dropouts_are_survived_and_named(digits_dir):
    model, algo = make("fedavg", digits_dir)
    secure = SecureRound(SecAggPlus(), dropout=0.3, seed=1)
    _, stats = rounds(algo, model, digits_dir, n_rounds=3, secure=secure, per_round=10)
    for r, st in enumerate(stats):
        before, after = secure.drops(sorted(st.clients), r)
        assert st.skipped is None
        assert {x.client for x in st.rejected} == set(before)
        assert st.secure["summed"] == 10 - len(before)
        assert set(st.secure["flagged"]) == set(after)
    assert any(st.rejected for st in stats)


def test_too_many_dropouts_skip_the_round_and_keep_the_model(digits_dir):
    model, algo = make("fedavg", digits_dir)
    start, _ = rounds(algo, model, digits_dir, n_rounds=0)
    end, stats = rounds(
        algo, model, digits_dir, n_rounds=1, secure=SecureRound(SecAggPlus(), dropout=0.9, seed=0)
    )
    assert stats[0].skipped.startswith("secure aggregation failed")
    assert max_abs_diff(start, end) == 0.0


def test_algorithms_that_need_rows_are_refused(digits_dir):
    model, algo = make("scaffold", digits_dir)
    with pytest.raises(ValueError, match="needs each client's update"):
        rounds(algo, model, digits_dir, n_rounds=1, secure=SecureRound(SecAggPlus()))


def test_dropout_share_is_checked():
    with pytest.raises(ValueError, match="secagg_dropout"):
        SecureRound(SecAggPlus(), dropout=1.0)
    assert np.isclose(SecureRound(SecAggPlus()).dropout, 0.0)
