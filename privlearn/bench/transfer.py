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
from privlearn.he.cost import Counts, TimeModel
from privlearn.transfer.experiment import TASK_DEFAULTS, run_task, with_epochs
from privlearn.transfer.prepare import prepare
from privlearn.transfer.session import EncryptedSession

HETAL_PUBLISHED = {
    "seconds_per_iteration": [4.29, 15.72],
    "note": "HETAL (ICML 2023), GPU (A40), HEaaN, batch 512-2048, 768 features "
    "+ bias, 3-10 classes",
}
PEER_PYTHON = Path(".peers/concrete-ml/bin/python")
RESULTS = Path("results")
PRESET_FOR = {"client": "n15-d11", "bootstrap": "n16-boot7"}
PEER_SCRIPT = Path(__file__).with_name("peer_concrete.py")


FEATURES = {"cancer": 30, "wine": 13, "digits": 1280, "mnist": 1280, "tweets": 384}
CLASSES = {"cancer": 2, "wine": 3, "digits": 10, "mnist": 10, "tweets": 3}
KEY_SWITCHES = ("mult", "rotate", "hoisted_rotate", "conjugate")


def iteration(
    batch: int,
    columns: int,
    classes: int,
    refresh: str,
    preset: str,
    *,
    backend: str = "openfhe",
    steps: int = 1,
    seed: int = 0,
    he_ops: dict | None = None,
) -> dict:
    """Time ``steps`` training iterations of a (batch, columns, classes) head on synthetic
    features.

    With ``he_ops`` (a ``bench he-ops`` document measured on OpenFHE for ``preset``) the
    iteration is also *predicted* from the ops it counted, level by level, and split into
    where the time goes: key switches, plaintext products, rescales, ..., client refreshes
    (one decryption and one encryption each)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, batch * steps)
    x = rng.normal(size=(len(y), columns - 1)) + 2 * np.eye(classes, columns - 1)[y]
    # timing only: one epoch of ``steps`` steps, whatever the validation loss says
    spec, scaler = prepare(
        x, classes, batch_size=batch, refresh=refresh, lr=1.0, epochs=1, early_stopping=False
    )
    x = scaler.transform(x)
    with EncryptedSession(spec, preset=preset, backend=backend, seed=seed) as s:
        t = time.perf_counter()
        for msg in s.client.batches(x, y, "train", s.data_level):
            s.link.request(msg)
        upload = time.perf_counter() - t
        times = []
        for b in range(steps):
            refreshes, t = s.client.refreshes, time.perf_counter()
            with s.server.ev.cost.measure() as counts:
                s.link.request(_step(b))
            times.append(time.perf_counter() - t)
        out = {
            "shape": [batch, columns, classes],
            "spec": spec.to_meta(),
            "refresh": refresh,
            "preset": preset,
            "backend": backend,
            "steps": steps,
            "seconds_per_iteration": float(np.mean(times)),
            "per_step": times,
            "encrypt_upload_s": upload,
            "keygen_setup_s": s.seconds["keygen"] + s.seconds["setup"],
            "client_refreshes": s.client.refreshes - refreshes,
            "ops_last_step": counts.as_dict(),
        }
    if he_ops is not None:
        out |= _predicted(counts, out["client_refreshes"], he_ops, preset)
    return out


def _predicted(counts: Counts, refreshes: int, he_ops: dict, preset: str) -> dict:
    model = TimeModel.from_bench(he_ops, preset)
    row = next(r for r in he_ops["rows"] if r["preset"] == preset and r["backend"] == "openfhe")
    parts: dict[str, float] = {}
    for (op, level), n in counts.by_op_level.items():
        one = Counts()
        one.add(op, level, n)
        key = "key switches" if op in KEY_SWITCHES else op
        parts[key] = parts.get(key, 0.0) + model.seconds(one)
    parts["client refreshes"] = refreshes * (row["seconds"]["encrypt"] + row["seconds"]["decrypt"])
    total = sum(parts.values())
    return {
        "predicted_seconds_per_iteration": total,
        "predicted_share": {k: v / total for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
        "predicted_from": f"{model.backend} {model.preset}: {model.machine}",
    }


def hetal_shape(refresh: str, preset: str, **kw) -> dict:
    """One iteration at HETAL's benchmark shape: batch 1024, 769 columns, 10 classes."""
    return iteration(1024, 769, 10, refresh, preset, **kw)


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


def _kept(path: Path, check) -> dict | None:
    """A result kept from an earlier run, if it exists and ``check`` accepts its settings."""
    if path.exists():
        r = json.loads(path.read_text())
        if check(r):
            return r
    return None


def _same(config, max_train: int | None):
    return lambda r: r["config"] == asdict(config) and r["sizes"].get("max_train") == max_train


def run(
    tasks: list[str],
    refresh_modes: list[str],
    *,
    backend: str,
    epochs: int | None,
    max_train: int | None,
    hetal: list[str],
    peer_task: str | None,
    peer_iters: int,
    console: Console,
    time_model: Path | None = None,
    breakdown: bool = False,
) -> None:
    """Run the requested parts, keeping each result in ``results/transfer-*.json``.

    A part whose kept result has the same settings is not run again, so a long benchmark can
    be built up over several invocations (each row records its own epochs and training size);
    :func:`collect` then gathers every kept result into one table."""
    if breakdown:  # one client-mode iteration per task shape, counted and predicted
        if time_model is None:
            raise ValueError("--breakdown needs --time-model (a `bench he-ops` JSON)")
        he_ops = json.loads(time_model.read_text())
        out = {
            task: iteration(
                TASK_DEFAULTS[task].batch_size,
                FEATURES[task] + 1,
                CLASSES[task],
                "client",
                PRESET_FOR["client"],
                backend="simulator",
                he_ops=he_ops,
            )
            for task in tasks or list(TASK_DEFAULTS)
        }
        out["hetal-shape"] = hetal_shape(
            "client", PRESET_FOR["client"], backend="simulator", he_ops=he_ops
        )
        (RESULTS / "transfer-breakdown.json").write_text(json.dumps(out, indent=1))
        return
    for task in tasks:
        for refresh in refresh_modes:
            config = with_epochs(TASK_DEFAULTS[task], epochs)
            done = RESULTS / f"transfer-{task}-{refresh}-{backend}.json"
            if _kept(done, _same(config, max_train)):
                console.print(f"{task}, {refresh}: kept the result in {done}")
                continue
            preset = PRESET_FOR[refresh]
            console.print(f"[bold]{task}[/], {refresh} refresh, {backend}, {preset}")
            run_task(
                task,
                refresh=refresh,
                preset=preset,
                backend=backend,
                config=config,
                max_train=max_train,
                out_dir=RESULTS,
            )
    for refresh in hetal:
        done = RESULTS / f"transfer-hetal-{refresh}-{backend}.json"
        if not _kept(done, lambda r: True):
            preset = PRESET_FOR[refresh]
            console.print(f"HETAL shape, {refresh} refresh, {preset}, {backend}")
            he_ops = json.loads(time_model.read_text()) if time_model else None
            r = hetal_shape(refresh, preset, backend=backend, he_ops=he_ops)
            done.write_text(json.dumps(r | {"machine": machine()}, indent=1))
    if peer_task:
        done = RESULTS / f"transfer-peer-{peer_task}.json"
        if not _kept(done, lambda r: r.get("max_iter") == peer_iters and "error" not in r):
            console.print(f"Concrete ML on {peer_task}, max_iter={peer_iters}")
            r = peer(peer_task, peer_iters) | {"task": peer_task, "machine": machine()}
            done.write_text(json.dumps(r))


def logreg_baseline(task: str, max_train: int | None) -> float:
    """Test accuracy of scikit-learn's logistic regression on the same frozen features and
    training rows: the orientation figure for each task (kept in results/)."""
    path = RESULTS / "transfer-logreg.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    key = f"{task}/{max_train}"
    if key not in kept:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from privlearn.transfer.data import load_task

        t = load_task(task, progress=False)
        x, y = t.x_train[:max_train], t.y_train[:max_train]
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(x, y)
        kept[key] = float(model.score(t.x_test, t.y_test))
        path.write_text(json.dumps(kept, indent=1))
    return kept[key]


def collect() -> dict:
    """Every kept result: tasks, HETAL's shape (measured, or predicted: the simulator's op
    counts times OpenFHE's op times), the peer."""
    kept = sorted(RESULTS.glob("transfer-*-*-*.json"))
    rows = [json.loads(p.read_text()) for p in kept if not p.name.startswith("transfer-hetal-")]
    order = {t: i for i, t in enumerate(TASK_DEFAULTS)}
    rows.sort(key=lambda r: (order.get(r["task"], 99), r["refresh"]))
    for r in rows:
        r.pop("history", None)
        r["sklearn_logreg_accuracy"] = logreg_baseline(r["task"], r["sizes"].get("max_train"))
    hetal = sorted(RESULTS.glob("transfer-hetal-*.json"))  # the simulator's rows predict
    shapes = [json.loads(p.read_text()) for p in hetal]
    peers = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("transfer-peer-*.json"))]
    split = RESULTS / "transfer-breakdown.json"
    return {
        "benchmark": "transfer",
        "machine": machine(),
        "tasks": rows,
        "hetal_shape": shapes,
        "hetal_published": HETAL_PUBLISHED,
        "peer": peers,
        "breakdown": json.loads(split.read_text()) if split.exists() else {},
    }


def _task_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    cols = [
        "task",
        "train / test n",
        "epochs (best)",
        "sklearn LR",
        "mode",
        "backend / preset",
        "plain exact",
        "plain approx",
        "encrypted",
        "enc − approx pts",
        "same pred.",
        "s / iter",
        "iters",
        "total s",
        "refresh / iter",
        "boot / iter",
        "peak GB",
    ]
    rows = []
    for r in results["tasks"]:
        a, n = r["accuracy"], r["sizes"]
        train = n["train"] if n.get("max_train") is None else min(n["train"], n["max_train"])
        rows.append(
            [
                r["task"],
                f"{train} / {n['test']}",
                f"{r['epochs_run']} ({r['best_epoch']['encrypted']})",
                f"{r['sklearn_logreg_accuracy']:.4f}",
                r["refresh"],
                f"{r['backend']} / {r['preset']}",
                f"{a['exact']:.4f}",
                f"{a['approx']:.4f}",
                f"{a['encrypted']:.4f}",
                f"{r['encrypted_minus_approx_points']:+.2f}",
                f"{100 * r['identical_predictions_vs_approx']:.1f}%",
                f"{r['seconds_per_iteration']:.1f}",
                str(r["steps"]),
                f"{r['seconds']['total']:.0f}",
                f"{r['client_refreshes_per_iteration']:.1f}",
                f"{r['bootstraps_per_iteration']:.1f}",
                f"{max(v for v in r['peak_memory_gb'].values() if v):.1f}",
            ]
        )
    return cols, rows


def _shape_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    pub = results["hetal_published"]["seconds_per_iteration"]
    cols = [
        "mode",
        "preset",
        "s / iteration (this CPU)",
        "refreshes",
        "bootstraps",
        "HETAL published (A40 GPU)",
    ]
    rows = [
        [
            r["refresh"],
            r["preset"],
            _shape_seconds(r),
            str(r["client_refreshes"]),
            str(r["ops_last_step"].get("bootstrap", 0)),
            f"{pub[0]}-{pub[1]}",
        ]
        for r in results["hetal_shape"]
    ]
    return cols, rows


def _breakdown_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    cols = [
        "shape (batch, columns, classes)",
        "key switches",
        "predicted s / iter",
        "where the time goes (predicted)",
    ]
    rows = [
        [
            f"{name} {tuple(r['shape'])}",
            str(r["ops_last_step"]["key_switches"]),
            f"{r['predicted_seconds_per_iteration']:.1f}",
            ", ".join(f"{k} {100 * v:.0f} %" for k, v in r["predicted_share"].items() if v >= 0.01),
        ]
        for name, r in results.get("breakdown", {}).items()
    ]
    return cols, rows


def _shape_seconds(r: dict) -> str:
    if r["backend"] == "openfhe":
        return f"{r['seconds_per_iteration']:.1f} (measured)"
    if "predicted_seconds_per_iteration" in r:
        return f"{r['predicted_seconds_per_iteration']:.0f} (predicted)"
    return f"{r['seconds_per_iteration']:.1f} (simulator, not encryption)"


def _peer_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    cols = [
        "peer",
        "task (train / test)",
        "max_iter",
        "plaintext-quantized acc.",
        "encrypted acc.",
        "encrypted fit s",
    ]
    rows = [
        [
            p["peer"],
            f"{p['task']} ({p['train']} / {p['test']})",
            str(p["max_iter"]),
            f"{p.get('accuracy_disable', float('nan')):.4f}",
            f"{p['accuracy_execute']:.4f}",
            f"{p['fit_execute_s']:.0f}",
        ]
        for p in results["peer"]
        if "error" not in p
    ]
    return cols, rows


def _tables(results: dict) -> list[tuple[list[str], list[list[str]]]]:
    return [
        _task_rows(results),
        _shape_rows(results),
        _peer_rows(results),
        _breakdown_rows(results),
    ]


def print_table(results: dict, console: Console) -> None:
    titles = (
        "encrypted fine-tuning",
        "HETAL's shape (batch 1024, 769 columns, 10 classes)",
        "peer: Concrete ML (TFHE)",
        "one client-mode iteration: where the time goes",
    )
    for title, (cols, rows) in zip(titles, _tables(results), strict=True):
        if rows:
            t = Table(title=title)
            for c in cols:
                t.add_column(c, justify="right")
            for row in rows:
                t.add_row(*row)
            console.print(t)


def markdown(results: dict) -> str:
    out = []
    for cols, rows in _tables(results):
        if rows:
            out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            out += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    return "\n".join(out)
