"""One encrypted training run, end to end: client and server set up, data up, epochs, model down.

The client drives: it uploads, asks for one step at a time (so it can show progress and time
left), asks for the validation errors after each epoch, decides alone whether to go on, and
finally fetches the weight snapshots and decrypts the best epoch's. The server runs in this
process (``separate_process=False``: every message is still serialized) or in a child process
of its own, linked by a pipe, so the two never share memory.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from privlearn.he import ClientContext
from privlearn.transfer.protocol import Message, PipeEndpoint, link_token, thread_pair
from privlearn.transfer.reference import epoch_order
from privlearn.transfer.roles import Client, Server, early_stopping
from privlearn.transfer.train import TrainSpec


@dataclass
class EncryptedRun:
    weights: np.ndarray  # decrypted, c x (f+1), bias last
    best_epoch: int  # index into history (0-based); results report it 1-based
    history: list[dict]
    backend: str
    real_encryption: bool
    preset: str
    security: str
    refresh: str
    steps: int
    seconds: dict[str, float]
    client_refreshes: int
    bytes_to_server: int
    bytes_to_client: int
    server_ops: dict[str, int]
    peak_memory_gb: dict[str, float]
    # both ways, by message kind, and "bundle": the public bundle's files (which a server
    # on another machine must receive once)
    bytes_by_kind: dict[str, int] = field(default_factory=dict)
    load_1m: tuple[float, float] | None = None  # the machine's load when fit began and ended
    transcript: list[bytes] | None = field(default=None, repr=False)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("weights", "transcript")}


def _serve(conn, token: bytes, workdir: str | None, bundle_root: str, insecure: bool) -> None:
    """The server process: answer the client until it hangs up."""
    server = Server(workdir, bundle_root=bundle_root, insecure_for_testing=insecure)
    endpoint = PipeEndpoint(conn, server.handle, initiator=False, token=token)
    server.endpoint = endpoint
    try:
        endpoint.serve_forever()
        ops = server.ev.cost.total.as_dict() if server.ev else {}
        endpoint.send_final(Message("ack", {"ops": ops, "peak_gb": _peak_gb()}))
    finally:
        server.close()


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class EncryptedSession:
    """A client, its server and the link between them, for a training run and encrypted
    inference afterwards. Use as a context manager (it owns a server process or directory)."""

    def __init__(
        self,
        spec: TrainSpec,
        *,
        preset: str,
        backend: str = "openfhe",
        seed: int = 0,
        separate_process: bool = False,
        workdir: str | None = None,
        record_transcript: bool = False,
        insecure_for_testing: bool = False,
        ctx: ClientContext | None = None,
    ) -> None:
        """``ctx``: the client's keys, if they exist already (``ClientContext.load``);
        otherwise fresh ones for ``preset`` on ``backend``."""
        t0 = self._t0 = time.perf_counter()
        self.spec, self.seed = spec, seed
        if ctx is not None and (ctx.params.name, ctx.backend_name) != (preset, backend):
            raise ValueError(
                f"the keys are {ctx.params.name} on {ctx.backend_name}; the session is "
                f"{preset} on {backend}"
            )
        self.ctx = ctx or ClientContext.create(
            preset, backend, seed=seed, insecure_for_testing=insecure_for_testing
        )
        self.client = Client(self.ctx, spec, seed=seed)
        self.seconds: dict[str, float] = {"keygen": time.perf_counter() - t0}
        self.server = self.proc = None
        # the bundle's directory (created 0700, its name random) is the one the server may read
        self._bundle_tmp = tempfile.TemporaryDirectory(prefix="privlearn-bundle-")
        root = self._bundle_tmp.name
        if separate_process:
            ctx = mp.get_context("spawn")
            self._conn, child = ctx.Pipe()
            token = link_token()
            self.proc = ctx.Process(
                target=_serve,
                args=(child, token, workdir, root, insecure_for_testing),
                daemon=True,
            )
            self.proc.start()
            self.link = PipeEndpoint(
                self._conn,
                self.client.handle,
                initiator=True,
                token=token,
                peer_alive=self.proc.is_alive,
            )
        else:
            self.server = Server(
                workdir, bundle_root=root, insecure_for_testing=insecure_for_testing
            )
            self.link, self.server.endpoint, self._thread = thread_pair(
                self.client.handle, self.server.handle, record=record_transcript
            )
        self.bundle_dir = Path(root) / "bundle"
        t = time.perf_counter()
        self.link.request(self.client.setup(self.bundle_dir))
        self.seconds["setup"] = time.perf_counter() - t
        self.bundle_bytes = sum(f.stat().st_size for f in self.bundle_dir.iterdir())
        self.server_ops: dict[str, int] = {}
        self.server_peak_gb: float | None = None

    def __enter__(self) -> EncryptedSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def data_level(self) -> int:
        return self.spec.data_level(
            self.ctx.slots, spare=1 if self.spec.refresh == "bootstrap" else 0
        )

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        *,
        progress: bool = True,
    ) -> EncryptedRun:
        """Upload, train with early stopping, fetch and decrypt the best epoch's weights; the
        server then serves those weights (re-encrypted by the client) for inference."""
        spec, client, link = self.spec, self.client, self.link
        load_start = os.getloadavg()[0]
        t = time.perf_counter()
        for msg in client.batches(x, y, "train", self.data_level) + client.batches(
            x_val, y_val, "val", self.data_level
        ):
            link.request(msg)
        self.seconds["encrypt_upload"] = time.perf_counter() - t
        n_batches = -(-len(x) // spec.batch_size)
        stopper = early_stopping(spec)
        history: list[dict] = []
        steps, train_s, val_s = 0, 0.0, 0.0
        with _progress(progress) as bar:
            task = bar.add_task("encrypted training", total=spec.epochs * n_batches)
            for epoch in range(spec.epochs):
                t = time.perf_counter()
                for b in epoch_order(n_batches, epoch, self.seed):
                    link.request(Message("train_step", {"batch": int(b), "epoch": epoch}))
                    steps += 1
                    bar.advance(task)
                epoch_s = time.perf_counter() - t
                t = time.perf_counter()
                val = client.validation(link.request(Message("validate")), np.asarray(y_val))
                val_time = time.perf_counter() - t
                train_s, val_s = train_s + epoch_s, val_s + val_time
                go_on = stopper.update(val["val_brier_flooded"])
                history.append(
                    {
                        "epoch": epoch + 1,  # shown to users: 1-based, as everywhere
                        **val,
                        "train_s": epoch_s,
                        "validate_s": val_time,
                        "refreshes": client.refreshes,
                    }
                )
                bar.update(
                    task,
                    description=f"epoch {epoch + 1}: val Brier {val['val_brier']:.4f}"
                    f", accuracy {val['val_accuracy']:.3f}",
                )
                if not go_on:
                    bar.update(task, total=steps)
                    break
        self.seconds.update(train=train_s, validate=val_s)
        t = time.perf_counter()
        best = stopper.best_epoch if spec.early_stopping else len(history) - 1
        weights = client.weights(link.request(Message("get_model")), best)
        self.serve(weights)
        self.seconds["fetch_model"] = time.perf_counter() - t
        self.seconds["total"] = time.perf_counter() - self._t0
        return EncryptedRun(
            weights=weights,
            best_epoch=best,
            history=history,
            backend=self.ctx.backend_name,
            real_encryption=self.ctx.is_real_encryption,
            preset=self.ctx.params.name,
            security="128-bit (HE standard, classic)"
            if self.ctx.params.secure
            else "INSECURE (tests)",
            refresh=spec.refresh,
            steps=steps,
            seconds=dict(self.seconds),
            client_refreshes=client.refreshes,
            bytes_to_server=link.bytes_sent,
            bytes_to_client=link.bytes_received,
            server_ops=(self.server.ev.cost.total.as_dict() if self.server else {}),
            peak_memory_gb={"client" if self.proc else "client+server": _peak_gb()},
            bytes_by_kind={"bundle": self.bundle_bytes, **self.link.bytes_by_kind},
            load_1m=(load_start, os.getloadavg()[0]),
            transcript=getattr(self.link, "transcript", None),
        )

    def serve(self, weights: np.ndarray) -> None:
        """Have the server serve ``weights`` (c x (f+1), bias last), encrypted by the client
        under this session's key: after ``fit``, or for weights trained in another session."""
        self.link.request(self.client.set_model(weights))

    def predict(self, x: np.ndarray, *, probabilities: bool = False) -> np.ndarray:
        """Encrypted inference: the client encrypts ``x``, the server returns encrypted
        logits (or softmax probabilities, computed under encryption), the client decrypts."""
        out = []
        for msg in self.client.encrypt_features(x, self.data_level, probabilities=probabilities):
            out.append(self.client.predictions(msg, self.link.request(msg)))
        return np.vstack(out)

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.link.close()
            final = self.link.recv_final()
            self.server_ops, self.server_peak_gb = final.meta["ops"], final.meta["peak_gb"]
            self.proc.join(60)
        if self.server is not None:
            if self._thread.is_alive():
                self.link.close()
                self._thread.join(60)
            self.server_ops = self.server.ev.cost.total.as_dict()
            self.server.close()
        if self._bundle_tmp is not None:
            self._bundle_tmp.cleanup()
            self._bundle_tmp = None


def run_encrypted(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    spec: TrainSpec,
    *,
    progress: bool = True,
    **session,
) -> EncryptedRun:
    """One training run in a fresh session (see :class:`EncryptedSession` for options)."""
    with EncryptedSession(spec, **session) as s:
        run = s.fit(x, y, x_val, y_val, progress=progress)
    if s.proc is not None:
        run.server_ops = s.server_ops
        run.peak_memory_gb["server"] = s.server_peak_gb
    return run


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
