from __future__ import annotations

import numpy as np
import pytest

from privlearn.transfer.reference import (
    EarlyStopping,
    brier,
    epoch_order,
    exact_softmax,
    fixed_batches,
    nesterov_gamma,
    predict,
    train_reference,
)
from privlearn.transfer.train import TrainSpec


def test_nesterov_schedule():
    assert nesterov_gamma(0) == 0.0  # a plain first step
    lam1, lam2 = (1 + 5**0.5) / 2, None
    lam2 = (1 + (1 + 4 * lam1**2) ** 0.5) / 2
    assert nesterov_gamma(1) == pytest.approx((1 - lam1) / lam2)
    g = [nesterov_gamma(t) for t in range(50)]
    assert all(b < a for a, b in zip(g, g[1:], strict=False)) and -1 < g[-1] < -0.9


def test_early_stopping_waits_patience_epochs_and_remembers_the_best():
    s = EarlyStopping(patience=2)
    assert [s.update(v) for v in (1.0, 0.5, 0.6, 0.55)] == [True, True, True, False]
    assert s.best_epoch == 1 and s.best_loss == 0.5


def test_batches_cover_every_sample_once_and_orders_are_seeded():
    b = fixed_batches(103, 10, seed=3)
    assert sorted(np.concatenate(b).tolist()) == list(range(103))
    assert [len(x) for x in b] == [10] * 10 + [3]
    assert (epoch_order(11, 2, 3) == epoch_order(11, 2, 3)).all()
    assert not (epoch_order(11, 2, 3) == epoch_order(11, 3, 3)).all()


def test_brier_of_a_perfect_and_a_uniform_guess():
    y = np.array([0, 2])
    assert brier(np.eye(3)[y], y) == 0.0
    assert brier(np.full((2, 3), 1 / 3), y) == pytest.approx(2 / 3)


def test_reference_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = np.eye(3)[y] + 0.1 * rng.normal(size=(300, 3))
    x /= np.linalg.norm(x, axis=1).max()
    spec = TrainSpec(classes=3, features=4, batch_size=32, lr=4.0, epochs=10)
    r = train_reference(x[:200], y[:200], x[200:], y[200:], spec, softmax=exact_softmax)
    assert np.mean(predict(r.weights, x[200:]) == y[200:]) > 0.95
    assert r.val_losses[-1] < r.val_losses[0]


def test_reference_follows_the_spec():
    """The spec alone decides: its softmax approximation (by default), early stopping,
    epochs; features it does not expect are refused."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 120)
    x = np.eye(2)[y] + 0.3 * rng.normal(size=(120, 2))
    x /= np.linalg.norm(x, axis=1).max()
    spec = TrainSpec(classes=2, features=3, batch_size=16, epochs=3, early_stopping=False)
    approx = train_reference(x[:80], y[:80], x[80:], y[80:], spec)
    exact = train_reference(x[:80], y[:80], x[80:], y[80:], spec, softmax=exact_softmax)
    assert approx.best_epoch == 2 and approx.steps == 3 * 5
    assert 0 < np.max(np.abs(approx.weights - exact.weights)) < 1e-2  # the approximation's
    with pytest.raises(ValueError, match="spec expects 2"):
        train_reference(x[:80, :1], y[:80], x[80:, :1], y[80:], spec)
