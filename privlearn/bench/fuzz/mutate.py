"""Seeded mutations of bytes and of parsed trees (JSON headers, YAML, checkpoint dicts).

Every mutation returns ``(description, mutated)``; the description names the operation, its
position and values, so a reported case can be read without re-running it. All randomness
comes from the ``rng`` passed in: a case is reproducible from (format, seed, index) alone.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

# Values that broke loaders before, or that a loader must refuse by type or range.
HOSTILE: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**63,
    -(2**63),
    10**30,
    0.5,
    -0.0,
    1e308,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "1",
    "true",
    "NaN",
    "../../../../etc/passwd",
    "/etc/passwd",
    "a" * 5000,
    "\x00",
    [],
    {},
    [1, 2],
    {"a": 1},
    [[[[[]]]]],
)


def _pos(rng: np.random.Generator, n: int) -> int:
    """A position in [0, n): half the time in the first 512 bytes, where headers live."""
    if n <= 1:
        return 0
    return int(rng.integers(0, min(n, 512))) if rng.random() < 0.5 else int(rng.integers(0, n))


def mutate_bytes(rng: np.random.Generator, data: bytes) -> tuple[str, bytes]:
    """One of: bit flips, byte overwrites (0x00, 0xFF, random), truncation, extension,
    chunk duplication, splice (a chunk of the data copied over another place), deletion."""
    b = bytearray(data)
    n = len(b)
    op = rng.choice(
        ["bitflip", "overwrite", "truncate", "extend", "duplicate", "splice", "delete"],
        p=[0.3, 0.25, 0.1, 0.08, 0.09, 0.09, 0.09],
    )
    if n == 0:
        op = "extend"
    if op == "bitflip":
        k = int(rng.choice([1, 1, 1, 2, 4, 8]))
        flips = []
        for _ in range(k):
            i, bit = _pos(rng, n), int(rng.integers(0, 8))
            b[i] ^= 1 << bit
            flips.append(f"{i}.{bit}")
        return f"bitflip {','.join(flips)}", bytes(b)
    if op == "overwrite":
        i = _pos(rng, n)
        k = int(rng.choice([1, 2, 4, 8, 16]))
        kind = str(rng.choice(["00", "ff", "rand"]))
        fill = (
            bytes(k)
            if kind == "00"
            else b"\xff" * k
            if kind == "ff"
            else rng.integers(0, 256, k, dtype=np.uint8).tobytes()
        )
        b[i : i + k] = fill[: max(0, min(k, n - i))]
        return f"overwrite {kind} x{k} at {i}", bytes(b)
    if op == "truncate":
        keep = (
            int(rng.integers(0, n)) if rng.random() < 0.5 else max(0, n - int(rng.integers(1, 64)))
        )
        return f"truncate to {keep} of {n}", bytes(b[:keep])
    if op == "extend":
        k = int(rng.choice([1, 8, 100, 4096]))
        tail = bytes(k) if rng.random() < 0.5 else rng.integers(0, 256, k, dtype=np.uint8).tobytes()
        return f"extend by {k}", bytes(b) + tail
    i, k = _pos(rng, n), int(rng.choice([4, 16, 64, 512]))
    chunk = bytes(b[i : i + k])
    if op == "duplicate":
        return f"duplicate {len(chunk)} bytes at {i}", bytes(b[: i + k]) + chunk + bytes(b[i + k :])
    if op == "splice":
        j = _pos(rng, n)
        b[j : j + len(chunk)] = chunk[: max(0, n - j)]
        return f"splice {len(chunk)} bytes from {i} to {j}", bytes(b)
    return f"delete {len(chunk)} bytes at {i}", bytes(b[:i]) + bytes(b[i + k :])


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) into a tree of dicts and lists, the root included."""
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, prefix + (i,))
    return out


def _get(tree: Any, path: tuple) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def show(path: tuple) -> str:
    return ".".join(map(str, path)) or "<root>"


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def tweak(rng: np.random.Generator, value: Any) -> Any:
    """A value of the same kind, off by a little or a lot (int +-1, x2, negated; bool flipped;
    float scaled; string with a traversal)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return int(rng.choice([value + 1, value - 1, 2 * value + 1, -value - 1, value * 1000]))
    if isinstance(value, float):
        return float(rng.choice([value * 2, -value, value * 1e20, value + 1e-3]))
    if isinstance(value, str):
        return str(rng.choice([value + "x", value[::-1], "../" + value, value.upper(), ""]))
    return hostile(rng)


def hostile(rng: np.random.Generator) -> Any:
    return copy.deepcopy(HOSTILE[int(rng.integers(0, len(HOSTILE)))])


def mutate_tree(
    rng: np.random.Generator, tree: Any, leaf: Any = None, protect: tuple = ()
) -> tuple[str, Any]:
    """A field-level mutation of a parsed tree: replace a value (hostile or tweaked), delete
    a key, add an unknown key, wrap a value in a list. ``leaf(rng, value)`` may return a
    format-specific replacement (e.g. a tensor) or None. Paths starting with an element of
    ``protect`` are left alone."""
    tree = copy.deepcopy(tree)
    paths = [p for p in _paths(tree) if p and not (p[:1] and p[0] in protect)]
    if not paths:
        return "replace root", hostile(rng)
    path = paths[int(rng.integers(0, len(paths)))]
    parent, key = _get(tree, path[:-1]), path[-1]
    old = parent[key]
    op = str(
        rng.choice(["hostile", "tweak", "delete", "extra", "wrap"], p=[0.4, 0.3, 0.12, 0.1, 0.08])
    )
    if op == "hostile" and leaf is not None:
        special = leaf(rng, old)
        if special is not None:
            desc, new = special
            parent[key] = new
            return f"{show(path)} := {desc}", tree
    if op == "delete" and isinstance(parent, dict):
        del parent[key]
        return f"delete {show(path)}", tree
    if op == "extra" and isinstance(parent, dict):
        name = str(rng.choice(["extra", "__class__", "../x", ""]))
        parent[name] = hostile(rng)
        return f"add key {show(path[:-1] + (name,))} = {_short(parent[name])}", tree
    if op == "wrap":
        parent[key] = [old]
        return f"{show(path)} wrapped in a list", tree
    new = tweak(rng, old) if op == "tweak" else hostile(rng)
    parent[key] = new
    return f"{show(path)}: {_short(old)} -> {_short(new)}", tree
