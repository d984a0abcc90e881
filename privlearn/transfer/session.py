"""One encrypted training run, end to end: client and server set up, data up, epochs, model down.

The client drives: it uploads, asks for one step at a time (so it can show progress and time
left), asks for the validation errors after each epoch, decides alone whether to go on, and
finally fetches the weight snapshots and decrypts the best epoch's. The server runs in this
process (``separate_process=False``: every message is still serialized) or in a child process
of its own, linked by a pipe, so the two never share memory.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from privlearn.he import ClientContext
from privlearn.transfer.protocol import Message, PipeEndpoint, local_pair
from privlearn.transfer.reference import epoch_order
from privlearn.transfer.roles import Client, Server, early_stopping
from privlearn.transfer.train import TrainSpec


@dataclass
class EncryptedRun:
    weights: np.ndarray  # decrypted, c x (f+1), bias last
    best_epoch: int
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
    transcript: list[bytes] | None = field(default=None, repr=False)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("weights", "transcript")}


def _serve(conn, workdir: str | None) -> None:
    """The server process: answer the client until it hangs up."""
    server = Server(workdir)
    endpoint = PipeEndpoint(conn, server.handle)
    server.endpoint = endpoint
    try:
        endpoint.serve_forever()
        conn.send_bytes(
            Message(
                "ack", {"ops": server.ev.cost.total.as_dict(), "peak_gb": _peak_gb()}
            ).to_bytes()
        )
    finally:
        server.close()


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run_encrypted(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    spec: TrainSpec,
    *,
    preset: str,
    backend: str = "openfhe",
    seed: int = 0,
    separate_process: bool = False,
    workdir: str | None = None,
    record_transcript: bool = False,
    progress: bool = True,
    insecure_for_testing: bool = False,
) -> EncryptedRun:
    """Train ``spec`` on encrypted (x, y) with early stopping on (x_val, y_val)."""
    t0 = time.perf_counter()
    ctx = ClientContext.create(
        preset, backend, seed=seed, insecure_for_testing=insecure_for_testing
    )
    client = Client(ctx, spec, seed=seed)
    seconds: dict[str, float] = {"keygen": time.perf_counter() - t0}
    server = proc = transcript = None
    if separate_process:
        parent, child = mp.get_context("spawn").Pipe()
        proc = mp.get_context("spawn").Process(target=_serve, args=(child, workdir), daemon=True)
        proc.start()
        link = PipeEndpoint(parent, client.handle, peer_alive=proc.is_alive)
    else:
        server = Server(workdir)
        link, server_end = local_pair(client.handle, server.handle, record=record_transcript)
        server.endpoint = server_end
        transcript = link.transcript
    bundle_tmp = (
        tempfile.TemporaryDirectory(prefix="privlearn-bundle-")
        if spec.refresh == "bootstrap"
        else None
    )
    try:
        t = time.perf_counter()
        link.request(client.setup(bundle_dir=bundle_tmp.name if bundle_tmp else None))
        seconds["setup"] = time.perf_counter() - t

        t = time.perf_counter()
        level = spec.data_level(ctx.slots, spare=1 if spec.refresh == "bootstrap" else 0)
        uploads = client.batches(x, y, "train", level) + client.batches(x_val, y_val, "val", level)
        for msg in uploads:
            link.request(msg)
        seconds["encrypt_upload"] = time.perf_counter() - t
        n_batches = -(-len(x) // spec.batch_size)

        stopper = early_stopping(spec)
        history: list[dict] = []
        steps = 0
        train_s = val_s = 0.0
        with _progress(progress) as bar:
            task = bar.add_task("encrypted training", total=spec.epochs * n_batches)
            for epoch in range(spec.epochs):
                t = time.perf_counter()
                for b in epoch_order(n_batches, epoch, seed):
                    link.request(Message("train_step", {"batch": int(b), "epoch": epoch}))
                    steps += 1
                    bar.advance(task)
                epoch_s = time.perf_counter() - t
                t = time.perf_counter()
                loss, noisy = client.validation_loss(link.request(Message("validate")), len(y_val))
                val_time = time.perf_counter() - t
                train_s, val_s = train_s + epoch_s, val_s + val_time
                go_on = stopper.update(noisy)
                history.append(
                    {
                        "epoch": epoch,
                        "val_brier": loss,
                        "val_brier_flooded": noisy,
                        "train_s": epoch_s,
                        "validate_s": val_time,
                        "refreshes": client.refreshes,
                    }
                )
                bar.update(task, description=f"epoch {epoch}: val Brier {loss:.4f}")
                if not go_on:
                    bar.update(task, total=steps)
                    break
        seconds.update(train=train_s, validate=val_s)
        t = time.perf_counter()
        weights = client.weights(link.request(Message("get_model")), stopper.best_epoch)
        seconds["fetch_model"] = time.perf_counter() - t
        if proc is not None:
            link.close()
            final = Message.from_bytes(link._recv())
            proc.join(60)
            ops, server_peak = final.meta["ops"], final.meta["peak_gb"]
        else:
            ops, server_peak = server.ev.cost.total.as_dict(), None
    finally:
        if server is not None:
            server.close()
        if bundle_tmp is not None:
            bundle_tmp.cleanup()
    seconds["total"] = time.perf_counter() - t0
    params = ctx.params
    return EncryptedRun(
        weights=weights,
        best_epoch=stopper.best_epoch,
        history=history,
        backend=backend,
        real_encryption=ctx.is_real_encryption,
        preset=params.name,
        security="128-bit (HE standard, classic)" if params.secure else "INSECURE (tests)",
        refresh=spec.refresh,
        steps=steps,
        seconds=seconds,
        client_refreshes=client.refreshes,
        bytes_to_server=link.bytes_sent,
        bytes_to_client=link.bytes_received,
        server_ops=ops,
        peak_memory_gb={
            "client" if proc else "client+server": _peak_gb(),
            **({"server": server_peak} if proc else {}),
        },
        transcript=transcript,
    )


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
