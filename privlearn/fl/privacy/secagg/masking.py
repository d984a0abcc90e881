"""SecAgg+-style secure aggregation by pairwise masks (Bonawitz et al. 2017; Bell et al. 2020).

Every round, each invited client u:
 1. advertises two X25519 public keys (c_u for its encrypted channel to other clients, s_u for
    its masks); the server draws a random Harary graph of degree k over the cohort and gives
    each client its neighbours' keys;
 2. draws a self-mask seed b_u, Shamir-shares b_u and the secret of s_u t-of-k among its k
    neighbours, each pair of shares under AES-GCM with a key from X25519(c_u, c_v) through
    HKDF, sent via the server with a SHA-256 hash of each share (the server later checks the
    shares it is given against them, which is how a client sending a bad one is caught);
    recipients say which senders' shares do not open, and those senders leave the round;
 3. uploads y_u = q(x_u) + PRG(b_u) + sum over surviving neighbours v of +-PRG(s_uv) mod 2^64,
    s_uv from X25519(s_u, s_v) through HKDF, + when u < v; q is fixed point with `frac_bits`
    fractional bits;
 4. for each neighbour that uploaded, sends its share of b; for each that did not, its share of
    s. The server rebuilds the b's of uploaders and the s-secrets of the dropped, removes
    their masks, and releases only the sum.

Costs grow as n k, not n^2: a client sends and receives O(k) keys and shares and one masked
vector; the server routes O(n k) shares, expands one PRG per uploader and one per (dropped
client, surviving neighbour) pair.

Fixed point: each input coordinate is rounded to a multiple of 2^-frac_bits (error at most
2^-(frac_bits+1) per client and coordinate, so at most n 2^-(frac_bits+1) on the sum) and
must lie within +-2^(63-frac_bits) / n (n invited clients), so the sum cannot wrap mod 2^64.

Threat model: an honest-but-curious server, colluding with fewer than t of any client's k
neighbours, learns only the sum of the uploaders' inputs (and who dropped). t colluding
neighbours could rebuild a client's s and b and unmask it. A client never releases both of a
neighbour's shares, but it trusts the server's account of who uploaded (the malicious-server
version needs signatures and a consistency round, not built). Messages are bound to their
round, sender and recipient: client-to-client payloads by AES-GCM's associated data, client-
to-server ones by a header the server checks (transport authentication, e.g. TLS, is assumed
on each client-server link). Masking does not stop poisoning: a well-formed masked vector of
garbage is summed like any other.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privlearn.fl.privacy.secagg import shamir
from privlearn.fl.privacy.secagg.base import SERVER, Aggregate, AggregationFailed, Wire

_HEAD = struct.Struct("<4sBIii")  # magic, kind, round, sender, recipient
_MAGIC = b"SA+1"
_ID = struct.Struct("<i")
_KEY = 32
_HASH = 32
_NONCE = 12
ADVERTISE, ROSTER, SHARES, DELIVER, COMPLAIN, CONFIRM, INPUT, REQUEST, UNMASK, PAYLOAD = range(
    1, 11
)

# (phase, client, message) -> message: what a misbehaving client sends instead (tests, bench)
Adversary = Callable[[str, int, bytes], bytes]


class MessageError(ValueError):
    """A message that does not parse, or is not for this round, sender and recipient."""


@dataclass(frozen=True)
class MaskingParams:
    """neighbours: k (None: 2 ceil(2 log2 n), at most n - 1, the whole cohort for small n);
    threshold: t shares rebuild a secret (None: k // 3 + 1); frac_bits: fixed-point
    precision."""

    neighbours: int | None = None
    threshold: int | None = None
    frac_bits: int = 24

    def __post_init__(self):
        if not 8 <= self.frac_bits <= 40:
            raise ValueError(f"frac_bits must be in [8, 40], got {self.frac_bits}")

    def degree(self, n: int) -> int:
        k = 2 * math.ceil(2 * math.log2(max(n, 2))) if self.neighbours is None else self.neighbours
        if k < 1:
            raise ValueError(f"neighbours must be >= 1, got {k}")
        if k >= n - 1:
            return n - 1  # everyone is a neighbour
        return min(k + k % 2, n - 1)  # a Harary graph on a ring has even degree

    def shares_needed(self, k: int) -> int:
        t = k // 3 + 1 if self.threshold is None else self.threshold
        if not 1 <= t <= k:
            raise ValueError(f"threshold must be in [1, k = {k}], got {t}")
        return t


def _pack(kind: int, rnd: int, src: int, dst: int, body: bytes) -> bytes:
    return _HEAD.pack(_MAGIC, kind, rnd, src, dst) + body


def _unpack(data: bytes, kind: int, rnd: int, src: int, dst: int) -> bytes:
    if len(data) < _HEAD.size:
        raise MessageError("shorter than a message header")
    magic, k, r, s, d = _HEAD.unpack_from(data)
    if magic != _MAGIC or k != kind:
        raise MessageError(f"not a SecAgg+ message of kind {kind}")
    if r != rnd:
        raise MessageError(f"replayed: it is for round {r}, this is round {rnd}")
    if (s, d) != (src, dst):
        raise MessageError(f"mis-addressed: from {s} to {d}, expected from {src} to {dst}")
    return data[_HEAD.size :]


def _ids(ids) -> bytes:
    return struct.pack(f"<I{len(ids)}i", len(ids), *ids)


def _read_ids(body: bytes, at: int = 0) -> tuple[list[int], int]:
    if len(body) < at + 4:
        raise MessageError("truncated id list")
    (m,) = struct.unpack_from("<I", body, at)
    end = at + 4 + 4 * m
    if len(body) < end:
        raise MessageError("truncated id list")
    return list(struct.unpack_from(f"<{m}i", body, at + 4)), end


def _raw(key) -> bytes:
    if isinstance(key, X25519PrivateKey):
        return key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _kdf(shared: bytes, rnd: int, a: int, b: int, label: bytes) -> bytes:
    info = label + struct.pack("<Iii", rnd, min(a, b), max(a, b))
    return HKDF(algorithm=hashes.SHA256(), length=_KEY, salt=None, info=info).derive(shared)


def prg(seed: bytes, size: int) -> np.ndarray:
    """`size` pseudo-random uint64 from a 32-byte seed: the AES-256-CTR keystream."""
    enc = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    return np.frombuffer(enc.update(bytes(8 * size)), dtype=np.uint64)


def _share_hash(rnd: int, owner: int, holder: int, tag: bytes, share: bytes) -> bytes:
    return hashlib.sha256(
        b"SA+share" + struct.pack("<Iii", rnd, owner, holder) + tag + share
    ).digest()


def harary(clients: list[int], k: int, rng: np.random.Generator) -> dict[int, list[int]]:
    """A random Harary graph: clients in a random order on a ring, each joined to the k / 2
    nearest on either side (everyone when k = n - 1)."""
    n = len(clients)
    if k >= n - 1:
        return {u: [v for v in clients if v != u] for u in clients}
    ring = [clients[i] for i in rng.permutation(n)]
    pos = {u: i for i, u in enumerate(ring)}
    return {
        u: sorted(ring[(pos[u] + d) % n] for d in range(-(k // 2), k // 2 + 1) if d) for u in ring
    }


class _Client:
    """One client's side of one round: it alone holds its secrets."""

    def __init__(self, cid: int, rnd: int, t: int):
        self.id, self.rnd, self.t = cid, rnd, t
        self.c_key, self.s_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        self.held: dict[int, tuple[bytes, bytes]] = {}  # owner -> (share of b, share of s)

    def advertise(self) -> bytes:
        return _pack(
            ADVERTISE,
            self.rnd,
            self.id,
            SERVER,
            _raw(self.c_key.public_key()) + _raw(self.s_key.public_key()),
        )

    def roster(self, msg: bytes) -> None:
        body = _unpack(msg, ROSTER, self.rnd, SERVER, self.id)
        ids, at = _read_ids(body)
        keys = body[at:]
        if len(keys) != 2 * _KEY * len(ids) or self.id in ids:
            raise MessageError("a roster of the wrong size, or naming the client itself")
        self.neighbours = ids
        self.keys = {
            v: (
                keys[2 * _KEY * j : 2 * _KEY * j + _KEY],
                keys[2 * _KEY * j + _KEY : 2 * _KEY * (j + 1)],
            )
            for j, v in enumerate(ids)
        }

    def _channel(self, v: int) -> AESGCM:
        peer = X25519PublicKey.from_public_bytes(self.keys[v][0])
        return AESGCM(_kdf(self.c_key.exchange(peer), self.rnd, self.id, v, b"SA+chan"))

    def share_keys(self) -> bytes:
        """Shares of b and s for each neighbour, encrypted to it, with their hashes."""
        self.b = os.urandom(_KEY)
        k = len(self.neighbours)
        b_shares = shamir.split(self.b, k, self.t)
        s_shares = shamir.split(_raw(self.s_key), k, self.t)
        parts = []
        for v, bs, ss in zip(self.neighbours, b_shares, s_shares, strict=True):
            b_bytes, s_bytes = bs.to_bytes(), ss.to_bytes()
            ad = _HEAD.pack(_MAGIC, PAYLOAD, self.rnd, self.id, v)
            nonce = os.urandom(_NONCE)
            blob = nonce + self._channel(v).encrypt(
                nonce, struct.pack("<I", len(b_bytes)) + b_bytes + s_bytes, ad
            )
            parts.append(
                _ID.pack(v)
                + _share_hash(self.rnd, self.id, v, b"b", b_bytes)
                + _share_hash(self.rnd, self.id, v, b"s", s_bytes)
                + struct.pack("<I", len(blob))
                + blob
            )
        return _pack(
            SHARES, self.rnd, self.id, SERVER, struct.pack("<I", len(parts)) + b"".join(parts)
        )

    def receive_shares(self, msg: bytes) -> bytes:
        """Open the shares addressed to this client; name the senders whose shares do not."""
        body = _unpack(msg, DELIVER, self.rnd, SERVER, self.id)
        bad = []
        for owner, blob in _read_blobs(body):
            if owner not in self.keys:
                raise MessageError(f"shares from {owner}, who is not a neighbour")
            ad = _HEAD.pack(_MAGIC, PAYLOAD, self.rnd, owner, self.id)
            try:
                plain = self._channel(owner).decrypt(blob[:_NONCE], blob[_NONCE:], ad)
                (m,) = struct.unpack_from("<I", plain)
                b_bytes, s_bytes = plain[4 : 4 + m], plain[4 + m :]
                shamir.Share.from_bytes(b_bytes), shamir.Share.from_bytes(s_bytes)
            except (InvalidTag, ValueError, struct.error):
                bad.append(owner)
                continue
            self.held[owner] = (b_bytes, s_bytes)
        return _pack(COMPLAIN, self.rnd, self.id, SERVER, _ids(bad))

    def confirm(self, msg: bytes) -> None:
        ids, _ = _read_ids(_unpack(msg, CONFIRM, self.rnd, SERVER, self.id))
        if not set(ids) <= set(self.neighbours):
            raise MessageError("the server confirmed clients that are not neighbours")
        self.live = ids

    def masked_input(self, x: np.ndarray, frac_bits: int, limit: float) -> bytes:
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)) or np.any(np.abs(x) >= limit):
            raise ValueError(f"input outside the fixed-point range +-{limit:.3g}, or not finite")
        y = np.rint(x * 2.0**frac_bits).astype(np.int64).view(np.uint64)
        y = y + prg(self.b, y.size)
        for v in self.live:
            peer = X25519PublicKey.from_public_bytes(self.keys[v][1])
            mask = prg(_kdf(self.s_key.exchange(peer), self.rnd, self.id, v, b"SA+mask"), y.size)
            y = y + mask if self.id < v else y - mask
        return _pack(INPUT, self.rnd, self.id, SERVER, y.tobytes())

    def unmask(self, msg: bytes) -> bytes:
        """Share of b for each neighbour that uploaded, of s for each that did not, never both."""
        body = _unpack(msg, REQUEST, self.rnd, SERVER, self.id)
        alive, at = _read_ids(body)
        dropped, _ = _read_ids(body, at)
        if set(alive) & set(dropped) or not set(alive) | set(dropped) <= set(self.held):
            raise MessageError("asked for both shares of a client, or shares it does not hold")
        parts = [_ID.pack(u) + b"b" + self.held[u][0] for u in alive]
        parts += [_ID.pack(u) + b"s" + self.held[u][1] for u in dropped]
        return _pack(
            UNMASK, self.rnd, self.id, SERVER, struct.pack("<I", len(parts)) + _frame(parts)
        )


def _frame(parts: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


def _unframe(body: bytes, at: int, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        if len(body) < at + 4:
            raise MessageError("truncated message")
        (m,) = struct.unpack_from("<I", body, at)
        if len(body) < at + 4 + m:
            raise MessageError("truncated message")
        out.append(body[at + 4 : at + 4 + m])
        at += 4 + m
    if at != len(body):
        raise MessageError("trailing bytes after the last part")
    return out


def _read_blobs(body: bytes) -> list[tuple[int, bytes]]:
    if len(body) < 4:
        raise MessageError("truncated message")
    (m,) = struct.unpack_from("<I", body)
    parts = _unframe(body, 4, m)
    if any(len(p) < _ID.size for p in parts):
        raise MessageError("a delivered share has no sender id")
    return [(_ID.unpack_from(p)[0], p[_ID.size :]) for p in parts]


@dataclass
class SecAggPlus:
    """Pairwise-mask secure aggregation (`MaskingParams`), one protocol run per round. After
    a round, `last_server` is that round's server side (for inspection: it holds no secret)."""

    params: MaskingParams = MaskingParams()
    adversary: Adversary | None = None
    name: str = "secagg+"
    last_server: MaskingServer | None = None

    def limit(self, n: int) -> float:
        """The largest |value| a client may input when n clients are invited."""
        return 2.0 ** (63 - self.params.frac_bits) / n

    def error_bound(self, n: int) -> float:
        """The largest error of a coordinate of the sum of n inputs (fixed-point rounding)."""
        return n * 2.0 ** -(self.params.frac_bits + 1)

    def aggregate(
        self,
        inputs: dict[int, np.ndarray],
        round_idx: int,
        drop_before_upload: frozenset[int] = frozenset(),
        drop_before_unmask: frozenset[int] = frozenset(),
        rng: np.random.Generator | None = None,
    ) -> Aggregate:
        """Run the four phases, each party's work timed and every message carried as bytes."""
        order = sorted(inputs)
        sizes = {np.asarray(v).size for v in inputs.values()}
        if len(sizes) != 1:
            raise ValueError(f"every client's input must have the same length, got {sorted(sizes)}")
        if len(order) < 2:
            raise AggregationFailed(
                f"secure aggregation needs at least 2 clients, got {len(order)}"
            )
        k = self.params.degree(len(order))
        t = self.params.shares_needed(k)
        wire = Wire()
        server = MaskingServer(round_idx, order, k, t, sizes.pop(), self.params.frac_bits, wire)
        self.last_server = server
        clients = {u: _Client(u, round_idx, t) for u in order}
        limit = self.limit(len(order))

        def up(phase: str, u: int, make: Callable[..., bytes], *args) -> bytes:
            wire.phase = phase
            with wire.clock(u):
                msg = make(*args)
            if self.adversary is not None:
                msg = self.adversary(phase, u, msg)
            return wire.carry(u, SERVER, msg)

        def down(u: int, msg: bytes) -> bytes:
            return wire.carry(SERVER, u, msg)

        for u in order:
            server.take_advertisement(u, up("advertise", u, clients[u].advertise))
        for u, msg in server.rosters():
            with wire.clock(u):
                clients[u].roster(down(u, msg))
        for u in server.advertised:
            server.take_shares(u, up("share", u, clients[u].share_keys))
        for v, msg in server.deliveries():
            msg = down(v, msg)
            server.take_complaint(v, up("share", v, clients[v].receive_shares, msg))
        for u, msg in server.confirmations():
            with wire.clock(u):
                clients[u].confirm(down(u, msg))
        for u in server.confirmed:
            if u in drop_before_upload:
                server.excluded[u] = "dropped before upload"
                continue
            try:
                msg = up(
                    "upload", u, clients[u].masked_input, inputs[u], self.params.frac_bits, limit
                )
            except ValueError as e:
                server.excluded[u] = f"withheld its input: {e}"
                continue
            server.take_input(u, msg)
        server.check_uploads()
        for v, msg in server.requests(drop_before_unmask):
            msg = down(v, msg)
            server.take_unmask(v, up("unmask", v, clients[v].unmask, msg))
        total = server.unmask()
        for u in drop_before_unmask & set(server.masked):
            server.unfinished.setdefault(u, "dropped before unmasking (its input is in the sum)")
        cost = {**wire.cost(), "neighbours": k, "threshold": t}
        return Aggregate(
            total, tuple(sorted(server.masked)), server.excluded, cost, server.unfinished
        )


class MaskingServer:
    """The server's side of one round: public keys, the graph, the share hashes, the masked
    inputs and the shares it is given, never a client's secret key or unmasked input."""

    def __init__(
        self, rnd: int, order: list[int], k: int, t: int, size: int, frac_bits: int, wire: Wire
    ):
        self.rnd, self.order, self.k, self.t, self.size = rnd, order, k, t, size
        self.frac_bits, self.wire = frac_bits, wire
        self.pks: dict[int, bytes] = {}
        self.hashes: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        self.routed: dict[int, list[bytes]] = {}
        self.shared: list[int] = []
        self.complaints: set[int] = set()
        self.masked: dict[int, np.ndarray] = {}
        self.got: dict[tuple[int, bytes], list[shamir.Share]] = {}
        self.asked: dict[int, tuple[set[int], set[int]]] = {}
        self.excluded: dict[int, str] = {}
        self.unfinished: dict[int, str] = {}

    def _timed(self):
        return self.wire.clock(SERVER)

    @property
    def advertised(self) -> list[int]:
        return list(self.pks)

    def take_advertisement(self, u: int, msg: bytes) -> None:
        with self._timed():
            try:
                body = _unpack(msg, ADVERTISE, self.rnd, u, SERVER)
                if len(body) != 2 * _KEY:
                    raise MessageError("public keys of the wrong size")
                self.pks[u] = body
            except MessageError as e:
                self.excluded[u] = f"malformed key advertisement: {e}"

    def rosters(self) -> list[tuple[int, bytes]]:
        with self._timed():
            self.graph = harary(self.advertised, self.k, np.random.default_rng())
            self.routed = {u: [] for u in self.pks}
            return [
                (
                    u,
                    _pack(
                        ROSTER, self.rnd, SERVER, u, _ids(nb) + b"".join(self.pks[v] for v in nb)
                    ),
                )
                for u, nb in self.graph.items()
            ]

    def take_shares(self, u: int, msg: bytes) -> None:
        with self._timed():
            try:
                parts = self._parse_shares(u, msg)
            except (MessageError, struct.error) as e:
                self.excluded[u] = f"malformed key shares: {e}"
                return
            for v, hb, hs, blob in parts:
                self.hashes[(u, v)] = (hb, hs)
                self.routed[v].append(_ID.pack(u) + blob)
            self.shared.append(u)

    def _parse_shares(self, u: int, msg: bytes) -> list[tuple[int, bytes, bytes, bytes]]:
        body = _unpack(msg, SHARES, self.rnd, u, SERVER)
        (m,) = struct.unpack_from("<I", body)
        out, at = [], 4
        for _ in range(m):
            (v,) = _ID.unpack_from(body, at)
            hb, hs = body[at + 4 : at + 36], body[at + 36 : at + 68]
            (blen,) = struct.unpack_from("<I", body, at + 68)
            blob = body[at + 72 : at + 72 + blen]
            if len(blob) != blen:
                raise MessageError("truncated share")
            out.append((v, hb, hs, blob))
            at += 72 + blen
        if at != len(body) or sorted(v for v, *_ in out) != sorted(self.graph[u]):
            raise MessageError("shares must go to exactly the client's neighbours, once each")
        return out

    def deliveries(self) -> list[tuple[int, bytes]]:
        with self._timed():
            return [
                (v, _pack(DELIVER, self.rnd, SERVER, v, struct.pack("<I", len(b)) + _frame(b)))
                for v, b in self.routed.items()
            ]

    def take_complaint(self, v: int, msg: bytes) -> None:
        with self._timed():
            try:
                self.complaints |= set(_read_ids(_unpack(msg, COMPLAIN, self.rnd, v, SERVER))[0])
            except MessageError as e:
                self.unfinished[v] = f"malformed complaint: {e}"

    def confirmations(self) -> list[tuple[int, bytes]]:
        """Who takes part from here on (shared keys that opened), told to each client."""
        with self._timed():
            for u in sorted(self.complaints & set(self.shared)):
                self.excluded.setdefault(u, "sent key shares that did not open")
            self.confirmed = [u for u in self.shared if u not in self.excluded]
            live = set(self.confirmed)
            return [
                (
                    u,
                    _pack(
                        CONFIRM, self.rnd, SERVER, u, _ids([v for v in self.graph[u] if v in live])
                    ),
                )
                for u in self.confirmed
            ]

    def take_input(self, u: int, msg: bytes) -> None:
        with self._timed():
            try:
                body = _unpack(msg, INPUT, self.rnd, u, SERVER)
                if len(body) != 8 * self.size:
                    raise MessageError(
                        f"a masked input of {len(body)} bytes, expected {8 * self.size}"
                    )
                self.masked[u] = np.frombuffer(body, dtype=np.uint64)
            except MessageError as e:
                self.excluded[u] = f"malformed masked input: {e}"

    def check_uploads(self) -> None:
        if len(self.masked) < self.t:
            raise AggregationFailed(
                f"only {len(self.masked)} clients uploaded, fewer than the threshold {self.t}: "
                "no partial sum is released"
            )

    def requests(self, gone: frozenset[int]) -> list[tuple[int, bytes]]:
        """Ask each uploader still present for b-shares of uploaders, s-shares of the rest."""
        with self._timed():
            self.alive, self.dropped = set(self.masked), set(self.confirmed) - set(self.masked)
            out = []
            for v in sorted(self.alive - gone):
                alive = [u for u in self.graph[v] if u in self.alive]
                dropped = [u for u in self.graph[v] if u in self.dropped]
                out.append((v, _pack(REQUEST, self.rnd, SERVER, v, _ids(alive) + _ids(dropped))))
                self.asked[v] = (set(alive), set(dropped))
            return out

    def take_unmask(self, v: int, msg: bytes) -> None:
        """File v's shares, each checked against the hash its owner committed to."""
        with self._timed():
            try:
                body = _unpack(msg, UNMASK, self.rnd, v, SERVER)
                (m,) = struct.unpack_from("<I", body)
                parts = _unframe(body, 4, m)
            except (MessageError, struct.error) as e:
                self.unfinished[v] = f"malformed unmasking message: {e}"
                return
            alive, dropped = self.asked[v]
            for p in parts:
                u = _ID.unpack_from(p)[0] if len(p) >= 5 else None
                tag, share = p[4:5], p[5:]
                want, idx = (alive, 0) if tag == b"b" else (dropped, 1)
                if (
                    u not in want
                    or _share_hash(self.rnd, u, v, tag, share) != self.hashes[(u, v)][idx]
                ):
                    self.unfinished[v] = (
                        f"sent a share for client {u} that does not match its commitment"
                    )
                    continue
                try:
                    self.got.setdefault((u, tag), []).append(shamir.Share.from_bytes(share))
                except shamir.ShareError as e:  # committed to by a client that dealt garbage
                    self.unfinished[u] = f"dealt a share that does not parse: {e}"

    def unmask(self) -> np.ndarray:
        """The sum of the uploaders' inputs: their masked vectors, less each self-mask and each
        pairwise mask a surviving client shares with a dropped one."""
        with self._timed():
            total = np.zeros(self.size, dtype=np.uint64)
            for u in self.masked:
                total += self.masked[u]
            for u in self.masked:
                total -= prg(self._rebuild(u, b"b"), self.size)
            for u in sorted(self.dropped):
                live = [v for v in self.graph[u] if v in self.alive]
                if not live:
                    continue
                s_key = X25519PrivateKey.from_private_bytes(self._rebuild(u, b"s"))
                for v in live:  # v added +PRG(s_uv) if v < u, else -PRG(s_uv): take it back
                    peer = X25519PublicKey.from_public_bytes(self.pks[v][_KEY:])
                    mask = prg(_kdf(s_key.exchange(peer), self.rnd, u, v, b"SA+mask"), self.size)
                    total = total - mask if v < u else total + mask
            return total.view(np.int64).astype(np.float64) / 2.0**self.frac_bits

    def _rebuild(self, u: int, tag: bytes) -> bytes:
        shares = self.got.get((u, tag), [])
        if len({s.x for s in shares}) < self.t:
            what = "self-mask seed" if tag == b"b" else "mask key"
            raise AggregationFailed(
                f"client {u}'s {what} has {len(shares)} valid shares, fewer than the threshold "
                f"{self.t}: too many of its neighbours dropped; no partial sum is released"
            )
        return shamir.combine(shares)
