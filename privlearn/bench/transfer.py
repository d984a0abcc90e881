"""`privlearn bench transfer`: encrypted fine-tuning per task, HETAL's shape, and a peer.

Three parts, each written to JSON and printed:

- **tasks**: every task run three ways (plaintext exact softmax, plaintext approximate softmax,
  encrypted) with :func:`privlearn.transfer.experiment.run_task`, in each requested refresh
  mode and backend;
- **hetal-shape**: iterations timed at HETAL's benchmark shape (batch 1024, 769 columns,
  10 classes) on synthetic features, in client-refresh and bootstrap mode, beside HETAL's
  published 4.29-15.72 s per iteration (GPU, HEaaN);
- **peer**: Concrete ML's encrypted SGD logistic regression (TFHE) on the same binary task
  (breast cancer), run in its own virtual environment (its pins clash with ours).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from privlearn.bench import machine
from privlearn.transfer.experiment import TASK_DEFAULTS, run_task, with_epochs
from privlearn.transfer.session import EncryptedSession
from privlearn.transfer.train import TrainSpec

HETAL_PUBLISHED = {
    "seconds_per_iteration": [4.29, 15.72],
    "note": "HETAL (ICML 2023), GPU (A40), HEaaN, batch 512-2048, 768 features "
    "+ bias, 3-10 classes",
}
PEER_PYTHON = Path(".peers/concrete-ml/bin/python")
RESULTS = Path("results")
PEER_SCRIPT = Path(__file__).with_name("peer_concrete.py")


def hetal_shape(
    refresh: str, preset: str, *, backend: str = "openfhe", steps: int = 1, seed: int = 0
) -> dict:
    """Time ``steps`` training iterations at (batch 1024, 769 columns, 10 classes)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, 1024 * steps)
    x = rng.normal(size=(len(y), 768)) + 2 * np.eye(10, 768)[y]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    spec = TrainSpec(
        classes=10,
        features=769,
        batch_size=1024,
        lr=1.0,
        epochs=1,
        refresh=refresh,
        early_stopping=False,
    )
    with EncryptedSession(spec, preset=preset, backend=backend, seed=seed) as s:
        t = time.perf_counter()
        for msg in s.client.batches(x, y, "train", s.data_level):
            s.link.request(msg)
        upload = time.perf_counter() - t
        server = s.server
        times = []
        for b in range(steps):
            t = time.perf_counter()
            with server.ev.cost.measure() as counts:
                s.link.request(_step(b))
            times.append(time.perf_counter() - t)
        return {
            "refresh": refresh,
            "preset": preset,
            "backend": backend,
            "steps": steps,
            "seconds_per_iteration": float(np.mean(times)),
            "per_step": times,
            "encrypt_upload_s": upload,
            "keygen_setup_s": s.seconds["keygen"] + s.seconds["setup"],
            "client_refreshes": s.client.refreshes,
            "ops_last_step": counts.as_dict(),
        }


def _step(batch: int):
    from privlearn.transfer.protocol import Message

    return Message("train_step", {"batch": batch, "epoch": 0})


def peer(task: str = "cancer", max_iter: int = 10, timeout_s: int = 3600) -> dict:
    """Concrete ML's SGDClassifier(fit_encrypted=True) in its own environment."""
    if not PEER_PYTHON.exists():
        return {"error": f"{PEER_PYTHON} is missing: create it with `make peer-concrete`"}
    from privlearn.transfer.data import load_task

    t = load_task(task, progress=False)
    with open("/tmp/privlearn-peer-data.npz", "wb") as f:
        np.savez(f, x=t.x_train, y=t.y_train, xt=t.x_test, yt=t.y_test)
    out = subprocess.run(
        [str(PEER_PYTHON), str(PEER_SCRIPT), "/tmp/privlearn-peer-data.npz", str(max_iter)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(
    tasks: list[str],
    refresh_modes: list[str],
    *,
    backend: str,
    epochs: int | None,
    max_train: int | None,
    hetal: list[str],
    peer_task: str | None,
    console: Console,
    resume: bool = True,
) -> dict:
    """Each task's result is also kept in ``results/transfer-<task>-<mode>-<backend>.json``;
    with ``resume`` a result already there (same settings) is read instead of re-run."""
    rows, shapes = [], []
    for task in tasks:
        for refresh in refresh_modes:
            preset = "n16-boot7" if refresh == "bootstrap" else "n15-d11"
            config = with_epochs(TASK_DEFAULTS[task], epochs)
            done = RESULTS / f"transfer-{task}-{refresh}-{backend}.json"
            if resume and done.exists():
                r = json.loads(done.read_text())
                if r["config"] == asdict(config) and r["sizes"].get("max_train") == max_train:
                    console.print(f"{task}, {refresh}: kept the result in {done}")
                    r.pop("history", None)
                    rows.append(r)
                    continue
            console.print(f"[bold]{task}[/], {refresh} refresh, {backend}, {preset}")
            r = run_task(
                task,
                refresh=refresh,
                preset=preset,
                backend=backend,
                config=config,
                max_train=max_train,
                out_dir=RESULTS,
            )
            r.pop("history")
            rows.append(r)
    for refresh in hetal:
        preset = "n16-boot7" if refresh == "bootstrap" else "n15-d11"
        console.print(f"HETAL shape, {refresh} refresh, {preset}")
        shapes.append(hetal_shape(refresh, preset, backend=backend))
    peer_result = peer(peer_task) if peer_task else None
    return {
        "benchmark": "transfer",
        "machine": machine(),
        "tasks": rows,
        "hetal_shape": shapes,
        "hetal_published": HETAL_PUBLISHED,
        "peer": peer_result,
    }


def print_table(results: dict, console: Console) -> None:
    t = Table(title=f"encrypted fine-tuning (load {results['machine']['loadavg_1m']})")
    for col in (
        "task",
        "test n",
        "mode",
        "backend / preset",
        "plain exact",
        "plain approx",
        "encrypted",
        "Δ pts",
        "same pred.",
        "s / iter",
        "iters",
        "total s",
        "refresh/iter",
        "boot/iter",
        "peak GB",
    ):
        t.add_column(col, justify="right")
    for r in results["tasks"]:
        a = r["accuracy"]
        t.add_row(
            r["task"],
            str(r["sizes"]["test"]),
            r["refresh"],
            f"{r['backend']} / {r['preset']}",
            f"{a['exact']:.4f}",
            f"{a['approx']:.4f}",
            f"{a['encrypted']:.4f}",
            f"{r['encrypted_minus_exact_points']:+.2f}",
            f"{100 * r['identical_predictions_vs_approx']:.1f}%",
            f"{r['seconds_per_iteration']:.1f}",
            str(r["steps"]),
            f"{r['seconds']['total']:.0f}",
            f"{r['client_refreshes_per_iteration']:.1f}",
            f"{r['bootstraps_per_iteration']:.1f}",
            f"{max(v for v in r['peak_memory_gb'].values() if v):.1f}",
        )
    console.print(t)
    if results["hetal_shape"]:
        h = Table(title="HETAL's shape (batch 1024, 769 columns, 10 classes), one iteration")
        for col in ("mode", "preset", "backend", "s / iteration", "HETAL published (GPU)"):
            h.add_column(col)
        pub = results["hetal_published"]["seconds_per_iteration"]
        for r in results["hetal_shape"]:
            h.add_row(
                r["refresh"],
                r["preset"],
                r["backend"],
                f"{r['seconds_per_iteration']:.1f}",
                f"{pub[0]}-{pub[1]}",
            )
        console.print(h)
    if results["peer"]:
        console.print(f"peer: {json.dumps(results['peer'])}")
