"""`privlearn bench secagg`: what secure aggregation costs, per protocol, against plaintext
FedAvg, over clients x update size x dropout.

Each measured cell runs one protocol round in this process on random float64 vectors (every
party's work timed, every message counted as bytes) and compares the aggregate with the exact
sum. Cells too large for this machine are extrapolated from measured ones and labelled so:
linear in the update size from the two largest measured sizes at the same cohort (every
per-coordinate cost is linear in it), or, for a cohort larger than any measured, each
client's costs as at the largest measured cohort and the server's scaled by the cohort ratio.
Plaintext FedAvg sends float32 deltas and the server adds them in float32.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from privlearn.bench import cell_key, machine, progress_bar, save_json
from privlearn.fl.privacy.secagg import PROTOCOLS, make_aggregator

CLIENTS = (10, 100, 1000)
SIZES = (10**3, 10**5, 10**6)
DROPOUTS = (0.0, 0.1, 0.3)
COSTS = (
    "client_bytes_sent",
    "client_bytes_received",
    "client_seconds",
    "server_bytes_sent",
    "server_bytes_received",
    "server_seconds",
    "setup_bytes",
    "setup_seconds",
)
# the phases of a round that set up keys rather than carry the vector
SETUP_PHASES = {"masking": ("advertise", "share")}
# the largest cells measured here (n clients * P parameters); beyond them, extrapolated
MEASURE_LIMIT = {"plaintext": 10**8, "masking": 10**8, "threshold-ckks": 10**7}


def measurable(protocol: str, n: int, p: int) -> bool:
    return n * p <= MEASURE_LIMIT[protocol]


def _inputs(n: int, p: int, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.uniform(-1.0, 1.0, p) for u in range(n)}


def _drops(n: int, dropout: float, seed: int) -> tuple[frozenset, frozenset]:
    """round(dropout n) clients drop, half before uploading, half before the last step."""
    gone = np.random.default_rng([seed, 1]).choice(n, size=round(dropout * n), replace=False)
    return frozenset(gone[::2].tolist()), frozenset(gone[1::2].tolist())


def plaintext_cell(n: int, p: int, dropout: float, seed: int = 0) -> dict:
    """FedAvg without protection: float32 uploads, a float32 sum of those that arrive."""
    x = _inputs(n, p, seed)
    before, _ = _drops(n, dropout, seed)
    alive = [u for u in x if u not in before]
    ups = {u: x[u].astype(np.float32) for u in alive}
    t0 = time.perf_counter()
    total = np.zeros(p, dtype=np.float32)
    for u in alive:
        total += ups[u]
    server_s = time.perf_counter() - t0
    exact = np.sum([x[u] for u in alive], axis=0)
    per_client = 4 * p * len(alive) / n
    return {
        "client_bytes_sent": per_client,
        "client_bytes_received": 0.0,
        "client_seconds": 0.0,
        "server_bytes_sent": 0.0,
        "server_bytes_received": 4.0 * p * len(alive),
        "server_seconds": server_s,
        "setup_bytes": 0.0,
        "setup_seconds": 0.0,
        "summed": len(alive),
        "max_abs_error": float(np.abs(total - exact).max()),
        "error_bound": None,
    }


def protocol_cell(protocol: str, n: int, p: int, dropout: float, seed: int = 0) -> dict:
    """One round of `protocol`; its cost, and its error against the exact sum."""
    agg_proto = make_aggregator(protocol)
    x = _inputs(n, p, seed)
    before, after = _drops(n, dropout, seed)
    t0 = time.perf_counter()
    agg = agg_proto.aggregate(x, 0, before, after)
    wall = time.perf_counter() - t0
    exact = np.sum([x[u] for u in agg.clients], axis=0)
    c = agg.cost
    row = {k: float(c[k]) for k in COSTS if k in c}
    if "setup" in c:  # a key epoch run inside this round: its costs are the round's too
        s = c["setup"]
        for k in row:
            row[k] += s.get(k, 0.0)
        row["setup_bytes"] = float(sum(s["phase_bytes"].values()))
        row["setup_seconds"] = float(sum(s["phase_seconds"].values()))
    else:  # set-up phases inside every round (masking draws fresh keys each round)
        setup = SETUP_PHASES.get(protocol, ())
        row["setup_bytes"] = float(sum(c["phase_bytes"].get(p, 0) for p in setup))
        row["setup_seconds"] = float(sum(c["phase_seconds"].get(p, 0.0) for p in setup))
    return {
        **row,
        "summed": len(agg.clients),
        "max_abs_error": float(np.abs(agg.total - exact).max()),
        **_stated(agg_proto, n, p),
        "wall_seconds": wall,
        "parameters": {k: c[k] for k in ("neighbours", "threshold", "t") if k in c},
    }


def _stated(proto, n: int, p: int) -> dict:
    """The protocol's own account of its error: masking's is a bound (fixed-point rounding),
    threshold CKKS's a standard deviation (flooding), 6 of which bound it in a test."""
    if hasattr(proto, "error_bound"):
        return {"error_bound": proto.error_bound(n)}
    stated = proto.stated_error(p)
    return {
        "error_bound": 6 * stated["error_std"],
        "error_std": stated["error_std"],
        "flooding_sigma": stated["flooding_sigma"],
        "t": stated["t"],
    }


def measure(protocol: str, n: int, p: int, dropout: float) -> dict:
    if protocol == "plaintext":
        return plaintext_cell(n, p, dropout)
    return protocol_cell(protocol, n, p, dropout)


def extrapolate(
    cells: dict, protocol: str, n: int, p: int, dropout: float, clients=CLIENTS, sizes=SIZES
) -> dict | None:
    """A cell predicted from measured ones (see the module docstring), or None."""

    def get(n_, p_):
        c = cells.get(cell_key(protocol, n_, p_, dropout))
        return c if c and c["measured"] else None

    def slope(m: int) -> tuple[dict, str] | None:
        """Each cost's growth per parameter at cohort m, from its two largest measured sizes
        up to p."""
        qs = [q for q in sizes if q <= p and get(m, q)]
        if len(qs) < 2:
            return None
        lo, hi = get(m, qs[-2]), get(m, qs[-1])
        return {k: (hi[k] - lo[k]) / (qs[-1] - qs[-2]) for k in COSTS}, f"{qs[-2]:g}, {qs[-1]:g}"

    same = sorted(q for q in sizes if q < p and get(n, q))
    own = slope(n)
    smaller = [m for m in sorted(clients, reverse=True) if m < n and slope(m)]
    if same and (own or smaller):
        q = same[-1]
        base = get(n, q)
        if own:
            rate, at = own
            how = f"linear in P from P = {at} at n = {n}"
        else:
            m = smaller[0]
            rate, at = slope(m)
            rate = {k: v * (n / m if k.startswith("server") else 1.0) for k, v in rate.items()}
            how = (
                f"n = {n}, P = {q:g} as measured, plus the growth in P measured at n = {m} "
                f"(P = {at}; the server's x {n / m:g})"
            )
        out = {k: base[k] + rate[k] * (p - q) for k in COSTS}
        out.update(setup_bytes=base["setup_bytes"], setup_seconds=base["setup_seconds"])
        how += " (set-up as measured: it does not depend on P)"
    else:
        below = sorted(m for m in clients if m < n and cells.get(cell_key(protocol, m, p, dropout)))
        if not below:
            return None
        m = below[-1]
        base = cells[cell_key(protocol, m, p, dropout)]
        out = {k: base[k] * (n / m if k.startswith("server") else 1.0) for k in COSTS}
        how = f"client costs as at n = {m}, server costs x {n / m:g}"
    out.update(summed=None, max_abs_error=None, error_bound=None, measured=False, how=how)
    return out


def run(protocols, clients, sizes, dropouts, path: Path, console: Console) -> dict:
    doc = _load(path)
    cells = doc["cells"]
    grid = [(pr, n, p, d) for pr in protocols for n in clients for p in sizes for d in dropouts]
    todo = [g for g in grid if cell_key(*g) not in cells and measurable(g[0], g[1], g[2])]
    with progress_bar(console) as bar:
        task = bar.add_task("secagg cells", total=len(todo), last="")
        for pr, n, p, d in todo:
            row = measure(pr, n, p, d)
            row.update(measured=True, machine=machine())
            cells[cell_key(pr, n, p, d)] = row
            save_json(doc, path)
            bar.update(
                task, advance=1, last=f"{pr} n={n} P={p:g} d={d}: {row['server_seconds']:.3g} s"
            )
    for pr, n, p, d in grid:
        key = cell_key(pr, n, p, d)
        if key not in cells or not cells[key]["measured"]:
            guess = extrapolate(cells, pr, n, p, d, clients, sizes)
            if guess is not None:
                cells[key] = guess
    save_json(doc, path)
    return doc


def _load(path: Path) -> dict:
    if path.exists():
        doc = json.loads(path.read_text())
        if doc.get("benchmark") == "secagg":
            return doc
    return {"benchmark": "secagg", "cells": {}}


def _size(b: float | None) -> str:
    if b is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def _sec(s: float | None) -> str:
    return "-" if s is None else f"{s:.3g}"


def rows(doc: dict) -> list[list[str]]:
    out = []
    for key, c in doc["cells"].items():
        pr, n, p, d = key.split(" | ")
        err = c["max_abs_error"]
        plain = doc["cells"].get(cell_key("plaintext", n, p, d))
        ratio = (
            f"{c['client_bytes_sent'] / plain['client_bytes_sent']:.2f}x"
            if plain and plain["client_bytes_sent"]
            else "-"
        )
        out.append(
            [
                pr,
                n,
                f"{int(p):.0e}".replace("+0", ""),
                f"{float(d):.0%}",
                _size(c["client_bytes_sent"]),
                _size(c["client_bytes_received"]),
                ratio,
                _sec(c["client_seconds"]),
                _size(c["server_bytes_received"] + c["server_bytes_sent"]),
                _sec(c["server_seconds"]),
                f"{_size(c['setup_bytes'])} / {_sec(c['setup_seconds'])} s",
                "-" if err is None else f"{err:.2g}",
                "measured" if c["measured"] else "extrapolated",
            ]
        )
    return out


HEADER = [
    "protocol",
    "clients",
    "P",
    "dropout",
    "client sent",
    "client recv",
    "upload vs plain",
    "client s",
    "server bytes",
    "server s",
    "set-up, all parties (bytes / s)",
    "max |error|",
    "cell",
]


def markdown(doc: dict) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows(doc)]
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> Path:
    """Server seconds and client bytes sent against clients, per protocol and size (0 %
    dropout; extrapolated points hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for pr in ("plaintext", *PROTOCOLS):
        for p, style in zip(SIZES, ("-", "--", ":"), strict=True):
            pts = [
                (n, doc["cells"].get(cell_key(pr, n, p, 0.0)))
                for n in CLIENTS
                if doc["cells"].get(cell_key(pr, n, p, 0.0))
            ]
            if not pts:
                continue
            for ax, field in zip(axes, ("server_seconds", "client_bytes_sent"), strict=True):
                line = ax.plot(
                    [n for n, _ in pts],
                    [max(c[field], 1e-9) for _, c in pts],
                    style,
                    label=f"{pr}, P = {p:.0e}",
                )[0]
                for n, c in pts:
                    ax.plot(
                        n,
                        max(c[field], 1e-9),
                        "o",
                        color=line.get_color(),
                        fillstyle="full" if c["measured"] else "none",
                    )
    for ax, label in zip(axes, ("server seconds per round", "bytes sent per client"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients")
        ax.set_ylabel(label)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def growth(doc: dict, protocol: str) -> dict:
    """How the costs grow: the exponent of each cost in n (10 -> 1000) and in P (1e3 -> 1e6),
    at 0 % dropout, from whatever cells exist (measured or extrapolated)."""
    c = doc["cells"]
    out = {}
    for field in ("client_bytes_sent", "server_seconds"):
        a, b = (
            c.get(cell_key(protocol, 10, 10**5, 0.0)),
            c.get(cell_key(protocol, 1000, 10**5, 0.0)),
        )
        if a and b and a[field] > 0:
            out[f"{field} ~ n^"] = round(math.log(b[field] / a[field]) / math.log(100), 2)
        a, b = (
            c.get(cell_key(protocol, 100, 10**3, 0.0)),
            c.get(cell_key(protocol, 100, 10**6, 0.0)),
        )
        if a and b and a[field] > 0:
            out[f"{field} ~ P^"] = round(math.log(b[field] / a[field]) / math.log(1000), 2)
    return out
