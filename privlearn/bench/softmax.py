"""`privlearn bench softmax`: error, depth, cost and time of each softmax construction.

For every input range and class count: the plaintext reference of each method, the same
method on the slot simulator at n16-boot (N=2^16, bootstraps placed by the level manager,
CKKS noise calibrated from OpenFHE) over at least 10^5 rows, and for a chosen subset a real
OpenFHE run of one block, by default on toy-n12-boot (INSECURE toy ring, bootstrappable: real
encryption at small N); ``openfhe_preset="n16-boot"`` runs that block at 128-bit, slowly.
Costs come from the planner, before anything runs: depth, ciphertext multiplications,
bootstraps per 2^15-slot block at n16-boot, and the time the he-ops time model predicts for
them there. Rows are sampled as HETAL's benchmark does: "[-R, R]" is equal parts uniform on
each of [-4, 4], [-8, 8], [-32, 32], [-128, 128] up to R.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from privlearn.approx import rows as layout
from privlearn.approx.planner import LevelManager
from privlearn.approx.softmax import Hetal, Hong, Jin, Lee, NormSquare, SoftmaxMethod, exact
from privlearn.he import PRESETS, ClientContext, Evaluator, HEError, TimeModel

RANGES = (4, 8, 32, 128)
CLASSES = (3, 7, 10, 16)
METHODS: dict[str, Callable[[int, float], SoftmaxMethod]] = {
    "hetal": lambda c, r: Hetal(c, r),
    "hetal-precise": lambda c, r: Hetal(c, r, precise=True),
    "lee": Lee,
    "hong": Hong,
    "jin": Jin,
    "ours": NormSquare,
}
OPENFHE_SUBSET = (
    ("hetal", 10, 128),
    ("ours", 10, 128),
    ("hetal", 3, 4),
    ("ours", 3, 4),
    ("lee", 3, 4),
    ("hong", 3, 4),
    ("jin", 3, 4),
)
FAILED = 1.0  # beyond this the pipeline's values leave [0, 1]: no encrypted run is meaningful
N16 = "n16-boot"
TOY = "toy-n12-boot"


def sample(rng: np.random.Generator, n: int, classes: int, r: float) -> np.ndarray:
    parts = [s for s in RANGES if s <= r]
    return np.concatenate([rng.uniform(-s, s, (n // len(parts), classes)) for s in parts])


def _errors(approx: np.ndarray, x: np.ndarray) -> dict:
    e = np.max(np.abs(approx - exact(x)), axis=1)
    return {"max": float(e.max()), "mean": float(e.mean()), "rows": int(x.shape[0])}


def _encrypted(
    m: SoftmaxMethod, x: np.ndarray, preset: str, backend: str, seed: int, blocks: int | None
) -> dict:
    """``m`` on ciphertexts of ``preset`` (the first ``blocks`` of them, all if None),
    bootstraps placed by the level manager."""
    client = ClientContext.create(
        preset, backend, seed=seed, insecure_for_testing=not PRESETS[preset].secure
    )
    per = client.slots // m.width
    x = x if blocks is None else x[: blocks * per]
    with tempfile.TemporaryDirectory() as keys:  # gigabytes of keys at N=2^16: on disk
        ev = Evaluator.from_bundle(
            client.public_bundle(m.rotations(), bootstrap=True, path=Path(keys) / "bundle"),
            insecure_for_testing=not client.params.secure,
        )
        return _run_blocks(m, x, client, ev) | {"backend": backend, "preset": preset}


def _run_blocks(m: SoftmaxMethod, x: np.ndarray, client: ClientContext, ev: Evaluator) -> dict:
    per = client.slots // m.width
    blocks = layout.pack(x * m.input_scale, m.width, client.slots)
    outs, boots, start = [], 0, time.perf_counter()
    for block in blocks:
        lm = LevelManager(ev, "bootstrap")
        outs.append(client.decrypt(m.evaluate(lm, client.encrypt(block))))
        boots += lm.refreshes
    seconds = time.perf_counter() - start
    got = layout.unpack(np.array(outs), x.shape[0], m.classes, m.width)
    return {
        **_errors(got, x),
        "ciphertexts": len(blocks),
        "rows_per_ciphertext": per,
        "bootstraps_per_ciphertext": boots / len(blocks),
        "seconds_per_ciphertext": seconds / len(blocks),
    }


def costs(m: SoftmaxMethod, bootstrap_seconds: float) -> dict:
    """What the planner says before running: pure depth and counts, and at n16-boot the
    bootstraps and the time predicted for one 2^15-slot block."""
    deep = m.plan()
    at16 = m.plan(PRESETS[N16], "bootstrap")
    ops = TimeModel.default(N16).seconds(at16.counts)
    return {
        "depth": deep.depth,
        "mults": deep.mults,
        "plain_mults": deep.counts["cmult"] + deep.counts["smult"],
        "rotations": deep.counts.rotations,
        "bootstraps_n16": at16.refreshes,
        "seconds_n16": ops + at16.refreshes * bootstrap_seconds,
    }


def run_one(
    name: str,
    classes: int,
    r: float,
    n: int,
    seed: int,
    bootstrap_seconds: float,
    openfhe_preset: str | None,
) -> dict:
    """One configuration; with ``openfhe_preset``, also one block on real OpenFHE there."""
    m = METHODS[name](classes, r)
    x = sample(np.random.default_rng(seed), n, classes, r)
    bound = m.error_bound()
    row = {
        "method": name,
        "classes": classes,
        "range": r,
        **costs(m, bootstrap_seconds),
        "bound": bound.value,
        "bound_kind": bound.kind,
        "bound_note": bound.note,
    }
    try:
        row["plain"] = _errors(m.reference(x), x)
    except ValueError as e:  # the published pipeline leaves its domain (e.g. Goldschmidt)
        row["plain"], row["note"] = None, f"diverges: {e}"
        return row
    if not row["plain"]["max"] < FAILED:
        row["note"] = "errors above 1 in plaintext; not run encrypted"
        return row
    try:
        row["simulator"] = _encrypted(m, x, N16, "simulator", seed, blocks=None)
        if openfhe_preset:
            row["openfhe"] = _encrypted(m, x, openfhe_preset, "openfhe", seed, blocks=1)
    except HEError as e:  # e.g. a bootstrap input outside [-1, 1]
        row["note"] = f"encrypted run failed: {e}"
    return row


def run(
    ranges=RANGES,
    classes=CLASSES,
    methods=tuple(METHODS),
    rows: int = 100_000,
    seed: int = 0,
    openfhe=OPENFHE_SUBSET,
    openfhe_preset: str = TOY,
    bootstrap_seconds: float = 41.8,
    out: Path | None = None,
    progress: Callable[[str], None] = print,
) -> dict:
    """Every (method, classes, range); with ``out``, each finished row is saved at once and a
    re-run resumes after the rows already there."""
    done = {}
    if out is not None and out.exists():
        done = {
            (r["method"], r["classes"], r["range"]): r for r in json.loads(out.read_text())["rows"]
        }
    results = {
        "benchmark": "softmax",
        "rows_sampled": rows,
        "seed": seed,
        "sampling": "HETAL's: equal parts uniform on each of [-4,4], [-8,8], [-32,32], "
        "[-128,128] up to the range",
        "simulator": f"{N16}, bootstrap policy",
        "openfhe": openfhe_preset,
        "bootstrap_seconds_n16": bootstrap_seconds,
        "machine": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "rows": [],
    }
    todo = [(m, c, r) for c in classes for r in ranges for m in methods]
    for i, (name, c, r) in enumerate(todo):
        key = (name, c, float(r))
        if key in done:
            results["rows"].append(done[key])
            continue
        progress(f"[{i + 1}/{len(todo)}] {name}, {c} classes, [-{r}, {r}]")
        results["rows"].append(
            run_one(
                name,
                c,
                float(r),
                rows,
                seed,
                bootstrap_seconds,
                openfhe_preset if (name, c, r) in openfhe else None,
            )
        )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1))
    return results


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1e}"


def _err(row: dict, where: str) -> str:
    e = row.get(where)
    return "–" if not e else f"{e['max']:.1e} / {e['mean']:.1e}"


def markdown(results: dict) -> str:
    """One line per (method, classes, range)."""
    head = (
        "| method | classes | range | max / mean error, simulator n16-boot | plaintext "
        "reference | derived bound | OpenFHE max (one block) | depth | ct×ct mults | "
        "bootstraps @n16 | predicted s @n16 |\n|" + "---|" * 11
    )
    lines = [head]
    for r in results["rows"]:
        bound = _fmt(r["bound"]) if r["bound_kind"] == "derived" else "empirical"
        of = r.get("openfhe")
        lines.append(
            f"| {r['method']} | {r['classes']} | ±{r['range']:g} | {_err(r, 'simulator')} | "
            f"{_err(r, 'plain')} | {bound} | {_fmt(of['max']) if of else '–'} | {r['depth']} | "
            f"{r['mults']} | {r['bootstraps_n16']} | {r['seconds_n16']:.0f} |"
        )
    return "\n".join(lines)


def _short(row: dict | None) -> str:
    """Max error of a row where it ran encrypted, else what happened."""
    if row is None:
        return "–"
    if row.get("simulator"):
        return f"{row['simulator']['max']:.1e}"
    if row.get("plain") is None:
        return "diverges"
    return f"{row['plain']['max']:.1e} (plain)"


def summary(results: dict) -> str:
    """HETAL, its precise variant and ours side by side (simulator errors, max / mean), with
    the baselines' max errors: one line per (classes, range)."""
    by = {(r["method"], r["classes"], r["range"]): r for r in results["rows"]}
    keys = sorted({(r["classes"], r["range"]) for r in results["rows"]})
    lines = [
        "| classes | range | HETAL max / mean | depth | boots | HETAL precise max / mean | "
        "ours max / mean | ours bound | depth | boots | Lee | Hong | Jin |",
        "|" + "---|" * 13,
    ]
    for c, r in keys:
        h, hp, o = (by.get((m, c, r)) for m in ("hetal", "hetal-precise", "ours"))

        def cost(row: dict | None) -> str:
            return "– | –" if row is None else f"{row['depth']} | {row['bootstraps_n16']}"

        lines.append(
            f"| {c} | ±{r:g} | {_err(h or {}, 'simulator')} | {cost(h)} | "
            f"{_err(hp or {}, 'simulator')} | {_err(o or {}, 'simulator')} | "
            f"{_fmt(o['bound']) if o else '–'} | {cost(o)} | "
            + " | ".join(_short(by.get((m, c, r))) for m in ("lee", "hong", "jin"))
            + " |"
        )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Max error (simulator; plaintext where not run encrypted) against the input range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted({r["classes"] for r in results["rows"]})
    fig, axes = plt.subplots(
        1, len(classes), figsize=(4 * len(classes), 3.6), sharey=True, squeeze=False
    )
    for ax, c in zip(axes[0], classes, strict=True):
        for name in METHODS:
            pts = [
                (r["range"], (r.get("simulator") or r.get("plain") or {}).get("max"))
                for r in results["rows"]
                if r["classes"] == c and r["method"] == name
            ]
            pts = [(x, min(y, 1.0)) for x, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name)
            bounds = [
                (r["range"], r["bound"])
                for r in results["rows"]
                if r["classes"] == c and r["method"] == name and r["bound"] is not None
            ]
            if bounds:
                ax.plot(*zip(*bounds, strict=True), ls="--", color="grey", label=f"{name} bound")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{c} classes")
        ax.set_xlabel("input range R (logits in [-R, R])")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("max |approx - softmax| (capped at 1)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
