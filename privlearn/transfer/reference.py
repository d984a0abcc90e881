"""The plaintext reference: HETAL's training algorithm in float64 numpy.

Exactly the steps the encrypted trainer performs, on the same batches in the same order: logits
Z = X·Wᵀ, probabilities P = softmax(Z), gradient G = (P − Y)ᵀ·X / b, a Nesterov step, and
validation-loss early stopping. ``softmax`` is pluggable: the exact function, or the plaintext
twin of an encrypted approximation, so that encrypted − plaintext differences can be split into
approximation error (exact vs approximate reference) and CKKS noise (approximate reference vs
encrypted run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Softmax = Callable[[np.ndarray], np.ndarray]


def exact_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def add_bias(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((x.shape[0], 1), dtype=x.dtype)])


def one_hot(y: np.ndarray, c: int) -> np.ndarray:
    return np.eye(c)[y]


def cross_entropy(p: np.ndarray, y: np.ndarray, floor: float = 1e-12) -> float:
    """Mean −log p_y, with p clipped at ``floor`` (approximate softmaxes can undershoot 0)."""
    return float(np.mean(-np.log(np.clip(p[np.arange(len(y)), y], floor, None))))


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


def batch_order(n: int, batch_size: int, epoch: int, seed: int) -> list[np.ndarray]:
    """Sample indices of each batch in one epoch. Samples are shuffled once (seeded) and packed
    into fixed batches (the client encrypts them that way); each epoch visits the batches in a
    seeded order, the only shuffling an encrypted server can do."""
    perm = np.random.default_rng(seed).permutation(n)
    batches = [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    order = np.random.default_rng([seed, epoch]).permutation(len(batches))
    return [batches[i] for i in order]


@dataclass
class TrainResult:
    weights: np.ndarray  # c × (f+1), bias last; the best epoch's
    val_losses: list[float]
    best_epoch: int
    steps: int
    history: list[dict] = field(default_factory=list)


def train_reference(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    classes: int,
    lr: float,
    epochs: int,
    batch_size: int,
    nesterov: bool = True,
    early_stopping: bool = True,
    patience: int = 3,
    softmax: Softmax = exact_softmax,
    seed: int = 0,
) -> TrainResult:
    xb, xvb = add_bias(np.asarray(x, np.float64)), add_bias(np.asarray(x_val, np.float64))
    yh = one_hot(y, classes)
    w = np.zeros((classes, xb.shape[1]))
    v_prev = w.copy()
    stopper = EarlyStopping(patience if early_stopping else epochs + 1)
    snapshots, history, step = [], [], 0
    for epoch in range(epochs):
        for idx in batch_order(len(xb), batch_size, epoch, seed):
            xi, yi = xb[idx], yh[idx]
            g = (softmax(xi @ w.T) - yi).T @ xi / len(idx)
            v = w - lr * g
            if nesterov:
                gamma = nesterov_gamma(step)
                w, v_prev = (1 - gamma) * v + gamma * v_prev, v
            else:
                w = v
            step += 1
        snapshots.append(w.copy())
        loss = cross_entropy(softmax(xvb @ w.T), y_val)
        acc = float(np.mean((xvb @ w.T).argmax(1) == y_val))
        history.append({"epoch": epoch, "val_loss": loss, "val_acc": acc, "steps": step})
        if not stopper.update(loss):
            break
    best = stopper.best_epoch if early_stopping else len(snapshots) - 1
    return TrainResult(snapshots[best], stopper.losses, best, step, history)


def predict(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (add_bias(np.asarray(x, np.float64)) @ weights.T).argmax(1)
