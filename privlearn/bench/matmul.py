"""`privlearn bench matmul`: every matrix product at HETAL's five shapes, side by side.

For each shape and algorithm:

- op counts (CMult / Mult / Rot / key switches / depth / rotation keys), executed at full size
  on the simulator (2^15 slots) and checked against the closed-form model; where the simulator
  would need gigabytes (Jin et al. beyond the small shapes) the model's counts, marked "model";
- rotation-key memory: the keys the algorithm needs times one key's serialized size, measured
  on OpenFHE at the preset's ring (N = 2^16 for n16-d24);
- wall time of the server's computation on OpenFHE with the preset, operands encrypted at
  the same level for every algorithm, when the predicted time fits ``max_seconds`` and the
  keys and ciphertexts ``max_gb``; otherwise predicted from the executed (or model) counts
  per level and per-op times measured on OpenFHE in the same run, marked "predicted";
- max |error| against numpy (OpenFHE when timed, else the simulator, which is not encryption);
- speed ratios against each baseline of the same product, from the same run.

Timings are noisy on a shared machine: the load average is recorded with each timed row.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
from rich.console import Console
from rich.table import Table

from privlearn.he import ClientContext, Counts, Evaluator, TimeModel, get_params
from privlearn.linalg import (
    ALGORITHMS,
    Algorithm,
    Dims,
    hetal_block_shape,
    keyed_evaluator,
)
from privlearn.linalg.cost import Cost, measured
from privlearn.linalg.packing import ciphertext_count

BASELINES = {"abt": ["colmajor", "jin_abt", "halevi_shoup"], "atb": ["rowmajor", "jin_atb"]}
# The simulator keeps every slot of every ciphertext in memory (512 KiB at 2^15 slots).
SIM_MAX_CIPHERTEXTS = 3000
SIM_MAX_KEY_SWITCHES = 20000
TIMED_OPS = (
    "add",
    "cmult",
    "smult",
    "mult",
    "rescale",
    "rotate",
    "hoisted_rotate",
    "decompose",
    "conjugate",
)


def _operands(alg: Algorithm, d: Dims, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sa, sb = alg.operand_shapes(d)
    return rng.uniform(-1, 1, sa), rng.uniform(-1, 1, sb)


def _execute(
    client: ClientContext,
    alg: Algorithm,
    d: Dims,
    block,
    level: int,
    seed: int,
) -> tuple[Counts, float, float]:
    """Encrypt, run on a fresh server, decrypt: (counts, seconds of server work, max error)."""
    a, b = _operands(alg, d, seed)
    ev = keyed_evaluator(client, alg.name, d, block)
    ea, eb = alg.encrypt_operands(client, a, b, block, level=level)
    with ev.cost.measure() as counts:
        t0 = time.perf_counter()
        out = alg(ev, ea, eb)
        seconds = time.perf_counter() - t0
    want = a @ b.T if alg.product == "abt" else a.T @ b
    return counts, seconds, float(np.max(np.abs(out.decrypt(client) - want)))


def _sim_feasible(alg: Algorithm, d: Dims, c: Cost) -> bool:
    cts = d.b * (d.c + 1) if alg.name.startswith("jin") else 0  # B's entries or the output's
    return cts <= SIM_MAX_CIPHERTEXTS and c.key_switches <= SIM_MAX_KEY_SWITCHES


def _operand_ciphertexts(alg: Algorithm, d: Dims, block) -> int:
    blk = alg.block_for(d, block)
    return sum(
        ciphertext_count(shape, blk, layout)
        for shape, layout in zip(alg.operand_shapes(d), alg.layouts, strict=True)
    )


def _model_counts(c: Cost, level: int) -> Counts:
    """Model counts placed at the input level (an upper bound for the time model)."""
    counts = Counts()
    for op, n in c.counts().items():
        if op in TIMED_OPS and n:
            counts.add(op, level, n)
    return counts


def measure_op_times(client: ClientContext, levels: tuple[int, int], reps: int) -> TimeModel:
    """Per-op seconds on this backend, linear in the number of limbs (level + 1), fitted from
    the median of ``reps`` runs at two levels."""
    ev = Evaluator.from_bundle(
        client.public_bundle([1, 2, 4, 8], conjugation=True),
        insecure_for_testing=not client.params.secure,
    )
    rng = np.random.default_rng(0)
    v = rng.uniform(-1, 1, client.slots)
    samples: dict[str, list[tuple[int, float]]] = {op: [] for op in TIMED_OPS}

    def timed(f: Callable[[], object]) -> float:
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    for lvl in levels:
        x, y = client.encrypt(v, level=lvl), client.encrypt(v, level=lvl)
        pending = ev.mul(x, y, rescale=False)
        t = {
            "add": timed(lambda x=x, y=y: ev.add(x, y)),
            "cmult": timed(lambda x=x: ev.mul(x, v, rescale=False)),
            "smult": timed(lambda x=x: ev.mul(x, 1j, rescale=False)),
            "mult": timed(lambda x=x, y=y: ev.mul(x, y, rescale=False)),
            "rescale": timed(lambda p=pending: ev.rescale(p)),
            "rotate": timed(lambda x=x: ev.rotate(x, 1)),
            "conjugate": timed(lambda x=x: ev.conjugate(x)),
        }
        two = timed(lambda x=x: ev.rotate_many(x, [1, 2]))
        four = timed(lambda x=x: ev.rotate_many(x, [1, 2, 4, 8]))
        t["hoisted_rotate"] = max((four - two) / 2, 0.0)
        t["decompose"] = max(two - 2 * t["hoisted_rotate"], 0.0)
        for op, s in t.items():
            samples[op].append((lvl + 1, s))
    coef = {}
    for op, pts in samples.items():
        (x0, y0), (x1, y1) = pts
        slope = (y1 - y0) / (x1 - x0)
        coef[op] = (y0 - slope * x0, slope)
    return TimeModel(client.backend_name, client.params.name, platform.node(), coef)


def key_bytes(client: ClientContext) -> int:
    """Serialized size of one rotation key: a bundle with four keys minus one with none."""
    return (len(client.public_bundle([1, 2, 3, 4])) - len(client.public_bundle([]))) // 4


def run(
    shapes: list[tuple[int, int, int]],
    names: list[str],
    *,
    preset: str,
    level: int | None,
    max_seconds: float,
    max_gb: float,
    reps: int,
    seed: int,
    console: Console,
) -> dict:
    """Counts on the simulator, keys and time on OpenFHE; returns the JSON-able results."""
    params = get_params(preset)
    algs = [ALGORITHMS[n] for n in names]
    blocks = {s: hetal_block_shape(s[0], s[2], params.slots) for s in shapes}
    costs = {(s, a.name): a.cost(Dims(*s), blocks[s]) for s in shapes for a in algs}
    level = level if level is not None else max(c.depth for c in costs.values())
    console.print(
        f"preset {preset} (N = {params.ring_dim}, {params.slots} slots, "
        f"{'128-bit' if params.secure else 'INSECURE'}), operands at level {level}"
    )
    sim = ClientContext.create(params, "simulator", seed=seed)
    real = ClientContext.create(params, "openfhe")
    console.print("measuring per-op times and one rotation key on OpenFHE ...")
    times = measure_op_times(real, (level, max(level - 4, 1)), reps)
    per_key = key_bytes(real)
    per_ct = len(real.serialize(real.encrypt([0.0], level=level)))
    rows = []
    for s in shapes:
        d, blk = Dims(*s), blocks[s]
        for alg in algs:
            c = costs[(s, alg.name)]
            row = {
                "shape": list(s),
                "algorithm": alg.name,
                "product": alg.product,
                "block": str(alg.block_for(d, blk)),
                **c.counts(),
                "depth": c.depth,
                "rotation_keys": len(c.rotation_keys),
                "conjugation_key": c.conjugate > 0,
                "key_bytes": (len(c.rotation_keys) + (c.conjugate > 0)) * per_key,
            }
            if _sim_feasible(alg, d, c):
                counts, _, err = _execute(sim, alg, d, blk, level, seed)
                if measured(counts) != c.counts():
                    raise AssertionError(
                        f"{alg.name} at {d}: executed counts "
                        f"{measured(counts)} differ from the model"
                    )
                row.update(counts_from="simulator", sim_error=err)
            else:
                counts = _model_counts(c, level)
                row.update(counts_from="model", sim_error=None)
            predicted = times.seconds(counts)
            # keys twice (generated by the client, loaded by the server), the operands and as
            # many intermediates again (the output, rotated copies)
            gb = 2 * (row["key_bytes"] + _operand_ciphertexts(alg, d, blk) * per_ct) / 1e9
            row.update(predicted_s=predicted, openfhe_gb=gb)
            if predicted <= max_seconds and gb <= max_gb:
                console.print(f"  {d} {alg.name}: timing on OpenFHE (~{predicted:.0f} s)")
                load0 = os.getloadavg()[0]
                _, seconds, err = _execute(real, alg, d, blk, level, seed)
                row.update(
                    seconds=seconds,
                    time_from="measured",
                    openfhe_error=err,
                    load=[load0, os.getloadavg()[0]],
                )
            else:
                row.update(seconds=predicted, time_from="predicted", openfhe_error=None, load=None)
            rows.append(row)
    _add_ratios(rows)
    return {
        "preset": params.summary(),
        "level": level,
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "key_bytes_each": per_key,
        "ciphertext_bytes": per_ct,
        "max_seconds": max_seconds,
        "max_gb": max_gb,
        "time_model": {op: list(ab) for op, ab in times.coef.items()},
        "loadavg_end": list(os.getloadavg()),
        "rows": rows,
        "key_switch_ratios": key_switch_ratios(rows),
        "shapes": [asdict(Dims(*s)) | {"block": str(blocks[s])} for s in shapes],
    }


def _add_ratios(rows: list[dict]) -> None:
    """speedup[b] = time of baseline b / time of this row, same shape and product."""
    by = {(tuple(r["shape"]), r["algorithm"]): r for r in rows}
    for r in rows:
        r["speedup"] = {
            b: by[(tuple(r["shape"]), b)]["seconds"] / r["seconds"]
            for b in BASELINES[r["product"]]
            if (tuple(r["shape"]), b) in by and b != r["algorithm"]
        }


def _fmt_s(r: dict) -> str:
    return f"{r['seconds']:.1f}" + ("" if r["time_from"] == "measured" else " (pred.)")


def _fmt_err(r: dict) -> str:
    if r["openfhe_error"] is not None:
        return f"{r['openfhe_error']:.1e}"
    return f"{r['sim_error']:.1e} (sim)" if r["sim_error"] is not None else "-"


COLUMNS = [
    "shape",
    "algorithm",
    "CMult/Mult/Rot",
    "KS",
    "depth",
    "keys (GB)",
    "time s",
    "max err",
    "speedup vs baselines",
]


def _cells(r: dict) -> list[str]:
    speed = ", ".join(f"{b} {x:.1f}x" for b, x in r["speedup"].items())
    model = "" if r["counts_from"] == "simulator" else " (model)"
    return [
        "({},{},{})".format(*r["shape"]),
        r["algorithm"],
        f"{r['cmult']}/{r['mult']}/{r['rotations']}{model}",
        str(r["key_switches"]),
        str(r["depth"]),
        f"{r['rotation_keys']} ({r['key_bytes'] / 1e9:.1f})",
        _fmt_s(r),
        _fmt_err(r),
        speed,
    ]


def print_table(results: dict, console: Console) -> None:
    t = Table(
        title=f"Encrypted matrix products, OpenFHE {results['preset']['name']}, "
        f"operands at level {results['level']}"
    )
    for col in COLUMNS:
        t.add_column(col)
    for r in results["rows"]:
        t.add_row(*_cells(r))
    console.print(t)
    t = Table(title="Our variants against the paper-faithful algorithms (✓: half the key switches)")
    for col in RATIO_COLUMNS:
        t.add_column(col)
    for x in results["key_switch_ratios"]:
        t.add_row(*_ratio_cells(x))
    console.print(t)


def markdown(results: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in results["rows"]]
    lines += ["", "| " + " | ".join(RATIO_COLUMNS) + " |", "|" + "---|" * len(RATIO_COLUMNS)]
    lines += ["| " + " | ".join(_ratio_cells(x)) + " |" for x in results["key_switch_ratios"]]
    return "\n".join(lines) + "\n"


VARIANTS = (
    ("diag_abt/ours", "diag_abt/hetal"),
    ("diag_atb/ours", "diag_atb/hetal"),
    ("diag_atb/ours-balanced", "diag_atb/hetal"),
)


def key_switch_ratios(rows: list[dict]) -> list[dict]:
    """Per shape and variant: HETAL's key switches, Mults and depth against ours."""
    by = {(tuple(r["shape"]), r["algorithm"]): r for r in rows}
    out = []
    for ours, paper in VARIANTS:
        for s in dict.fromkeys(tuple(r["shape"]) for r in rows):
            if (s, ours) in by and (s, paper) in by:
                o, p = by[(s, ours)], by[(s, paper)]
                out.append(
                    {
                        "shape": list(s),
                        "ours": ours,
                        "hetal": paper,
                        "key_switches": [p["key_switches"], o["key_switches"]],
                        "ratio": p["key_switches"] / o["key_switches"],
                        "mult": [p["mult"], o["mult"]],
                        "depth": [p["depth"], o["depth"]],
                        "time_ratio": p["seconds"] / o["seconds"],
                        "time_from": "measured"
                        if p["time_from"] == o["time_from"] == "measured"
                        else "predicted",
                    }
                )
    return out


def _ratio_cells(x: dict) -> list[str]:
    ks, m, dp = x["key_switches"], x["mult"], x["depth"]
    return [
        "({},{},{})".format(*x["shape"]),
        x["ours"],
        f"{ks[0]} / {ks[1]}",
        f"{x['ratio']:.2f}" + (" ✓" if x["ratio"] >= 2 else ""),
        f"{m[0]} / {m[1]}",
        f"{dp[0]} / {dp[1]}",
        f"{x['time_ratio']:.2f}" + ("" if x["time_from"] == "measured" else " (pred.)"),
    ]


RATIO_COLUMNS = [
    "shape",
    "variant",
    "KS hetal / ours",
    "KS ratio",
    "Mult hetal / ours",
    "depth hetal / ours",
    "time ratio",
]
