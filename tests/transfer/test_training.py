"""Encrypted training agrees with the plaintext reference running the same approximation."""

from __future__ import annotations

import numpy as np
import pytest

from privlearn.transfer.reference import predict, train_reference
from privlearn.transfer.session import run_encrypted
from privlearn.transfer.train import TrainSpec


def _problem(n=240, f=20, c=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, f))
    y = rng.integers(0, c, n)
    x = centers[y] + 0.8 * rng.normal(size=(n, f))
    x = (x - x.mean(0)) / x.std(0)
    x /= np.linalg.norm(x, axis=1).max()
    k = 2 * n // 3
    return x[:k], y[:k], x[k:], y[k:]


def _reference(spec, x, y, xv, yv):
    return train_reference(x, y, xv, yv, spec)


def _both(spec, data, preset="toy-n12", backend="simulator", **kw):
    """The encrypted run at a toy preset (INSECURE, tests only) and its plaintext reference."""
    x, y, xv, yv = data
    run = run_encrypted(
        x,
        y,
        xv,
        yv,
        spec,
        preset=preset,
        backend=backend,
        insecure_for_testing=True,
        progress=False,
        **kw,
    )
    return run, _reference(spec, x, y, xv, yv)


@pytest.mark.parametrize("matmul", ["ours", "hetal"])
def test_full_size_protocol_on_the_simulator(matmul):
    """N = 2^16 (n16-d24's 2^15 slots), the real protocol, every message serialized."""
    x, y, xv, yv = _problem()
    spec = TrainSpec(
        classes=4, features=21, batch_size=64, lr=4.0, epochs=3, matmul=matmul, logit_range=16
    )
    run = run_encrypted(x, y, xv, yv, spec, preset="n16-d24", backend="simulator", progress=False)
    ref = _reference(spec, x, y, xv, yv)
    assert run.best_epoch == ref.best_epoch
    assert np.max(np.abs(run.weights - ref.weights)) < 1e-6
    assert [h["val_brier"] for h in run.history] == pytest.approx(ref.val_losses, abs=1e-7)
    assert run.steps == 3 * 3 and run.client_refreshes > 0
    assert np.mean(predict(run.weights, xv) == yv) > 0.8


@pytest.mark.openfhe
def test_real_encryption_at_small_size():
    data = _problem(n=120, f=9, c=3)
    spec = TrainSpec(classes=3, features=10, batch_size=32, lr=4.0, epochs=2, logit_range=16)
    run, ref = _both(spec, data, backend="openfhe")
    assert run.real_encryption
    assert np.max(np.abs(run.weights - ref.weights)) < 1e-5
    assert np.mean(predict(run.weights, data[2]) == predict(ref.weights, data[2])) == 1.0


def test_server_in_its_own_process():
    data = _problem(n=100, f=6, c=2)
    spec = TrainSpec(classes=2, features=7, batch_size=32, lr=2.0, epochs=2, logit_range=16)
    run, ref = _both(spec, data, separate_process=True)
    assert np.max(np.abs(run.weights - ref.weights)) < 1e-6
    assert run.server_ops["mult"] > 0 and "server" in run.peak_memory_gb


def test_bootstrap_mode_on_the_simulator():
    data = _problem(n=80, f=6, c=2)
    spec = TrainSpec(
        classes=2, features=7, batch_size=32, lr=2.0, epochs=1, logit_range=16, refresh="bootstrap"
    )
    run, ref = _both(spec, data, preset="toy-n12-boot7")
    assert run.client_refreshes == 0 and run.server_ops["bootstrap"] > 0
    assert np.max(np.abs(run.weights - ref.weights)) < 1e-3  # bootstraps keep ~18 bits


@pytest.mark.parametrize(
    "c,batch,n",
    [(3, 40, 180), (10, 256, 450)],  # batch not a power of two; batch over one block's rows
    ids=["batch-40", "batch-over-s0"],
)
def test_odd_batch_sizes_and_short_last_batches(c, batch, n):
    data = _problem(n=n, f=8, c=c)
    # no early stopping: it picks on the flooded validation loss, and where two epochs' losses
    # are close the flooding may pick the other one (a fair choice, not what is tested here)
    spec = TrainSpec(
        classes=c,
        features=9,
        batch_size=batch,
        lr=2.0,
        epochs=2,
        logit_range=16,
        early_stopping=False,
    )
    assert batch % spec.block(2048).s0 or batch > spec.block(2048).s0
    run, ref = _both(spec, data)
    assert [h["val_brier"] for h in run.history] == pytest.approx(ref.val_losses, abs=1e-6)
    assert np.max(np.abs(run.weights - ref.weights)) < 1e-6


def test_without_early_stopping_the_last_epoch_is_kept():
    data = _problem(n=120, f=6, c=2)
    data = (*data[:3], 1 - data[3])  # validation loss rises: early stopping would keep epoch 0
    spec = TrainSpec(
        classes=2,
        features=7,
        batch_size=32,
        lr=2.0,
        epochs=4,
        patience=1,
        early_stopping=False,
        logit_range=16,
    )
    run, ref = _both(spec, data)
    assert run.best_epoch == ref.best_epoch == 3 and len(run.history) == 4
    assert np.max(np.abs(run.weights - ref.weights)) < 1e-6
