"""What a secure-aggregation protocol offers the FL round, whichever cryptography is inside.

Every party runs in this process, but parties meet only through `Wire`: each message is bytes
addressed from one party to another, so what a client or the server could learn is what it
was sent, and the bytes each one sends and receives are counted as they would be on a network.
The server-side object holds no secret; a test tries to unmask or decrypt one client's input
with everything the server holds.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

SERVER = -1  # the server's party id; clients are their FL ids (>= 0)


class AggregationFailed(RuntimeError):
    """Too few clients survived to finish the round: no partial sum is released."""


@dataclass
class Wire:
    """Counts what each party sends and receives (bytes) and the time each spends (seconds),
    in total and per protocol phase (`phase`, set by the protocol as it goes)."""

    sent: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    seconds: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    phase: str = "round"
    phase_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    phase_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def carry(self, src: int, dst: int, message: bytes) -> bytes:
        if not isinstance(message, (bytes, bytearray)):
            raise TypeError(f"party {src} sent {type(message).__name__}, not bytes")
        self.sent[src] += len(message)
        self.received[dst] += len(message)
        self.phase_bytes[self.phase] += len(message)
        return bytes(message)

    @contextmanager
    def clock(self, party: int) -> Iterator[None]:
        """Charge the time spent inside the block to `party` (and to the current phase)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.seconds[party] += dt
            self.phase_seconds[self.phase] += dt

    def cost(self) -> dict:
        """Per-client means and maxima (over every client that sent or received anything) and
        the server's totals, JSON-able."""
        clients = [p for p in set(self.sent) | set(self.received) | set(self.seconds) if p >= 0]
        mean = lambda d: float(np.mean([d[p] for p in clients])) if clients else 0.0  # noqa: E731
        most = lambda d: float(max((d[p] for p in clients), default=0.0))  # noqa: E731
        return {
            "client_bytes_sent": mean(self.sent),
            "client_bytes_received": mean(self.received),
            "client_seconds": mean(self.seconds),
            "client_bytes_sent_max": most(self.sent),
            "client_bytes_received_max": most(self.received),
            "client_seconds_max": most(self.seconds),
            "server_bytes_sent": self.sent[SERVER],
            "server_bytes_received": self.received[SERVER],
            "server_seconds": self.seconds[SERVER],
            "phase_bytes": dict(self.phase_bytes),
            "phase_seconds": dict(self.phase_seconds),
        }


@dataclass(frozen=True)
class Aggregate:
    """total: the sum (float64, [P]) of the inputs of `clients`, to the protocol's stated error;
    excluded: every other invited client and why (dropped, malformed message, ...); unfinished:
    clients whose input is in the sum but who did not finish the protocol (dropped
    before its last step, or sent a malformed message there, which was ignored)."""

    total: np.ndarray
    clients: tuple[int, ...]
    excluded: dict[int, str]
    cost: dict
    unfinished: dict[int, str] = field(default_factory=dict)


class SecureAggregator(Protocol):
    """One protocol run per round. `inputs` maps each invited client to its vector (float,
    length P, values within the protocol's stated range); `drop_before_upload` clients vanish
    before sending their input, `drop_before_unmask` after sending it and before the final
    (unmasking / partial decryption) step. Raises AggregationFailed when the survivors are
    fewer than the threshold."""

    name: str

    def aggregate(
        self,
        inputs: dict[int, np.ndarray],
        round_idx: int,
        drop_before_upload: frozenset[int] = frozenset(),
        drop_before_unmask: frozenset[int] = frozenset(),
    ) -> Aggregate: ...
