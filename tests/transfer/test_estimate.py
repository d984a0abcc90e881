"""The cost estimate: its dry run counts what a real session at the same spec runs, and its
figures add up and scale with the data as they must."""

from __future__ import annotations

import numpy as np
import pytest

from privlearn.he.cost import TimeModel, measured_preset
from privlearn.transfer.estimate import DRY_STEPS, _dry_run, estimate, measured
from privlearn.transfer.estimator import EncryptedSoftmaxClassifier
from privlearn.transfer.protocol import Message
from privlearn.transfer.session import EncryptedSession
from privlearn.transfer.train import TrainSpec

SPEC = TrainSpec(classes=3, features=9, batch_size=32, epochs=2)


@pytest.fixture(scope="module")
def dry():
    return _dry_run(SPEC, "n15-d11")


def test_a_step_costs_the_same_on_other_data(dry):
    """The premise: a step's ops (with their levels) and its traffic do not depend on the data."""
    rng = np.random.default_rng(7)
    x = rng.uniform(-0.3, 0.3, size=(70, 8))
    y = rng.integers(0, 3, 70)
    with EncryptedSession(SPEC, preset="n15-d11", backend="simulator", seed=3) as s:
        for msg in s.client.batches(x, y, "train", s.data_level):
            s.link.request(msg)
        for step in range(DRY_STEPS):
            with s.server.ev.cost.measure() as srv, s.ctx.cost.measure() as cli:
                s.link.request(Message("train_step", {"batch": step % 3, "epoch": 0}))
    assert srv.by_op_level == dry["step"]["server"].by_op_level
    assert cli.by_op_level == dry["step"]["client"].by_op_level
    assert dry["step"]["levels"]["refreshed"]  # client refresh mode: ciphertexts come back


def test_the_figures_add_up_and_scale_with_the_rows(dry, monkeypatch):
    import privlearn.transfer.estimate as est

    monkeypatch.setattr(est, "_dry_run", lambda spec, preset: dry)
    hyper = {"batch_size": 32, "epochs": 2, "load": 3.92}  # the time model's own load
    small = estimate(64, 8, 3, val_rows=32, **hyper)
    big = estimate(128, 8, 3, val_rows=32, **hyper)
    assert (small.steps, big.steps) == (4, 8)
    one = estimate(32, 8, 3, val_rows=32, **hyper)  # 1, 2 and 4 training batches
    for kind in ("upload", "refresh", "refreshed"):
        per_batch = small.mb_by_kind[kind] - one.mb_by_kind[kind]
        assert per_batch > 0 and big.mb_by_kind[kind] - small.mb_by_kind[kind] == pytest.approx(
            2 * per_batch
        )
    assert big.mb_by_kind["bundle"] == small.mb_by_kind["bundle"] == small.bundle_mb
    assert big.seconds_total == pytest.approx(
        big.seconds_setup
        + big.seconds_upload
        + big.steps * big.seconds_per_iteration
        + big.epochs * big.seconds_validation_per_epoch
    )
    tm = TimeModel.default("n15-d11")
    row = measured_preset("n15-d11")
    client = dry["step"]["client"]
    assert small.load_factor == 1.0
    assert estimate(64, 8, 3, val_rows=32, **{**hyper, "load": 0.5}).load_factor == 2 / 3.92
    assert estimate(64, 8, 3, val_rows=32, **{**hyper, "load": 7.84}).seconds_total == (
        pytest.approx(2 * small.seconds_total)
    )
    assert small.seconds_per_iteration == pytest.approx(
        tm.seconds(dry["step"]["server"])
        + row["seconds"]["encrypt"] * client["encrypt"]
        + row["seconds"]["decrypt"] * client["decrypt"]
    )
    assert small.bundle_mb > 10 * row["sizes_mb"]["rotation_key_mb"]  # many rotation keys
    assert small.mb_to_server == pytest.approx(
        sum(v for k, v in small.mb_by_kind.items() if k not in ("refresh", "model", "ack"))
        - small.mb_by_kind.get("squared_errors", 0)
    )


def test_estimator_estimate_holds_out_its_validation_fraction(dry, monkeypatch):
    import privlearn.transfer.estimate as est

    monkeypatch.setattr(est, "_dry_run", lambda spec, preset: dry)
    clf = EncryptedSoftmaxClassifier(backend="simulator", batch_size=32, epochs=2)
    x, y = np.ones((100, 8)), np.arange(100) % 3
    e = clf.estimate(x, y)
    assert (e.rows, e.val_rows, e.features, e.classes) == (85, 15, 8, 3)
    assert e.steps == 2 * 3 and e.preset == "n15-d11"
    with pytest.raises(ValueError, match="'toy-n12' does not give 128-bit security"):
        estimate(100, 8, 3, preset="toy-n12")


def test_measured_reads_a_run_summary_by_the_same_names():
    run = {
        "steps": 4,
        "history": [{}, {}],
        "seconds": {"train": 8.0, "validate": 2.0, "keygen": 1.0, "setup": 2.0}
        | {"encrypt_upload": 3.0, "total": 20.0},
        "peak_memory_gb": {"client+server": 1.5},
        "bytes_by_kind": {"bundle": 5e6, "upload": 2e6, "refresh": 1e6, "refreshed": 4e6},
    }
    got = measured(run)
    assert got["seconds_per_iteration"] == 2.0 and got["seconds_validation_per_epoch"] == 1.0
    assert got["seconds_setup"] == 3.0 and got["server_memory_gb"] == 1.5
    assert got["mb_to_server"] == 11.0 and got["bundle_mb"] == 5.0
    apart = measured({**run, "peak_memory_gb": {"client": 1.2}})  # server's peak comes at close
    assert apart["server_memory_gb"] is None
