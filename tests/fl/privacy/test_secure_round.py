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
        assert st.secure["unfinished"] == [
            f"client {c}: dropped before unmasking (its input is in the sum)" for c in sorted(after)
        ]
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


SECURE_RUN = {
    "dataset": "digits",
    "n_clients": 12,
    "clients_per_round": 8,
    "batch_size": 32,
    "lr": 0.1,
    "model": "mclr",  # convex: the float32 rounding difference does not grow over rounds
    "secure_aggregation": "masking",
    "secagg_dropout": 0.2,
}


def test_a_secure_run_reports_what_the_server_saw_and_resumes_exactly(tmp_path):
    from privlearn.fl.run import RunConfig, load_checkpoint, run_experiment

    straight = run_experiment(
        RunConfig(**SECURE_RUN, rounds=4, out=str(tmp_path / "a")), progress=False
    )
    assert straight["secure_aggregation"]["screening"] == SCREENING_OFF
    assert all(r["secure"]["protocol"] == "secagg+" for r in straight["rounds"])
    plain_cfg = {**SECURE_RUN, "secure_aggregation": None, "secagg_dropout": 0.0}
    plain = run_experiment(
        RunConfig(**plain_cfg, rounds=4, out=str(tmp_path / "p")), progress=False
    )
    no_drop = {**SECURE_RUN, "secagg_dropout": 0.0}
    same = run_experiment(RunConfig(**no_drop, rounds=4, out=str(tmp_path / "s")), progress=False)
    # float32 models: sums in float64 against the plain path's float32 weighted sum
    p, q = (load_checkpoint(tmp_path / d / "checkpoint.pt")["server"] for d in "ps")
    assert max_abs_diff(p, q) < 1e-5
    assert same["rounds"][-1]["test_acc"] == pytest.approx(
        plain["rounds"][-1]["test_acc"], abs=0.01
    )
    run_experiment(RunConfig(**SECURE_RUN, rounds=2, out=str(tmp_path / "b")), progress=False)
    run_experiment(
        RunConfig(**SECURE_RUN, rounds=4, out=str(tmp_path / "b")), resume=True, progress=False
    )
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt")["server"] for d in "ab")
    assert max_abs_diff(a, b) == 0.0  # fixed-point sums are exact: the masks cancel bit for bit


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"secure_aggregation": None}, "secagg_dropout: give it with --secure-aggregation"),
        ({"defence": "krum"}, "hides from the server"),
        ({"secure_aggregation": "paillier"}, "must be one of masking"),
        ({"secagg_dropout": 1.0}, "must be a fraction"),
    ],
)
def test_secure_run_configs_that_cannot_work_are_refused(extra, message):
    from privlearn.fl.run import RunConfig

    with pytest.raises(ValueError, match=message):
        RunConfig(**{**SECURE_RUN, **extra})


def test_threshold_ckks_gives_the_same_step_and_survives_dropouts(digits_dir):
    """The same round under threshold CKKS at its 128-bit default: the flooding error on the
    sums (w delta, about 3e-5 absolute) is far below the step's own scale."""
    from privlearn.fl.privacy.secagg import make_aggregator

    model, algo = make("fedavg", digits_dir)
    plain, _ = rounds(algo, model, digits_dir)
    secure, stats = rounds(
        algo, model, digits_dir, secure=SecureRound(make_aggregator("threshold-ckks"))
    )
    assert max_abs_diff(plain, secure) < 1e-5
    assert stats[-1].secure["protocol"] == "threshold-ckks"
    drop = SecureRound(make_aggregator("threshold-ckks"), dropout=0.3, seed=1)
    _, stats = rounds(algo, model, digits_dir, n_rounds=2, secure=drop, per_round=10)
    for r, st in enumerate(stats):
        before, after = drop.drops(sorted(st.clients), r)
        assert st.skipped is None and {x.client for x in st.rejected} == set(before)
        assert len(st.secure["unfinished"]) == len(after)
