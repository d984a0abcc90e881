"""One encrypted training run, end to end: client and server set up, data up, epochs, model down.

The client drives: it uploads, asks for one step at a time (so it can show progress and time
left), asks for the validation errors after each epoch, decides alone whether to go on, and
finally fetches the weight snapshots and decrypts the best epoch's. The server runs in this
process (``separate_process=False``: every message is still serialized) or in a child process
of its own, linked by a pipe, so the two never share memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
from privlearn.transfer.reference import EarlyStopping, epoch_order
from privlearn.transfer.roles import TRAINING_MESSAGES, Client, Server, early_stopping
from privlearn.transfer.session_store import CheckpointError, SessionStore
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


def _serve(
    conn, token: bytes, workdir: str | None, bundle_root: str, insecure: bool, checkpoint: bool
) -> None:
    """The server process: answer the client until it hangs up."""
    server = Server(
        workdir, bundle_root=bundle_root, insecure_for_testing=insecure, checkpoint=checkpoint
    )
    endpoint = PipeEndpoint(conn, server.handle, initiator=False, token=token)
    server.endpoint = endpoint
    try:
        endpoint.serve_forever()
        ops = server.ev.cost.total.as_dict() if server.ev else {}
        endpoint.send_final(Message("ack", {"ops": ops, "peak_gb": _peak_gb()}))
    finally:
        server.close()


def _digest(*arrays) -> str:
    """Names the data a checkpointed run trains on, so a resume with others is refused."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


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
        checkpoint: str | Path | None = None,
        _resumed: dict | None = None,
    ) -> None:
        """``ctx``: the client's keys, if they exist already (``ClientContext.load``);
        otherwise fresh ones for ``preset`` on ``backend``. ``checkpoint``: a new or empty
        folder where both sides keep their state after every training message
        (:mod:`~privlearn.transfer.session_store`), for :meth:`resume` to continue a run
        that was interrupted; the server's uploads and bundle live there too."""
        t0 = self._t0 = time.perf_counter()
        self.spec, self.seed = spec, seed
        if checkpoint is not None and workdir is not None:
            raise ValueError("give a checkpoint folder or a workdir: the checkpoint is its own")
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
        self.store = self._bundle_tmp = None
        self.generation = 0  # training messages sent: the server state the client's matches
        if checkpoint is not None:
            self.store = SessionStore(checkpoint)
            if _resumed is None:
                self.store.create(self.ctx)
            root = workdir = str(self.store.server.folder)
        else:
            # the bundle's directory (created 0700, its name random) is the one the server reads
            self._bundle_tmp = tempfile.TemporaryDirectory(prefix="privlearn-bundle-")
            root = self._bundle_tmp.name
        if separate_process:
            ctx = mp.get_context("spawn")
            self._conn, child = ctx.Pipe()
            token = link_token()
            self.proc = ctx.Process(
                target=_serve,
                args=(child, token, workdir, root, insecure_for_testing, self.store is not None),
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
                workdir,
                bundle_root=root,
                insecure_for_testing=insecure_for_testing,
                checkpoint=self.store is not None,
            )
            self.link, self.server.endpoint, self._thread = thread_pair(
                self.client.handle, self.server.handle, record=record_transcript
            )
        self.bundle_dir = Path(root) / "bundle"
        self._resumed = _resumed
        t = time.perf_counter()
        try:
            if _resumed is None:
                self._request(self.client.setup(self.bundle_dir))
            else:
                self._reconnect(_resumed)
        except BaseException:
            self.close()  # the caller gets no session to close
            raise
        self.seconds["setup"] = time.perf_counter() - t
        self.bundle_bytes = sum(f.stat().st_size for f in self.bundle_dir.iterdir())
        self.server_ops: dict[str, int] = {}
        self.server_peak_gb: float | None = None

    @classmethod
    def resume(
        cls,
        checkpoint: str | Path,
        *,
        separate_process: bool = False,
        insecure_for_testing: bool = False,
        record_transcript: bool = False,
    ) -> EncryptedSession:
        """The session a :meth:`fit` with ``checkpoint`` left there, its server restarted from
        the folder's ``server/`` part; :meth:`fit` with the same data continues it at the next
        step: the same steps, decisions and (on the simulator, bit for bit) weights as if it
        had never stopped."""
        store = SessionStore(checkpoint)
        ctx, state = store.client.read(insecure_for_testing=insecure_for_testing)
        try:
            spec = TrainSpec(**state["spec"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{store.client.state_path}: its spec is unreadable ({e})"
            ) from None
        return cls(
            spec,
            preset=ctx.params.name,
            backend=ctx.backend_name,
            seed=state["seed"],
            separate_process=separate_process,
            record_transcript=record_transcript,
            insecure_for_testing=insecure_for_testing,
            ctx=ctx,
            checkpoint=checkpoint,
            _resumed=state,
        )

    def _reconnect(self, state: dict) -> None:
        """Have the server load the state of the generation the client's state matches."""
        meta = {
            "generation": state["generation"],
            "bundle": self.bundle_dir.name,
            "spec": self.spec.to_meta(),
            "key": self.ctx.key_id,
        }
        reply = self.link.request(Message("resume", meta)).expect("ack")
        if reply.meta.get("step") != state["steps"]:
            raise CheckpointError(
                f"the server's state has {reply.meta.get('step')!r} steps done, the client's "
                f"{state['steps']}: the two parts are not of one checkpoint"
            )
        self.generation = state["generation"]
        self.client.restore_random_state(state["random"])

    def _request(self, msg: Message) -> Message:
        reply = self.link.request(msg)
        if msg.kind in TRAINING_MESSAGES:
            self.generation += 1
        return reply

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
        server then serves those weights (re-encrypted by the client) for inference. On a
        session :meth:`resume` opened, the same data (checked) continue the run instead."""
        load_start = os.getloadavg()[0]
        digest = _digest(x, y, x_val, y_val) if self.store is not None else None
        if self._resumed is not None:
            if self._resumed["data"] != digest:
                raise CheckpointError(
                    "these are not the data the checkpoint's run was started with: resume "
                    "it with the same training and validation rows and labels"
                )
            return self._train(self._resumed, progress, load_start)
        t = time.perf_counter()
        for msg in self.client.batches(x, y, "train", self.data_level) + self.client.batches(
            x_val, y_val, "val", self.data_level
        ):
            self._request(msg)
        state = {
            "spec": self.spec.to_meta(),
            "seed": self.seed,
            "data": digest,
            "y_val": np.asarray(y_val).tolist(),
            "n_batches": -(-len(x) // self.spec.batch_size),
            "epoch": 0,
            "done": 0,  # steps done in this epoch
            "steps": 0,
            "stopped": False,
            "stopper": dataclasses.asdict(early_stopping(self.spec)),
            "epoch_train_s": 0.0,
            "history": [],
            "seconds": {"encrypt_upload": time.perf_counter() - t, "train": 0.0, "validate": 0.0},
        }
        return self._train(state, progress, load_start)

    def _save(self, state: dict) -> None:
        if self.store is not None:
            state.update(generation=self.generation, random=self.client.random_state())
            self.store.client.write(self.ctx, state)

    def _train(self, state: dict, progress: bool, load_start: float) -> EncryptedRun:
        spec, client = self.spec, self.client
        y_val, n_batches, secs = np.asarray(state["y_val"]), state["n_batches"], state["seconds"]
        stopper = EarlyStopping(**state["stopper"])
        history = state["history"]
        self._save(state)
        with _progress(progress) as bar:
            task = bar.add_task(
                "encrypted training", total=spec.epochs * n_batches, completed=state["steps"]
            )
            while not state["stopped"] and state["epoch"] < spec.epochs:
                epoch = state["epoch"]
                t = time.perf_counter()
                for b in epoch_order(n_batches, epoch, self.seed)[state["done"] :]:
                    self._request(Message("train_step", {"batch": int(b), "epoch": epoch}))
                    state["done"] += 1
                    state["steps"] += 1
                    dt = time.perf_counter() - t
                    secs["train"] += dt
                    state["epoch_train_s"] += dt
                    self._save(state)
                    t = time.perf_counter()
                    bar.advance(task)
                t = time.perf_counter()
                val = client.validation(self._request(Message("validate")), y_val)
                val_time = time.perf_counter() - t
                secs["validate"] += val_time
                go_on = stopper.update(val["val_brier_flooded"])
                history.append(
                    {
                        "epoch": epoch + 1,  # shown to users: 1-based, as everywhere
                        **val,
                        "train_s": state["epoch_train_s"],
                        "validate_s": val_time,
                        "refreshes": client.refreshes,
                    }
                )
                state.update(
                    epoch=epoch + 1,
                    done=0,
                    stopped=not go_on,
                    stopper=dataclasses.asdict(stopper),
                    epoch_train_s=0.0,
                )
                self._save(state)
                bar.update(
                    task,
                    description=f"epoch {epoch + 1}: val Brier {val['val_brier']:.4f}"
                    f", accuracy {val['val_accuracy']:.3f}",
                )
            bar.update(task, total=state["steps"])
        self.seconds.update(secs)
        t = time.perf_counter()
        best = stopper.best_epoch if spec.early_stopping else len(history) - 1
        weights = client.weights(self._request(Message("get_model")), best)
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
            steps=state["steps"],
            seconds=dict(self.seconds),
            client_refreshes=client.refreshes,
            bytes_to_server=self.link.bytes_sent,
            bytes_to_client=self.link.bytes_received,
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
            self.server_ops = self.server.ev.cost.total.as_dict() if self.server.ev else {}
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
