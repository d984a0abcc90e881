"""The plaintext reference: HETAL's training algorithm in float64 numpy.

Exactly the steps the encrypted trainer performs, on the same batches in the same order: logits
Z = X·Wᵀ, probabilities P = softmax(Z), gradient G = (P − Y)ᵀ·X / b, a Nesterov step, and
validation-loss early stopping, all as the same :class:`~privlearn.transfer.train.TrainSpec`
says. ``softmax`` is pluggable: the exact function, or the plaintext twin of the spec's
encrypted approximation (the default), so that encrypted − plaintext differences can be split into
approximation error (exact vs approximate reference) and CKKS noise (approximate reference vs
encrypted run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # train.py imports this module
    from privlearn.transfer.train import TrainSpec

Softmax = Callable[[np.ndarray], np.ndarray]


def exact_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def add_bias(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((x.shape[0], 1), dtype=x.dtype)])


def one_hot(y: np.ndarray, c: int) -> np.ndarray:
    return np.eye(c)[y]


def brier(p: np.ndarray, y: np.ndarray) -> float:
    """Mean over samples of Σ_c (p_c − y_c)²: the validation loss early stopping watches.
    A proper scoring rule that is a polynomial, so the server computes it under encryption
    (cross-entropy would need a logarithm, which no polynomial follows near 0)."""
    return float(np.mean(np.sum((p - one_hot(y, p.shape[1])) ** 2, axis=1)))


def nesterov_gamma(step: int) -> float:
    """Momentum of Nesterov's method at ``step`` (0-based), in the form of the HE
    logistic-regression literature HETAL follows (Kim et al., 2018):
    v_{t+1} = w_t − η·g_t;  w_{t+1} = (1 − γ_t)·v_{t+1} + γ_t·v_t, with γ_t = (1 − λ_t)/λ_{t+1},
    λ_0 = 1 and λ_{t+1} = (1 + √(1 + 4λ_t²))/2. So γ_0 = 0 (a plain first step) and −γ_t rises
    towards 1 like FISTA's (t − 1)/(t + 2)."""
    lam = 1.0
    for _ in range(step + 1):
        lam_next = (1 + np.sqrt(1 + 4 * lam * lam)) / 2
        gamma, lam = (1 - lam) / lam_next, lam_next
    return float(gamma)


@dataclass
class EarlyStopping:
    """Stop when the validation loss has not improved for ``patience`` epochs; the best epoch
    is remembered. Used as is by the encrypted trainer's client, who alone sees the losses."""

    patience: int = 3
    best_loss: float = float("inf")
    best_epoch: int = -1
    losses: list[float] = field(default_factory=list)

    def update(self, loss: float) -> bool:
        """Record an epoch's loss; True means continue."""
        self.losses.append(loss)
        if loss < self.best_loss:
            self.best_loss, self.best_epoch = loss, len(self.losses) - 1
        return len(self.losses) - 1 - self.best_epoch < self.patience


def fixed_batches(n: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Sample indices of each batch: samples shuffled once (seeded), then cut in order. The
    client encrypts batches this way, once, so the server can only reorder whole batches."""
    perm = np.random.default_rng(seed).permutation(n)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def epoch_order(n_batches: int, epoch: int, seed: int) -> np.ndarray:
    """The order in which an epoch visits the fixed batches."""
    return np.random.default_rng([seed, epoch]).permutation(n_batches)


@dataclass
class TrainResult:
    weights: np.ndarray  # c × (f+1), bias last; the best epoch's
    val_losses: list[float]
    best_epoch: int  # index into history (0-based); results report it 1-based
    steps: int
    history: list[dict] = field(default_factory=list)


def train_reference(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    spec: TrainSpec,
    *,
    softmax: Softmax | None = None,
    seed: int = 0,
) -> TrainResult:
    """Train as the encrypted run with ``spec`` would, on already scaled features.
    ``softmax`` defaults to the plaintext twin of the spec's approximation; pass
    :func:`exact_softmax` for the exact function."""
    if np.shape(x)[1] + 1 != spec.features or np.shape(x_val)[1] + 1 != spec.features:
        raise ValueError(
            f"features have {np.shape(x)[1]} (validation {np.shape(x_val)[1]}) columns but "
            f"the spec expects {spec.features - 1} (plus the bias)"
        )
    softmax = softmax or spec.softmax_method().reference
    xb, xvb = add_bias(np.asarray(x, np.float64)), add_bias(np.asarray(x_val, np.float64))
    yh = one_hot(y, spec.classes)
    w = np.zeros((spec.classes, xb.shape[1]))
    v_prev = w.copy()
    stopper = EarlyStopping(spec.patience if spec.early_stopping else spec.epochs + 1)
    snapshots, history, step = [], [], 0
    batches = fixed_batches(len(xb), spec.batch_size, seed)
    for epoch in range(spec.epochs):
        for b in epoch_order(len(batches), epoch, seed):
            idx = batches[b]
            xi, yi = xb[idx], yh[idx]
            # nominal size: a short last batch steps less
            g = (softmax(xi @ w.T) - yi).T @ xi / spec.batch_size
            v = w - spec.lr * g
            if spec.nesterov:
                gamma = nesterov_gamma(step)
                w, v_prev = (1 - gamma) * v + gamma * v_prev, v
            else:
                w = v
            step += 1
        snapshots.append(w.copy())
        loss = brier(softmax(xvb @ w.T), y_val)
        acc = float(np.mean((xvb @ w.T).argmax(1) == y_val))
        history.append({"epoch": epoch + 1, "val_brier": loss, "val_accuracy": acc, "steps": step})
        if not stopper.update(loss):
            break
    best = stopper.best_epoch if spec.early_stopping else len(snapshots) - 1
    return TrainResult(snapshots[best], stopper.losses, best, step, history)


def predict(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (add_bias(np.asarray(x, np.float64)) @ weights.T).argmax(1)
