"""Operation counting and a time model, identical on every backend.

Every Evaluator owns a :class:`CostCounter`. Each primitive records one event (op name and the
level it ran at). Counts can be grouped under named scopes (``with ev.cost.scope("abt"):``) so
an algorithm's cost is attributed to its parts. :class:`TimeModel` turns counts into predicted
seconds from per-op timings measured by ``privlearn bench he-ops``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources

# Op names. Key switches are not an op of their own: they are derived (see key_switches).
OPS = (
    "add",  # ct+ct, ct+pt, ct+scalar, neg, sub
    "cmult",  # ct x plaintext vector
    "smult",  # ct x non-integer scalar
    "imult",  # ct x integer scalar (additions only, no level)
    "mult",  # ct x ct (includes one relinearisation)
    "rescale",
    "rotate",  # a rotation with its own digit decomposition
    "hoisted_rotate",  # a rotation reusing a shared decomposition
    "decompose",  # one shared digit decomposition (hoisting precompute)
    "conjugate",
    "level_down",
    "bootstrap",
    "encrypt",
    "decrypt",
)

KEY_SWITCHING_OPS = ("mult", "rotate", "hoisted_rotate", "conjugate")


@dataclass
class Counts:
    """Counts of each op, with per-level detail for the time model."""

    by_op: Counter = field(default_factory=Counter)
    by_op_level: Counter = field(default_factory=Counter)  # (op, level) -> n

    def add(self, op: str, level: int, n: int = 1) -> None:
        self.by_op[op] += n
        self.by_op_level[(op, level)] += n

    def __getitem__(self, op: str) -> int:
        return self.by_op.get(op, 0)

    @property
    def rotations(self) -> int:
        """Rotations of any kind, as the HETAL tables count "Rot"."""
        return self["rotate"] + self["hoisted_rotate"]

    @property
    def key_switches(self) -> int:
        return sum(self[op] for op in KEY_SWITCHING_OPS)

    def as_dict(self) -> dict[str, int]:
        d = {op: self[op] for op in OPS if self[op]}
        d["rotations"] = self.rotations
        d["key_switches"] = self.key_switches
        return d

    def merged(self, other: Counts) -> Counts:
        out = Counts(Counter(self.by_op), Counter(self.by_op_level))
        out.by_op.update(other.by_op)
        out.by_op_level.update(other.by_op_level)
        return out


class CostCounter:
    """Counts every primitive an Evaluator (or client) runs, globally and per scope."""

    def __init__(self) -> None:
        self.total = Counts()
        self.scopes: dict[str, Counts] = {}
        self._stack: list[str] = []

    def record(self, op: str, level: int, n: int = 1) -> None:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}")
        self.total.add(op, level, n)
        if self._stack:
            name = "/".join(self._stack)
            self.scopes.setdefault(name, Counts()).add(op, level, n)

    @contextmanager
    def scope(self, name: str) -> Iterator[Counts]:
        """Attribute ops inside the block to ``name`` (nested scopes join with '/')."""
        self._stack.append(name)
        try:
            yield self.scopes.setdefault("/".join(self._stack), Counts())
        finally:
            self._stack.pop()

    @contextmanager
    def measure(self) -> Iterator[Counts]:
        """Counts of only the ops run inside the block."""
        before = Counts(Counter(self.total.by_op), Counter(self.total.by_op_level))
        delta = Counts()
        try:
            yield delta
        finally:
            delta.by_op.update(self.total.by_op)
            delta.by_op.subtract(before.by_op)
            delta.by_op_level.update(self.total.by_op_level)
            delta.by_op_level.subtract(before.by_op_level)
            delta.by_op = +delta.by_op
            delta.by_op_level = +delta.by_op_level

    def reset(self) -> None:
        self.total = Counts()
        self.scopes.clear()


@dataclass(frozen=True)
class TimeModel:
    """Seconds per op as a linear function of the ciphertext's number of RNS limbs (level + 1).

    ``coef[op] = (a, b)``: t(level) = a + b * (level + 1), fitted by ``privlearn bench he-ops``
    from timings at the top level and at level 2 of one preset, on one backend and machine.
    ``privlearn/he/time_models.json`` keeps the fit measured for each 128-bit preset here.
    """

    backend: str
    preset: str
    machine: str
    coef: Mapping[str, tuple[float, float]]

    def seconds(self, counts: Counts) -> float:
        total = 0.0
        for (op, level), n in counts.by_op_level.items():
            if op in _ALIASES:
                op = _ALIASES[op]
            a, b = self.coef.get(op, (0.0, 0.0))
            total += n * (a + b * (level + 1))
        return total

    @classmethod
    def from_bench(cls, results: dict, preset: str, backend: str = "openfhe") -> TimeModel:
        """The fit for ``preset``/``backend`` from a ``bench he-ops`` JSON document."""
        for row in results["rows"]:
            if row["preset"] == preset and row["backend"] == backend:
                m = row.get("machine", results.get("machine"))
                return cls(
                    backend,
                    preset,
                    f"{m['processor']}, {m['host_cpus']} cpus, load {m['loadavg_1m']}, {m['utc']}",
                    {k: tuple(v) for k, v in row["time_model"].items()},
                )
        raise KeyError(f"no he-ops measurement for {preset} on {backend}")

    @classmethod
    def default(cls, preset: str, backend: str = "openfhe") -> TimeModel:
        return cls.from_bench(_measured(), preset, backend)


def measured_preset(preset: str, backend: str = "openfhe") -> dict:
    """What ``bench he-ops`` measured for ``preset`` here (``time_models.json``): the time
    model, ciphertext and key sizes (``sizes_mb``), ``seconds`` of key generation, bundle
    writing, encryption and decryption at the top level, and the machine and its load."""
    for row in _measured()["rows"]:
        if row["preset"] == preset and row["backend"] == backend:
            return row
    presets = sorted({r["preset"] for r in _measured()["rows"]})
    raise KeyError(f"no he-ops measurement for {preset} on {backend}; measured: {presets}")


def _measured() -> dict:
    return json.loads(resources.files("privlearn.he").joinpath("time_models.json").read_text())


# ops the bench does not time separately, timed like their closest sibling
_ALIASES = {"conjugate": "rotate", "imult": "add", "level_down": "rescale"}
