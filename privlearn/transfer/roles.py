"""Client and Server: the two roles of encrypted transfer learning, talking only in messages.

The **client** owns the data and the only secret key. It encrypts features and labels, answers
the server's refresh requests (in ``client`` refresh mode), decrypts the validation errors and
decides alone whether training continues, and finally decrypts the weights.

The **server** is built from the ``setup`` message: a public bundle, the training spec and the
encrypted initial weights. It never holds a secret key (its Evaluator has no decrypt method),
keeps uploaded batches on disk at the lowest level they need, and runs the training math of
:mod:`privlearn.transfer.train`.

What the server learns: the public spec (classes, feature count, batch size, hyper-parameters),
the number of batches, message sizes and timing, and one bit per epoch: whether the client asks
for another epoch. In ``client`` refresh mode it also learns how often refreshes happen, which
the public spec determines anyway. It never sees a feature, a label, a weight or a loss.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from collections import deque
from functools import cached_property
from pathlib import Path

import numpy as np

from privlearn.he import Ciphertext, ClientContext, Evaluator
from privlearn.he.backend import _Context
from privlearn.he.flooding import FloodingWarning, flood, flooding_sigma, security_bits
from privlearn.linalg.packing import BlockShape, EncMatrix, Layout
from privlearn.transfer.flooding_bound import FLOOD_SIGMAS, simulated_error_stds
from privlearn.transfer.protocol import Endpoint, Message, ProtocolError, SessionAborted
from privlearn.transfer.reference import EarlyStopping, add_bias, fixed_batches, one_hot
from privlearn.transfer.session_store import ServerStore
from privlearn.transfer.train import EncryptedTrainer, TrainSpec, brier_from_squared_errors


# -- encrypted matrices in messages -------------------------------------------------------------
def matrix_meta(m: EncMatrix) -> dict:
    return {
        "shape": list(m.shape),
        "block": [m.block.s0, m.block.s1],
        "layout": m.layout.value,
        "count": len(m.blocks),
    }


def matrix_blobs(ctx: _Context, m: EncMatrix) -> tuple[bytes, ...]:
    return tuple(ctx.serialize(ct) for ct in m.blocks)


def read_matrix(ctx: _Context, meta: dict, blobs) -> EncMatrix:
    try:
        shape, block, count = meta["shape"], meta["block"], meta["count"]
        sizes = [*shape, *block]
        if len(shape) != 2 or len(block) != 2 or any(type(v) is not int or v < 1 for v in sizes):
            raise ValueError(f"shape {shape} and block {block} must be two positive integers each")
        if type(count) is not int:
            raise ValueError(f"count {count!r} is not an integer")
        layout = Layout(meta["layout"])
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"encrypted matrix metadata is malformed: {e}") from None
    if len(blobs) != count:
        raise ProtocolError(f"expected {count} ciphertexts, got {len(blobs)}")
    return EncMatrix(tuple(ctx.deserialize_many(blobs)), tuple(shape), BlockShape(*block), layout)


def read_matrices(ctx: _Context, metas: object, blobs) -> list[EncMatrix]:
    """Consecutive encrypted matrices of one message, one meta each, using up ``blobs``."""
    if not isinstance(metas, list) or not all(isinstance(m, dict) for m in metas):
        raise ProtocolError("a message's matrix list is malformed")
    out, start = [], 0
    for meta in metas:
        count = meta.get("count")
        if type(count) is not int or not 0 <= count <= len(blobs) - start:
            raise ProtocolError(f"a matrix claims {count!r} of the message's ciphertexts")
        out.append(read_matrix(ctx, meta, blobs[start : start + count]))
        start += count
    if start != len(blobs):
        raise ProtocolError(f"the message carries {len(blobs) - start} unclaimed ciphertexts")
    return out


# -- the server ---------------------------------------------------------------------------------
# The messages that change the training state: each makes a new generation (session_store).
TRAINING_MESSAGES = ("setup", "upload", "train_step", "validate", "get_model")
_BUNDLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # a file name, never a path


class Server:
    """Answers client messages. ``endpoint`` (set by the caller) reaches the client, for
    refresh requests; ``workdir`` holds uploaded batches (a temporary directory by default)."""

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        bundle_root: str | Path | None = None,
        insecure_for_testing: bool = False,
        checkpoint: bool = False,
    ):
        """``bundle_root``: the one directory whose bundles a ``setup`` may name (by a plain
        name: a client's path is never opened as given). ``checkpoint``: write the training
        state to ``workdir`` after every training message (:mod:`.session_store`), so a
        ``resume`` message can continue from it, in this process or a restarted one."""
        self.insecure_for_testing = insecure_for_testing  # accept a bundle short of 128 bits
        self.bundle_root = Path(bundle_root) if bundle_root is not None else None
        if checkpoint and workdir is None:
            raise ValueError("a checkpointing server needs a workdir to keep its state in")
        self._tmp = None if workdir else tempfile.mkdtemp(prefix="privlearn-server-")
        self.workdir = Path(workdir or self._tmp)
        self.store = ServerStore(self.workdir) if checkpoint else None
        self.generation = 0  # training messages handled: names the state a client resumes
        self.endpoint: Endpoint | None = None
        self.ev: Evaluator | None = None
        self.trainer: EncryptedTrainer | None = None
        self.batches: dict[str, list[tuple[dict, dict]]] = {"train": [], "val": []}
        self.snapshots: deque[tuple[int, EncMatrix]] = deque()
        self.epoch = 0

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def handle(self, msg: Message) -> Message:
        handler = {
            "setup": self._setup,
            "resume": self._resume,
            "upload": self._upload,
            "train_step": self._train_step,
            "validate": self._validate,
            "predict": self._predict,
            "get_model": self._get_model,
            "set_model": self._set_model,
        }.get(msg.kind)
        if handler is None:
            raise ProtocolError(f"the server does not take {msg.kind!r} messages")
        if msg.kind not in ("setup", "resume") and self.trainer is None:
            raise ProtocolError("the server has no setup yet")
        try:
            reply = handler(msg)
        except (KeyError, TypeError, IndexError) as e:  # a field missing or of the wrong type
            raise ProtocolError(f"malformed {msg.kind!r} message: {type(e).__name__} {e}") from e
        if msg.kind in TRAINING_MESSAGES:
            self.generation += 1
            if self.store is not None:
                self._checkpoint()
        return reply

    def _checkpoint(self) -> None:
        """Everything a restarted server needs beside its bundle and uploads (public: spec,
        positions, ciphertexts, the simulator's noise state whose seed the bundle holds)."""
        t = self.trainer
        matrices = [t.w, t.v_prev, *(w for _, w in self.snapshots)]
        meta = {
            "spec": t.spec.to_meta(),
            "batches": self.batches,
            "epoch": self.epoch,
            "step": t.step_count,
            "snapshot_epochs": [e for e, _ in self.snapshots],
            "matrices": [matrix_meta(m) for m in matrices],
            "noise": self.ev.noise_state(),
        }
        blobs = [b for m in matrices for b in matrix_blobs(self.ev, m)]
        self.store.write(
            self.generation, self.ev.backend_name, self.ev.params.fingerprint(), meta, blobs
        )

    def _resume(self, msg: Message) -> Message:
        """Continue from the stored state of the generation the client names: the bundle
        and uploads are this server's own files; the client's spec and key must match."""
        if self.store is None:
            raise ProtocolError("this server keeps no checkpoint to resume from")
        generation = msg.meta["generation"]
        if type(generation) is not int or generation < 1:
            raise ProtocolError(f"resume needs a positive generation, got {generation!r}")
        self.ev = Evaluator.from_bundle(
            self._bundle(msg.meta["bundle"]), insecure_for_testing=self.insecure_for_testing
        )
        if msg.meta["key"] != self.ev.key_id:
            raise ProtocolError("the checkpoint was made under another key than the client's")
        meta, blobs = self.store.read(
            generation, self.ev.backend_name, self.ev.params.fingerprint()
        )
        if meta["spec"] != msg.meta["spec"]:
            raise ProtocolError(
                f"the checkpoint trains {meta['spec']}; the client asks for {msg.meta['spec']}"
            )
        spec = TrainSpec(**meta["spec"])
        w, v_prev, *snapshots = read_matrices(self.ev, meta["matrices"], blobs)
        refresh = self._refresh if spec.refresh == "client" else None
        self.trainer = EncryptedTrainer(self.ev, spec, w, refresh=refresh)
        self.trainer.v_prev, self.trainer.step_count = v_prev, meta["step"]
        self.snapshots = deque(zip(meta["snapshot_epochs"], snapshots, strict=True))
        self.batches = {k: [tuple(b) for b in v] for k, v in meta["batches"].items()}
        self.epoch, self.generation = meta["epoch"], generation
        self.ev.set_noise_state(meta["noise"])
        return Message("ack", {"step": self.trainer.step_count})

    def _setup(self, msg: Message) -> Message:
        try:
            self.ev = Evaluator.from_bundle(
                self._bundle(msg.meta["bundle"]), insecure_for_testing=self.insecure_for_testing
            )
            spec = TrainSpec(**msg.meta["spec"])
        except (KeyError, TypeError) as e:
            raise ProtocolError(f"setup message is malformed: {e}") from None
        weights = read_matrix(self.ev, msg.meta["weights"], msg.blobs)
        refresh = self._refresh if spec.refresh == "client" else None
        self.trainer = EncryptedTrainer(self.ev, spec, weights, refresh=refresh)
        return Message("ack", {"backend": self.ev.backend_name, "preset": self.ev.params.name})

    def _bundle(self, name: object) -> Path:
        if self.bundle_root is None:
            raise ProtocolError("this server was given no directory to read bundles from")
        if not isinstance(name, str) or not _BUNDLE_NAME.match(name):
            raise ProtocolError(f"a bundle is named by a plain name, not {str(name)[:80]!r}")
        return self.bundle_root / name

    def _refresh(self, cts: list[Ciphertext], level: int) -> list[Ciphertext]:
        if self.endpoint is None:
            raise ProtocolError("client refresh mode needs a link to the client")
        reply = self.endpoint.request(
            Message("refresh", {"level": level}, tuple(self.ev.serialize(c) for c in cts))
        )
        out = self.ev.deserialize_many(reply.expect("refreshed").blobs)
        if len(out) != len(cts) or any(c.level < level for c in out):
            raise ProtocolError("the client's refresh returned the wrong ciphertexts")
        return out

    def _upload(self, msg: Message) -> Message:
        split = msg.meta["split"]
        if not isinstance(split, str) or split not in self.batches:
            raise ProtocolError(f"unknown split {split!r}")
        nx, ny = msg.meta["x"]["count"], msg.meta["y"]["count"]
        if type(nx) is not int or type(ny) is not int:
            raise ProtocolError(f"ciphertext counts must be integers, got {nx!r}, {ny!r}")
        if len(msg.blobs) != nx + ny:
            raise ProtocolError(
                f"upload announces {nx} + {ny} ciphertexts, carries {len(msg.blobs)}"
            )
        for m in (msg.meta["x"], msg.meta["y"]):
            if list(m["block"]) != [self.trainer.block.s0, self.trainer.block.s1]:
                raise ProtocolError(
                    f"upload packed in blocks {m['block']}, the spec says {self.trainer.block}"
                )
        # parsed on arrival, so garbage is refused here, not later inside a training step
        x = read_matrix(self.ev, msg.meta["x"], msg.blobs[:nx])
        y = read_matrix(self.ev, msg.meta["y"], msg.blobs[nx:])
        spec = self.trainer.spec
        if x.shape[1] != spec.features or y.shape != (x.shape[0], spec.classes):
            raise ProtocolError(
                f"upload of {x.shape} features and {y.shape} labels; the spec has "
                f"{spec.features} columns and {spec.classes} classes"
            )
        folder = self.workdir / split / str(len(self.batches[split]))
        folder.mkdir(parents=True, exist_ok=True)
        for i, blob in enumerate(msg.blobs):
            (folder / f"{i}.ct").write_bytes(blob)
        self.batches[split].append((msg.meta["x"], msg.meta["y"]))
        return Message("ack", {"stored": len(msg.blobs), "features": nx})

    def _load(self, split: str, index: int) -> tuple[EncMatrix, EncMatrix]:
        mx, my = self.batches[split][index]
        folder = self.workdir / split / str(index)
        blobs = [(folder / f"{i}.ct").read_bytes() for i in range(mx["count"] + my["count"])]
        return (
            read_matrix(self.ev, mx, blobs[: mx["count"]]),
            read_matrix(self.ev, my, blobs[mx["count"] :]),
        )

    def _train_step(self, msg: Message) -> Message:
        index, epoch = msg.meta["batch"], msg.meta["epoch"]
        if type(index) is not int or type(epoch) is not int:  # `true` is 1 to Python
            raise ProtocolError(f"batch and epoch must be integers, got {index!r}, {epoch!r}")
        if not 0 <= index < len(self.batches["train"]):
            raise ProtocolError(f"no training batch {index}")
        if epoch != self.epoch:  # a new epoch began: keep the last one's weights
            self._snapshot()
            self.epoch = epoch
        self.trainer.step(*self._load("train", index))
        return Message("ack", {"step": self.trainer.step_count})

    def _snapshot(self) -> None:
        self.snapshots.append((self.epoch, self.trainer.w))
        while len(self.snapshots) > self.trainer.spec.patience + 1:
            self.snapshots.popleft()

    def _validate(self, msg: Message) -> Message:
        n = len(self.batches["val"])
        sums, probs = self.trainer.validate(self._load("val", i) for i in range(n))
        blobs = [self.ev.serialize(c) for c in sums]
        for p in probs:
            blobs += matrix_blobs(self.ev, p)
        meta = {"count": len(sums), "probabilities": [matrix_meta(p) for p in probs]}
        return Message("squared_errors", meta, tuple(blobs))

    def _predict(self, msg: Message) -> Message:
        x = read_matrix(self.ev, msg.meta["x"], msg.blobs)
        probs = msg.meta.get("probabilities", False)
        if type(probs) is not bool:  # "../.." or 2**63 were read as True
            raise ProtocolError(f"'probabilities' must be a boolean, got {probs!r:.40}")
        z = self.trainer.probabilities(x) if probs else self.trainer.logits(x)
        return Message(
            "predictions", {"z": matrix_meta(z), "probabilities": probs}, matrix_blobs(self.ev, z)
        )

    def _set_model(self, msg: Message) -> Message:
        w, now = read_matrix(self.ev, msg.meta["weights"], msg.blobs), self.trainer.w
        if (w.shape, w.block, w.layout) != (now.shape, now.block, now.layout):
            raise ProtocolError(
                f"weights of shape {w.shape} in blocks {w.block}; the model is {now.shape} "
                f"in blocks {now.block}"
            )
        self.trainer.w = w
        return Message("ack")

    def _get_model(self, msg: Message) -> Message:
        self._snapshot()
        self.epoch += 1  # a later train_step starts a new epoch, not this one again
        metas, blobs = [], []
        for epoch, w in self.snapshots:
            metas.append({"epoch": epoch, **matrix_meta(w)})
            blobs += matrix_blobs(self.ev, w)
        return Message("model", {"snapshots": metas}, tuple(blobs))


# -- the client ---------------------------------------------------------------------------------
class Client:
    """The data owner: holds ``ctx`` (the secret key) and speaks to the server via messages."""

    def __init__(
        self, ctx: ClientContext, spec: TrainSpec, *, seed: int = 0, flood_security: int = 30
    ) -> None:
        self.ctx, self.spec, self.seed = ctx, spec, seed
        self.block = spec.block(ctx.slots)
        self.flood_security = flood_security
        self._flood_rng = np.random.default_rng()  # never seeded: the server must not replay it
        self.refreshes = 0

    def random_state(self) -> dict:
        """What a checkpoint needs to continue this client's randomness and counts. Private:
        whoever knew the flooding generator's state could subtract the flooding noise."""
        return {
            "flood": self._flood_rng.bit_generator.state,
            "noise": self.ctx.noise_state(),
            "refreshes": self.refreshes,
        }

    def restore_random_state(self, state: dict) -> None:
        self._flood_rng.bit_generator.state = state["flood"]
        self.ctx.set_noise_state(state["noise"])
        self.refreshes = state["refreshes"]

    # messages the client sends
    def setup(self, bundle_dir: str | Path) -> Message:
        """The spec, the initial (zero) weights encrypted, and which public bundle is its:
        written to ``bundle_dir`` as files, since its keys run to gigabytes at N=2^16 (one
        rotation key is ~100 MB) and would be copied several times over inside a message.
        The message names the bundle only (``bundle_dir``'s name): the server reads it from
        the bundle directory it was given and verifies the files (privlearn.he.io)."""
        rots, conj = self.spec.keys(self.ctx.slots)
        bundle = self.ctx.public_bundle(
            sorted(rots),
            conjugation=conj,
            bootstrap=self.spec.refresh == "bootstrap",
            path=bundle_dir,
        )
        zeros = np.zeros((self.spec.classes, self.spec.features))
        w0 = EncMatrix.encrypt(self.ctx, zeros, self.block, Layout.ROW_TILED)
        meta = {
            "spec": self.spec.to_meta(),
            "weights": matrix_meta(w0),
            "bundle": Path(bundle).name,
        }
        return Message("setup", meta, matrix_blobs(self.ctx, w0))

    def set_model(self, weights: np.ndarray) -> Message:
        """The chosen weights, encrypted afresh, for the server to serve: asking it to keep
        a snapshot by epoch number would tell it which epoch was best."""
        w = EncMatrix.encrypt(
            self.ctx, weights * self.spec.weight_scale, self.block, Layout.ROW_TILED
        )
        return Message("set_model", {"weights": matrix_meta(w)}, matrix_blobs(self.ctx, w))

    def batches(self, x: np.ndarray, y: np.ndarray, split: str, level: int) -> list[Message]:
        """``upload`` messages: the split packed in fixed batches (samples shuffled once,
        seeded). A padding row's features are zero, so its logits are; its label is what the
        softmax approximation gives an all-zero row, so its error is zero too."""
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(
                f"the {split} split needs as many labels as rows, and at least "
                f"one row; got {len(x)} rows and {len(y)} labels"
            )
        c, b = self.spec.classes, self.spec.batch_size
        pad_label = self.spec.softmax_method().reference(np.zeros((1, c)))[0]
        xb = add_bias(np.asarray(x, np.float64))
        yh = one_hot(np.asarray(y), c)
        groups = (
            fixed_batches(len(xb), b, self.seed)
            if split == "train"
            else np.array_split(np.arange(len(xb)), range(b, len(xb), b))
        )
        rows = -(-b // self.block.s0) * self.block.s0  # whole blocks: every row is padded
        out = []
        for idx in groups:
            xp = np.zeros((rows, xb.shape[1]))
            xp[: len(idx)] = xb[idx]
            yb = np.tile(pad_label, (rows, 1))
            yb[: len(idx)] = yh[idx]
            xe = EncMatrix.encrypt(self.ctx, xp, self.block, Layout.PLAIN, level=level)
            ye = EncMatrix.encrypt(self.ctx, yb, self.block, Layout.COL_TILED, level=1)
            out.append(
                Message(
                    "upload",
                    {"split": split, "x": matrix_meta(xe), "y": matrix_meta(ye)},
                    matrix_blobs(self.ctx, xe) + matrix_blobs(self.ctx, ye),
                )
            )
        return out

    def encrypt_features(
        self,
        x: np.ndarray,
        level: int,
        *,
        probabilities: bool = False,
    ) -> list[Message]:
        """``predict`` messages, one per batch-sized block of rows; with ``probabilities``
        the server also applies the softmax approximation under encryption."""
        xb = add_bias(np.asarray(x, np.float64))
        b = self.block.s0
        msgs = []
        for i in range(0, len(xb), b):
            xe = EncMatrix.encrypt(self.ctx, xb[i : i + b], self.block, Layout.PLAIN, level=level)
            msgs.append(
                Message(
                    "predict",
                    {
                        "x": matrix_meta(xe),
                        "rows": len(xb[i : i + b]),
                        "probabilities": probabilities,
                    },
                    matrix_blobs(self.ctx, xe),
                )
            )
        return msgs

    # replies the client reads
    def validation(self, reply: Message, y: np.ndarray) -> dict[str, float]:
        """Decrypt a ``validate`` reply: the Brier score computed under encryption, its
        flooded copy (only that may steer a decision the server learns: IND-CPA^D, see
        privlearn.he.flooding), the accuracy of the decrypted probabilities, and what the
        flooding covers: the bound on the validation computation's error σ is sized for,
        σ, the security against that bound, and the security against the bound with the
        weights' training error added (warned about when below ``flood_security``)."""
        reply.expect("squared_errors")
        count, n = reply.meta.get("count"), len(y)
        if type(count) is not int or not 0 < count <= len(reply.blobs):
            raise ProtocolError(f"the reply claims {count!r} sums of squared errors")
        sums = [self.ctx.decrypt(c) for c in self.ctx.deserialize_many(reply.blobs[:count])]
        loss = brier_from_squared_errors(sums, n, self.block, self.spec.classes)
        bound, with_training = self._error_bounds(n)
        kw = {"statistical_security": self.flood_security, "queries": self.spec.epochs}
        noisy = float(flood(np.array(loss), bound, rng=self._flood_rng, **kw))
        sigma = flooding_sigma(bound, **kw)
        bits_with_training = security_bits(sigma, with_training, queries=self.spec.epochs)
        if bits_with_training < self.flood_security:
            warnings.warn(
                f"noise flooding gives {bits_with_training:.1f} bits of statistical security "
                f"against the CKKS error the weights bring from training (estimated), short of "
                f"the configured {self.flood_security}: flooding for it as well would make "
                f"early stopping's choices noisy (docs/transfer.md, 'Flooding: what σ covers')",
                FloodingWarning,
                stacklevel=2,
            )
        probs = read_matrices(self.ctx, reply.meta.get("probabilities"), reply.blobs[count:])
        if sum(p.shape[0] for p in probs) < n:
            raise ProtocolError(f"the reply holds probabilities for fewer than {n} rows")
        for p in probs:
            self._expect(p, (p.shape[0], self.spec.classes), "validation probabilities")
        p = np.vstack([m.decrypt(self.ctx)[:, : self.spec.classes] for m in probs])
        pred = p[:n].argmax(axis=1)
        return {
            "val_brier": loss,
            "val_brier_flooded": noisy,
            "val_accuracy": float(np.mean(pred == y)),
            "flooding_bound": bound,
            "flooding_sigma": sigma,
            "flooding_bits": security_bits(sigma, bound, queries=self.spec.epochs),
            "flooding_bound_with_training": with_training,
            "flooding_bits_with_training": bits_with_training,
        }

    def _error_bounds(self, rows: int) -> tuple[float, float]:
        """Estimated upper bounds on the CKKS error of the Brier score over ``rows``
        validation rows: of the validation computation (everything it accumulates:
        encryption, key switches, rescales, refreshes or bootstraps, amplified by the
        products, the softmax polynomial and the squares; σ is sized for this one), and of
        that plus the error the weights bring from training (reported, not flooded: a σ
        covering it would be 4–7 times larger, enough to blur early stopping).

        Estimated, not proven: :func:`privlearn.transfer.flooding_bound.simulated_error_stds`
        runs the same computations on the simulator, whose per-operation noise is
        calibrated on OpenFHE for this preset. Each bound is ``FLOOD_SIGMAS`` of a std's
        99.9 % upper confidence limit per batch, and batches add (triangle inequality):
        ⌈rows/b⌉ of them over ``rows``.
        docs/transfer.md compares them with the errors of real runs."""
        b = self.spec.batch_size
        scale = FLOOD_SIGMAS * -(-rows // b) * b / rows
        validation, training = self._simulated_error_stds
        return scale * validation, scale * (validation + training)

    @cached_property
    def _simulated_error_stds(self) -> tuple[float, float]:
        return simulated_error_stds(self.ctx.params, self.spec, self.block)

    def predictions(self, request: Message, reply: Message) -> np.ndarray:
        """Decrypted logits, or probabilities if ``request`` asked for them: what the client
        asked decides how it reads the reply, never a flag the server sets."""
        meta = reply.expect("predictions").meta
        probabilities, rows = request.meta["probabilities"], request.meta["rows"]
        if meta.get("probabilities") is not probabilities:
            raise ProtocolError(
                f"asked for {'probabilities' if probabilities else 'logits'}, the server "
                f"answered with {meta.get('probabilities')!r} for 'probabilities'"
            )
        z = read_matrix(self.ctx, meta.get("z"), reply.blobs)
        self._expect(z, (request.meta["x"]["shape"][0], self.spec.classes), "predictions")
        z = z.decrypt(self.ctx)[:rows]
        return z if probabilities else z / self.spec.weight_scale

    def _expect(self, m: EncMatrix, shape: tuple[int, int], what: str) -> None:
        """A matrix the client asked for has the shape and packing it knows it must have (a
        shape from the server's metadata would crop or pad what is decrypted)."""
        if m.shape != shape or m.block != self.block:
            raise ProtocolError(
                f"the server's {what} are {m.shape} in blocks {m.block}; "
                f"the client expects {shape} in blocks {self.block}"
            )

    def weights(self, reply: Message, epoch: int) -> np.ndarray:
        """The decrypted weights (c x (f+1), bias last) of ``epoch``'s snapshot."""
        metas = reply.expect("model").meta.get("snapshots")
        snapshots = read_matrices(self.ctx, metas, reply.blobs)
        chosen = [w for meta, w in zip(metas, snapshots, strict=True) if meta.get("epoch") == epoch]
        if len(chosen) != 1:
            raise ProtocolError(f"the server holds {len(chosen)} snapshots of epoch {epoch}")
        self._expect(chosen[0], (self.spec.classes, self.spec.features), "weights")
        return chosen[0].decrypt(self.ctx) / self.spec.weight_scale

    # requests the client answers
    def handle(self, msg: Message) -> Message:
        """Answer a refresh request. What can be checked on the bytes alone is refused with an
        error reply; a failure once decryption has begun ends the session instead: whether a
        chosen ciphertext decrypts and re-encrypts cleanly (OpenFHE's decoder refuses noisy
        results) is a bit about the plaintext under the client's key, and a server asking
        again and again would have a decryption oracle (IND-CPA^D)."""
        msg.expect("refresh")
        level = msg.meta.get("level")
        if type(level) is not int or not 0 <= level <= self.ctx.params.depth:
            raise ProtocolError(f"refresh level must be an integer level, got {level!r}")
        if not msg.blobs:
            raise ProtocolError("a refresh request carries no ciphertext")
        cts = self.ctx.deserialize_many(msg.blobs)
        try:
            out = tuple(self.ctx.serialize(self.ctx.refresh(ct, level=level)) for ct in cts)
        except Exception as e:  # noqa: BLE001 - every failure here depends on decrypted values
            raise SessionAborted(
                "a refresh request's ciphertext did not decrypt and re-encrypt cleanly; the "
                "client ends the session rather than tell the server so"
            ) from e
        self.refreshes += len(out)
        return Message("refreshed", {}, out)


def early_stopping(spec: TrainSpec) -> EarlyStopping:
    return EarlyStopping(spec.patience if spec.early_stopping else spec.epochs + 1)
