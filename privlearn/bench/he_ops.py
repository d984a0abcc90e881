"""`privlearn bench he-ops`: time every CKKS primitive per preset and backend.

Each (preset, backend) pair runs in its own process, so the peak memory reported is that
pair's alone (bootstrapping keys at N=2^16 take ~9 GB). Timings are medians over ``reps``;
the machine's load is recorded beside them. Per-op times at the top level and at level 2 give
the linear time model (seconds = a + b * limbs) that ``privlearn.he.cost.TimeModel`` uses.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from privlearn.bench import machine, peak_rss_gb

HOIST_K = 8


def _median_s(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


def measure(preset: str, backend: str, reps: int) -> dict:
    """All measurements for one preset on one backend (run in a fresh process)."""
    from privlearn.he import ClientContext, Evaluator, get_params

    params = get_params(preset)  # benchmarks refuse insecure presets
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, params.slots)
    out: dict = {"preset": preset, "backend": backend, "params": params.summary()}

    t = time.perf_counter()
    client = ClientContext.create(params, backend)
    out["keygen_s"] = time.perf_counter() - t
    rots = list(range(1, HOIST_K + 1))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        base = client.public_bundle(path=Path(tmp) / "base")
        one = client.public_bundle([1], path=Path(tmp) / "one")
        bundle = client.public_bundle(
            rots, conjugation=True, bootstrap=params.bootstrappable, path=Path(tmp) / "full"
        )
        out["bundle_s"] = time.perf_counter() - t
        relin = Path(base) / "relin_key.bin"  # the simulator's bundle has no key files
        out["relin_key_mb"] = relin.stat().st_size / 1e6 if relin.exists() else 0.0
        out["rotation_key_mb"] = (_dir_bytes(Path(one)) - _dir_bytes(Path(base))) / 1e6
        out["bundle_mb"] = _dir_bytes(Path(bundle)) / 1e6
        t = time.perf_counter()
        ev = Evaluator.from_bundle(bundle)
        out["load_bundle_s"] = time.perf_counter() - t

    top = params.depth
    ct = client.encrypt(x)
    low = client.encrypt(x, level=2)
    out["ciphertext_mb_top"] = len(client.serialize(ct)) / 1e6
    out["ciphertext_mb_level1"] = len(client.serialize(client.encrypt(x, level=1))) / 1e6
    timings = {
        "encrypt": _median_s(lambda: client.encrypt(x), reps),
        "decrypt": _median_s(lambda: client.decrypt(ct), reps),
    }
    if backend == "openfhe":  # encoding alone is a backend detail; time it where it exists
        timings["encode"] = _median_s(lambda: ev._pt(x, top), reps)
    for tag, c in (("", ct), ("@2", low)):
        timings["add" + tag] = _median_s(lambda c=c: ev.add(c, c), reps)
        timings["cmult" + tag] = _median_s(lambda c=c: ev.mul(c, x, rescale=False), reps)
        timings["smult" + tag] = _median_s(lambda c=c: ev.mul(c, 0.37, rescale=False), reps)
        timings["mult" + tag] = _median_s(lambda c=c: ev.mul(c, c, rescale=False), reps)
        pending = ev.mul(c, c, rescale=False)
        timings["rescale" + tag] = _median_s(lambda p=pending: ev.rescale(p), reps)
        timings["rotate" + tag] = _median_s(lambda c=c: ev.rotate(c, 1), reps)
    timings["conjugate"] = _median_s(lambda: ev.conjugate(ct), reps)
    timings[f"rotate_x{HOIST_K}_plain"] = _median_s(
        lambda: [ev.rotate(ct, k) for k in rots], max(1, reps // 2)
    )
    timings[f"rotate_x{HOIST_K}_hoisted"] = _median_s(
        lambda: ev.rotate_many(ct, rots), max(1, reps // 2)
    )
    if params.bootstrappable:
        z = rng.uniform(-1, 1, params.slots)
        zc = ev.level_down(client.encrypt(z), 1)
        timings["bootstrap"] = _median_s(lambda: ev.bootstrap(zc), max(1, reps // 2))
        err = np.max(np.abs(client.decrypt(ev.bootstrap(zc)) - z))
        out["bootstrap_precision_bits"] = float(-np.log2(err))
    out["seconds"] = timings
    out["time_model"] = {  # seconds = a + b * (level + 1), from top level and level 2
        op: _linear(timings[op], top + 1, timings[op + "@2"], 3)
        for op in ("add", "cmult", "smult", "mult", "rescale", "rotate")
    }
    hoist = timings[f"rotate_x{HOIST_K}_hoisted"] / timings[f"rotate_x{HOIST_K}_plain"]
    out["time_model"]["hoisted_rotate"] = tuple(hoist * c for c in out["time_model"]["rotate"])
    if params.bootstrappable:  # one cost whatever the input level (it starts from level 1)
        out["time_model"]["bootstrap"] = (timings["bootstrap"], 0.0)
    out["peak_rss_gb"] = peak_rss_gb()
    out["real_encryption"] = client.is_real_encryption
    return out


def _linear(t_hi: float, limbs_hi: int, t_lo: float, limbs_lo: int) -> tuple[float, float]:
    b = (t_hi - t_lo) / (limbs_hi - limbs_lo)
    return (t_lo - b * limbs_lo, b)


def run(
    presets: list[str], backends: list[str], *, reps: int = 5, console: Console | None = None
) -> dict:
    console = console or Console()
    rows = []
    for preset in presets:
        for backend in backends:
            console.print(f"measuring {preset} on {backend} ...")
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                rows.append(pool.submit(measure, preset, backend, reps).result())
    return {"benchmark": "he-ops", "machine": machine(), "reps": reps, "rows": rows}


def print_table(results: dict, console: Console) -> None:
    rows = results["rows"]
    t = Table(
        title=f"CKKS primitives: median ms at the top level, sizes, memory "
        f"(load {results['machine']['loadavg_1m']})"
    )
    t.add_column("op")
    for r in rows:
        t.add_column(f"{r['preset']}\n{r['backend']}", justify="right")
    ops = [
        "encode",
        "encrypt",
        "decrypt",
        "add",
        "cmult",
        "smult",
        "mult",
        "rescale",
        "rotate",
        "conjugate",
        f"rotate_x{HOIST_K}_plain",
        f"rotate_x{HOIST_K}_hoisted",
        "bootstrap",
    ]
    for op in ops:
        t.add_row(
            op + " ms",
            *[f"{1e3 * r['seconds'][op]:.3g}" if op in r["seconds"] else "-" for r in rows],
        )
    extra = [
        ("bootstrap bits", "bootstrap_precision_bits", ".1f"),
        ("ciphertext MB (top)", "ciphertext_mb_top", ".1f"),
        ("ciphertext MB (level 1)", "ciphertext_mb_level1", ".1f"),
        ("relin key MB", "relin_key_mb", ".0f"),
        ("rotation key MB", "rotation_key_mb", ".0f"),
        ("bundle MB", "bundle_mb", ".0f"),
        ("keygen s", "keygen_s", ".1f"),
        ("bundle s", "bundle_s", ".1f"),
        ("peak memory GB", "peak_rss_gb", ".2f"),
    ]
    for label, key, fmt in extra:
        t.add_row(label, *[format(r[key], fmt) if key in r else "-" for r in rows])
    console.print(t)
