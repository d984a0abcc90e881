"""The flooding's error bound, estimated on the simulator from public inputs alone.

The client floods the validation loss it decrypts (IND-CPA^D, :mod:`privlearn.he.flooding`)
with a σ that must cover the CKKS error the whole validation computation accumulated. That
computation is public (the spec, the preset, the packing), so the client estimates its error
once, before the first decryption, by running the same trainer on the simulator, whose
per-operation noise is calibrated on OpenFHE for the preset.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from privlearn.he import simulator
from privlearn.he.params import CKKSParams
from privlearn.linalg.packing import BlockShape, EncMatrix, Layout
from privlearn.transfer.reference import add_bias, brier, epoch_order, train_reference
from privlearn.transfer.train import EncryptedTrainer, TrainSpec, brier_from_squared_errors

# The bounds (roles.Client._error_bounds): FLOOD_SIGMAS standard deviations of errors estimated
# from FLOOD_TRIALS simulated runs, at that std's 99.9 % upper confidence limit (4 squared normal
# errors sum to over 0.0908 σ² with probability 99.9 %: χ²₄).
FLOOD_SIGMAS = 6.0
FLOOD_TRIALS = 4
CHI2_4_AT_0001 = 0.0908


def simulated_error_stds(
    params: CKKSParams, spec: TrainSpec, block: BlockShape
) -> tuple[float, float]:
    """99.9 % upper confidence limits of the std of the Brier error of one validation
    batch, each from ``FLOOD_TRIALS`` simulator runs at this preset and spec against the
    exact computation: (1) validation alone, on public worst-case inputs (rows of norm 1,
    the scaled features' limit; logits reaching ±0.99 of the spec's range; random
    labels); (2) training from zero weights for up to 3 epochs of 2 batches, on
    synthetic clustered data, validated after each epoch (the largest error counts).
    All of it is public, so it is seeded: the server could recompute it."""
    from privlearn.transfer.roles import Client, read_matrix  # the client's own packing

    c, b, f = spec.classes, spec.batch_size, spec.features
    bootstrap = spec.refresh == "bootstrap"
    rng = np.random.default_rng(0)

    def trainer(w: np.ndarray, s: TrainSpec):
        ctx = simulator.Client(params, seed=int(rng.integers(2**62)))
        rots, conj = s.keys(ctx.slots)
        ev = simulator.Evaluator(
            params, rots, conj, bootstrap, ctx.key_id, seed=int(rng.integers(2**62))
        )
        enc_w = EncMatrix.encrypt(ctx, w * s.weight_scale, block, Layout.ROW_TILED)
        refresh = None if bootstrap else lambda cts, lvl: [ctx.refresh(x, level=lvl) for x in cts]
        level = s.data_level(ctx.slots, 1 if bootstrap else 0)

        def upload(x, y, split):
            for up in Client(ctx, s).batches(x, y, split, level):
                nx = up.meta["x"]["count"]
                yield (
                    read_matrix(ev, up.meta["x"], up.blobs[:nx]),
                    read_matrix(ev, up.meta["y"], up.blobs[nx:]),
                )

        def loss(tr, val, y):
            sums, _ = tr.validate(val)
            return brier_from_squared_errors([ctx.decrypt(x) for x in sums], len(y), block, c)

        return EncryptedTrainer(ev, s, enc_w, refresh=refresh), upload, loss

    def validation_error() -> float:
        x = rng.normal(size=(b, f - 1))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        y = rng.integers(0, c, b)
        w = rng.normal(size=(c, f))
        w *= 0.99 * spec.logit_range / np.abs(add_bias(x) @ w.T).max()
        tr, upload, loss = trainer(w, spec)
        exact = brier(spec.softmax_method().reference(add_bias(x) @ w.T), y)
        return loss(tr, list(upload(x, y, "val")), y) - exact

    def training_error() -> float:
        s = replace(spec, epochs=min(spec.epochs, 3), early_stopping=False)
        y = rng.integers(0, c, 3 * b)
        x = rng.normal(size=(c, f - 1))[y] + 0.8 * rng.normal(size=(3 * b, f - 1))
        x = (x - x.mean(0)) / x.std(0)
        x /= np.linalg.norm(x, axis=1).max()
        ref = train_reference(x[b:], y[b:], x[:b], y[:b], s)
        tr, upload, loss = trainer(np.zeros((c, f)), s)
        train, val = list(upload(x[b:], y[b:], "train")), list(upload(x[:b], y[:b], "val"))
        worst = 0.0
        for epoch, exact in enumerate(ref.val_losses):
            for i in epoch_order(len(train), epoch, 0):
                tr.step(*train[i])
            worst = max(worst, abs(loss(tr, val, y[:b]) - exact))
        return worst

    def upper_std(draw) -> float:
        errors = [draw() for _ in range(FLOOD_TRIALS)]
        return float(np.sqrt(np.sum(np.square(errors)) / CHI2_4_AT_0001))

    return upper_std(validation_error), upper_std(training_error)
