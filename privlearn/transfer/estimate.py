"""What an encrypted training run will cost, before it runs, and the same figures measured after.

Which operations a training step, a validation batch and an upload run, at which levels, and
which ciphertexts cross the link at which levels, depend on the spec and the preset only,
never on the data. So a dry run on the simulator at the same preset (one upload per split,
``DRY_STEPS`` steps, one validation) counts them, and what ``privlearn bench he-ops``
measured on OpenFHE for that preset (``privlearn/he/time_models.json``: the time model, the
encryption and decryption times, ciphertext and key sizes) turns the counts into seconds and
bytes. The client's flooding bound (simulated once per run, see ``roles.Client``) is timed in
the dry run itself. Totals assume every epoch runs (early stopping can only shorten a run).

Ciphertext bytes are linear in the RNS limbs between the sizes measured at level 1 and at the
top. The server's memory is the bundle plus the ciphertexts it keeps (weights, momentum, the
snapshots early stopping may return to, the uploaded batches it reads back one at a time),
without the Python process itself. Seconds are scaled from the load the time model was measured
at to ``load`` (default: the machine's load now): with more runnable threads than cores each
gets a share of ``cores / load``, so time grows by ``max(load, cores) / max(load_then,
cores)``. The machine must be the one the time model was measured on (it says which).
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from privlearn.he import io
from privlearn.he.cost import Counts, TimeModel, measured_preset
from privlearn.he.params import get_params
from privlearn.transfer.protocol import Message
from privlearn.transfer.session import EncryptedSession
from privlearn.transfer.train import TrainSpec

DRY_STEPS = 3  # the first step has no momentum yet; the last one is the typical step


@dataclass(frozen=True)
class Estimate:
    """Predicted cost of training ``spec`` on ``rows`` samples (``val_rows`` held out)."""

    preset: str
    refresh: str
    rows: int
    val_rows: int
    features: int
    classes: int
    batch_size: int
    epochs: int
    steps: int
    seconds_per_iteration: float
    seconds_validation_per_epoch: float
    seconds_setup: float
    seconds_upload: float
    seconds_total: float
    server_memory_gb: float
    bundle_mb: float
    mb_to_server: float
    mb_by_kind: dict[str, float]
    time_model: str
    load: float
    load_factor: float

    def as_dict(self) -> dict:
        return asdict(self)


def estimate(
    rows: int,
    features: int,
    classes: int,
    *,
    preset: str = "n15-d11",
    val_rows: int | None = None,
    validation_fraction: float = 0.15,
    load: float | None = None,
    **hyper,
) -> Estimate:
    """The cost of fitting ``rows`` x ``features`` data in ``classes`` classes (``hyper``:
    :class:`TrainSpec` fields) at ``load``; ``val_rows`` default to the estimator's
    stratified hold-out."""
    if rows < 2 or features < 1 or classes < 2:
        raise ValueError(
            f"need rows >= 2, features >= 1, classes >= 2; got {rows}, {features}, {classes}"
        )
    if val_rows is None:
        val_rows = math.ceil(rows * validation_fraction)
        rows -= val_rows
    spec = TrainSpec(classes=classes, features=features + 1, **hyper)
    params = get_params(preset)
    row = measured_preset(params.name)
    tm = TimeModel.from_bench({"rows": [row]}, params.name)
    dry = _dry_run(spec, params.name)
    enc_s, dec_s = row["seconds"]["encrypt"], row["seconds"]["decrypt"]
    load = os.getloadavg()[0] if load is None else load
    cores = row["machine"]["host_cpus"]
    factor = max(load, cores) / max(row["machine"]["loadavg_1m"], cores)

    def seconds(phase: str) -> float:
        client = dry[phase]["client"]
        ops = tm.seconds(dry[phase]["server"])
        return factor * (ops + enc_s * client["encrypt"] + dec_s * client["decrypt"])

    size = _sizes(row, params.depth)
    per_step, per_val = seconds("step"), seconds("validate")
    # measured at the dry run's load, scaled like the rest to ``load``
    flooding = dry["flooding_bound_s"] * max(load, cores) / max(dry["load_1m"], cores)
    n_batches, n_val = -(-rows // spec.batch_size), -(-val_rows // spec.batch_size)
    steps = spec.epochs * n_batches
    upload = seconds("upload_train") * n_batches + seconds("upload_val") * n_val
    keys = len(dry["rotations"]) + 1  # rotation keys and conjugation
    per_key = (row["seconds"]["bundle"] + row["seconds"]["load_bundle"]) / KEYS_IN_BENCH_BUNDLES
    setup = factor * (row["seconds"]["keygen"] + per_key * keys)
    bundle = (keys + 1) * row["sizes_mb"]["rotation_key_mb"] + row["sizes_mb"]["ciphertext_mb_top"]
    repeat = {
        "upload_train": n_batches,
        "upload_val": n_val,
        "step": steps,
        "validate": spec.epochs * n_val,
        "get_model": 1,
        "set_model": 1,
    }
    by_kind: Counter[str] = Counter({"bundle": bundle})
    for phase, times in repeat.items():
        for kind, levels in dry[phase]["levels"].items():
            by_kind[kind] += times * sum(n * size(lv) for lv, n in levels.items())
    for kind, levels in dry["setup"]["levels"].items():
        by_kind[kind] += sum(n * size(lv) for lv, n in levels.items())
    to_server = sum(v for k, v in by_kind.items() if k in TO_SERVER)
    kept = dry["server_ciphertexts"]
    memory_mb = bundle + sum(
        n * size(params.depth) for n in (kept["weights"] * (spec.patience + 3), kept["batch"])
    )
    return Estimate(
        preset=params.name,
        refresh=spec.refresh,
        rows=rows,
        val_rows=val_rows,
        features=features,
        classes=classes,
        batch_size=spec.batch_size,
        epochs=spec.epochs,
        steps=steps,
        seconds_per_iteration=per_step,
        seconds_validation_per_epoch=per_val * n_val + flooding / spec.epochs,
        seconds_setup=setup,
        seconds_upload=upload,
        seconds_total=setup + upload + steps * per_step + spec.epochs * n_val * per_val + flooding,
        server_memory_gb=memory_mb / 1e3,
        bundle_mb=bundle,
        mb_to_server=to_server,
        mb_by_kind=dict(by_kind),
        time_model=tm.machine,
        load=load,
        load_factor=factor,
    )


# what ``bench he-ops`` generates in its three bundles: none, one, and 8 rotations + conjugation
KEYS_IN_BENCH_BUNDLES = 10
TO_SERVER = ("bundle", "setup", "upload", "refreshed", "set_model", "predict", "train_step")


def _sizes(row: dict, depth: int):
    """Serialized ciphertext MB at a level: linear in its RNS limbs (level + 1), through the
    sizes measured at level 1 (2 limbs) and at the top."""
    lo, hi = row["sizes_mb"]["ciphertext_mb_level1"], row["sizes_mb"]["ciphertext_mb_top"]
    per_limb = (hi - lo) / max(depth - 1, 1)
    return lambda level: lo + per_limb * (level - 1)


def _dry_run(spec: TrainSpec, preset: str) -> dict:
    """Op counts (server and client) and ciphertext levels by message kind, per phase."""
    rng = np.random.default_rng(0)
    b = spec.batch_size
    x = rng.normal(size=(b, spec.features - 1))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.arange(b) % spec.classes
    out: dict = {}
    with EncryptedSession(spec, preset=preset, backend="simulator", record_transcript=True) as s:
        server_cost, client_cost = s.server.ev.cost, s.ctx.cost
        out["setup"] = _phase(s, 0, Counts(), Counts())
        out["rotations"] = sorted(s.spec.keys(s.ctx.slots)[0])

        def run(name: str, requests) -> None:
            start = len(s.link.transcript)
            with server_cost.measure() as srv, client_cost.measure() as cli:
                for msg in requests():
                    s.link.request(msg)
            out[name] = _phase(s, start, srv, cli)

        run("upload_train", lambda: s.client.batches(x, y, "train", s.data_level))
        run("upload_val", lambda: s.client.batches(x, y, "val", s.data_level))
        for _ in range(DRY_STEPS):
            run("step", lambda: [Message("train_step", {"batch": 0, "epoch": 0})])
        run("validate", lambda: [Message("validate")])
        run("get_model", lambda: [Message("get_model")])
        zeros = np.zeros((spec.classes, spec.features))
        run("set_model", lambda: [s.client.set_model(zeros)])  # the weights served after fit
        # the client's flooding bound, simulated once per run at its first validation: timed
        # here, as it runs on the simulator in a real run too
        t = time.perf_counter()
        s.client._simulated_error_stds  # noqa: B018 - a cached property, computed here
        out["flooding_bound_s"], out["load_1m"] = time.perf_counter() - t, os.getloadavg()[0]
        trainer = s.server.trainer
        out["server_ciphertexts"] = {
            "weights": len(trainer.w.blocks),
            "batch": sum(m["count"] for m in s.server.batches["train"][0]),
        }
    return out


def _phase(s: EncryptedSession, start: int, server: Counts, client: Counts) -> dict:
    """The counts of a phase and the levels of the ciphertexts its messages carried."""
    levels: dict[str, Counter] = {}
    for blob in s.link.transcript[start:]:
        msg = Message.from_bytes(blob)
        for ct in msg.blobs:
            level = io.unpack(ct, kind="ciphertext").meta["level"]
            levels.setdefault(msg.kind, Counter())[level] += 1
    return {"server": server, "client": client, "levels": levels}


def measured(run: dict) -> dict:
    """The figures of :class:`Estimate` as a run measured them, by the same names, from its
    :meth:`EncryptedRun.summary` (a saved model's manifest keeps it). Memory is the peak of
    the process that held the server (with the client too unless it ran apart)."""
    s, by_kind, peak = run["seconds"], run.get("bytes_by_kind", {}), run["peak_memory_gb"]
    return {
        "steps": run["steps"],
        "seconds_per_iteration": s["train"] / max(run["steps"], 1),
        "seconds_validation_per_epoch": s["validate"] / max(len(run["history"]), 1),
        "seconds_setup": s["keygen"] + s["setup"],
        "seconds_upload": s["encrypt_upload"],
        "seconds_total": s["total"],
        # None when the server ran in its own process and its peak arrived only at close
        "server_memory_gb": peak.get("server") or peak.get("client+server"),
        "bundle_mb": by_kind.get("bundle", 0) / 1e6,
        "mb_to_server": sum(v for k, v in by_kind.items() if k in TO_SERVER) / 1e6,
        "mb_by_kind": {k: v / 1e6 for k, v in by_kind.items()},
    }
