"""Threshold CKKS secure aggregation: the server adds ciphertexts and learns only their sum.

Set-up, among the n invited clients (one key epoch):

1. Every client sends the server an X25519 key and gets back the server's and every client's
   (a directory). Client-server messages then carry an HMAC-SHA256 tag, client-client messages
   are sealed with AES-GCM (the server relays them unread), each under the pair's HKDF key.
   Every header binds epoch, phase, round, sender, recipient and subject under that tag, and a
   receiver refuses any header it did not expect or has already accepted: replayed,
   mis-addressed and stale messages are refused (`MessageRefused`).
2. The lead (the lowest id) makes a CKKS key pair; the others each make a key share on its
   public ``a``; the server adds them into the joint public key and sends it to all
   (:mod:`privlearn.he.multiparty`).
3. Each client serializes its key share and Shamir-splits it t-of-n (`secagg.shamir`): the
   client at position x of the sorted cohort gets share x, sealed for it, so every client holds
   one share of every other client's key and t of them rebuild it. ``"sealed"`` (the default)
   encrypts the bytes under a fresh AES-256-GCM key, stores them at the server and splits only
   that 32-byte key (Krawczyk's short secret sharing): set-up traffic per client is ~0.3 MB.
   ``"direct"`` (the issue's literal recipe, kept for comparison) splits the bytes themselves
   (|share| ≈ 1.33 × the key's 263 KB, to each of n - 1 clients: ~0.35·(n - 1) MB). The
   secrecy against the server rests on AES-GCM in both (the direct shares cross it sealed
   too). t defaults to n // 2 + 1 (OpenFHE's ShareKeys needs t > n/2, and both recovery paths
   keep its rule).

A round:

1. Each uploader encrypts its vector (N = 2^14 reals per ciphertext at the default 128-bit
   parameters) and sends it. The server checks each upload (`Session.read`): one that does not
   parse, has the wrong number of ciphertexts, or the wrong level, context or key names its
   client in ``Aggregate.excluded`` and stays out of the sum.
2. Every client still present gets the sum and returns its partial decryption, flooded.
3. For each key share that has no valid partial decryption (its client dropped, before upload
   or after), a survivor (round-robin) receives t - 1 other survivors' shares of it, rebuilds it
   and returns the partial decryption for it, flooded. Fewer than t survivors, or fewer than t
   valid uploads, raise `AggregationFailed`: nothing is decrypted.
4. The server fuses the n partial decryptions.

Inputs: finite float vectors of one length P with every value within ±2^30 (`VALUE_BOUND`),
so that any sum of up to 2^16 clients stays far below the 2^58 the ciphertexts decode. The
error against the exact sum is absolute, per value: √n·σ of flooding (n floods of σ, the
`stated_error`) plus CKKS noise below 10^-9; σ sizes the flood for ``rounds_per_key`` rounds
of P/N ciphertexts at ``statistical_security`` bits (he.multiparty).

One key epoch serves ``rounds_per_key`` rounds of one cohort and one P; a new cohort, a new P
or a spent epoch runs set-up again. A rebuilt key share is known to its rebuilder, so within an
epoch at most n - t shares may be rebuilt (then at least one share outside any t - 1 colluders
was never rebuilt); a round that would rebuild more fails, and the next round re-keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privlearn.fl.privacy.secagg import shamir
from privlearn.fl.privacy.secagg.base import SERVER, Aggregate, AggregationFailed, Wire
from privlearn.he import io, multiparty
from privlearn.he.params import CKKSParams

VALUE_BOUND = 2.0**30
SETUP = -1  # the round index of set-up messages

_MAGIC = b"PLT1"
_HEAD = struct.Struct(">4sIBiiiiQ")  # magic, epoch, phase, round, src, dst, about, length
_MAC = 32
_NONCE = 12


class Phase(IntEnum):
    HELLO = 1  # client -> server: X25519 key (first contact, unauthenticated)
    DIRECTORY = 2  # server -> client: every party's X25519 key
    LEAD_KEY = 3  # lead -> server -> others: the lead's public key
    KEY = 4  # client -> server: a key share's public key
    JOINT_KEY = 5  # server -> client
    SHARE = 6  # client -> client (relayed, sealed): a Shamir share of the sender's key share
    UPLOAD = 7
    DECRYPT = 8  # server -> client: the sum and whether to add c0
    PARTIAL = 9  # client -> server; about = the key share it decrypts with
    RECOVER = 10  # server -> helper: send your share of `about` to the rebuilder
    FORWARD = 11  # helper -> rebuilder (relayed, sealed)
    REBUILD = 12  # server -> rebuilder: rebuild `about` and decrypt for it
    SEALED_KEY = 13  # client -> server: its key share's bytes under a Shamir-shared AES key


class MessageRefused(ValueError):
    """A message failed its tag, or its header is not the one the receiver expected."""


# -- authenticated messages --------------------------------------------------------------------
class _Link:
    """One party's pairwise keys for one epoch, and the headers it has accepted."""

    def __init__(self, me: int, epoch: int) -> None:
        self.me, self.epoch = me, epoch
        self._private = X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._keys: dict[int, bytes] = {}
        self._seen: set[tuple[int, int, int, int]] = set()

    def connect(self, peer: int, public: bytes) -> None:
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError as e:
            raise MessageRefused(f"party {peer}'s X25519 key is invalid: {e}") from None
        a, b = sorted((self.me, peer))
        info = b"privlearn-threshold-ckks-v1" + struct.pack(">Iii", self.epoch, a, b)
        self._keys[peer] = HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(shared)

    def seal(self, dst: int, phase: Phase, round_idx: int, payload: bytes, about: int = -1):
        """Tagged for the server's links, encrypted for client-client ones; HELLO goes bare."""
        head = _HEAD.pack(_MAGIC, self.epoch, phase, round_idx, self.me, dst, about, len(payload))
        if phase == Phase.HELLO:
            return head + payload
        key = self._keys[dst]
        if SERVER in (self.me, dst):
            return head + payload + hmac.new(key, head + payload, hashlib.sha256).digest()
        nonce = os.urandom(_NONCE)
        return head + nonce + AESGCM(key).encrypt(nonce, payload, head)

    def open(
        self, message: bytes, *, src: int, phase: Phase, round_idx: int, about: int = -1
    ) -> bytes:
        """The payload of a message from ``src`` with exactly this header, or MessageRefused."""
        if len(message) < _HEAD.size:
            raise MessageRefused(f"a {len(message)}-byte message is shorter than its header")
        magic, epoch, ph, rnd, s, d, ab, length = _HEAD.unpack_from(message)
        got = {"epoch": epoch, "phase": ph, "round": rnd, "sender": s, "recipient": d, "about": ab}
        want = {
            "epoch": self.epoch,
            "phase": phase,
            "round": round_idx,
            "sender": src,
            "recipient": self.me,
            "about": about,
        }
        if magic != _MAGIC:
            raise MessageRefused("not a threshold-CKKS message (bad magic)")
        for field, value in got.items():
            if value != want[field]:
                raise MessageRefused(f"message has {field} {value}, expected {want[field]}")
        head, body = message[: _HEAD.size], message[_HEAD.size :]
        if phase == Phase.HELLO:
            payload = body
        elif SERVER in (self.me, src):
            payload, tag = body[:-_MAC], body[-_MAC:]
            mac = hmac.new(self._keys[src], head + payload, hashlib.sha256).digest()
            if len(body) < _MAC or not hmac.compare_digest(tag, mac):
                raise MessageRefused(f"message from {src} fails its authentication tag")
        else:
            try:
                payload = AESGCM(self._keys[src]).decrypt(body[:_NONCE], body[_NONCE:], head)
            except (InvalidTag, ValueError):
                raise MessageRefused(f"sealed message from {src} fails authentication") from None
        if len(payload) != length:
            raise MessageRefused(f"message holds {len(payload)} bytes, its header says {length}")
        key = (phase, round_idx, src, about)
        if key in self._seen:
            raise MessageRefused(f"message from {src} replays one already accepted")
        self._seen.add(key)
        return payload


def _recipient(message: bytes) -> int:
    """Where a relayed message goes (the server reads only the header)."""
    if len(message) < _HEAD.size:
        raise MessageRefused("a relayed message is shorter than its header")
    return _HEAD.unpack_from(message)[5]


def _key_label(epoch: int, dealer: int) -> bytes:
    """Associated data of a sealed key share: which epoch and whose share it is."""
    return b"privlearn-threshold-ckks-key" + struct.pack(">Ii", epoch, dealer)


def _pack(**parts: bytes) -> bytes:
    return io.pack_sections(parts)


def _unpack(payload: bytes, *names: str) -> list[bytes]:
    parts = io.unpack_sections(payload)
    if sorted(parts) != sorted(names):
        raise MessageRefused(f"payload holds {sorted(parts)}, expected {sorted(names)}")
    return [parts[n] for n in names]


# -- the parties -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Config:
    params: CKKSParams
    insecure_for_testing: bool
    rounds_per_key: int
    statistical_security: int
    key_sharing: str


class _Client:
    """One client: its key share, and its Shamir share of every other client's key share."""

    def __init__(self, cid: int, cohort: tuple[int, ...], t: int, epoch: int, config: _Config):
        self.id, self.cohort, self.t, self.config = cid, cohort, t, config
        self.session = multiparty.Session(
            config.params, insecure_for_testing=config.insecure_for_testing
        )
        self.link = _Link(cid, epoch)
        self.party: multiparty.Party | None = None
        self.held: dict[int, bytes] = {}  # dealer -> my share of its key share
        self.decryptions = 0
        self.length: int | None = None  # of the vectors this epoch sums (σ depends on it)

    # set-up
    def hello(self) -> bytes:
        return self.link.seal(SERVER, Phase.HELLO, SETUP, self.link.public)

    def directory(self, hello: bytes, message: bytes) -> None:
        """The server's key (bare), then every client's (tagged under it)."""
        server = self.link.open(hello, src=SERVER, phase=Phase.HELLO, round_idx=SETUP)
        self.link.connect(SERVER, server)
        payload = self.link.open(message, src=SERVER, phase=Phase.DIRECTORY, round_idx=SETUP)
        keys = io.unpack_sections(payload)
        if sorted(keys) != sorted(map(str, self.cohort)) or keys[str(self.id)] != self.link.public:
            raise MessageRefused("the directory does not list this cohort's keys")
        for peer in self.cohort:
            if peer != self.id:
                self.link.connect(peer, keys[str(peer)])

    def lead_key(self) -> bytes:
        self.party = multiparty.Party.lead(self.session)
        return self.link.seal(SERVER, Phase.KEY, SETUP, self.party.public_key)

    def key(self, message: bytes) -> bytes:
        lead = self.link.open(message, src=SERVER, phase=Phase.LEAD_KEY, round_idx=SETUP)
        self.party = multiparty.Party.join(self.session, lead)
        return self.link.seal(SERVER, Phase.KEY, SETUP, self.party.public_key)

    def joint_key(self, message: bytes) -> None:
        joint = self.link.open(message, src=SERVER, phase=Phase.JOINT_KEY, round_idx=SETUP)
        self.session.set_public_key(joint)

    def shares(self) -> tuple[list[bytes], bytes | None]:
        """Shamir shares for each other client, sealed for it: of this key share's bytes
        ("direct"), or ("sealed") of a fresh AES-256-GCM key under which the bytes go to the
        server, the second message here."""
        secret, stored = self.party.key_bytes(), None
        if self.config.key_sharing == "sealed":
            key, nonce = AESGCM.generate_key(256), os.urandom(_NONCE)
            blob = nonce + AESGCM(key).encrypt(nonce, secret, _key_label(self.link.epoch, self.id))
            secret, stored = key, self.link.seal(SERVER, Phase.SEALED_KEY, SETUP, blob)
        split = shamir.split(secret, len(self.cohort), self.t)
        sealed = [
            self.link.seal(peer, Phase.SHARE, SETUP, split[x].to_bytes(), about=self.id)
            for x, peer in enumerate(self.cohort)
            if peer != self.id
        ]
        return sealed, stored

    def take_share(self, dealer: int, message: bytes) -> None:
        opened = self.link.open(
            message, src=dealer, phase=Phase.SHARE, round_idx=SETUP, about=dealer
        )
        self.held[dealer] = opened

    # a round
    def upload(self, round_idx: int, values: np.ndarray) -> bytes:
        self.length = values.size
        return self.link.seal(SERVER, Phase.UPLOAD, round_idx, self.session.encrypt(values))

    def _sigma(self, length: int) -> float:
        n, c = len(self.cohort), self.config
        return multiparty.flood_sigma(
            c.params,
            parties=n,
            summands=n,
            decryptions=c.rounds_per_key * self.session.count(length),
            statistical_security=c.statistical_security,
        )

    def _partial(self, party, total: bytes, lead: bytes, length: bytes) -> bytes:
        """σ and the ciphertext count come from this client's own vector length, not the
        server's claim (a smaller one would shrink σ): a request that disagrees is refused."""
        if self.length is None or length != str(self.length).encode():
            raise MessageRefused(f"the server asks to decrypt {length!r} values, not {self.length}")
        n = self.session.count(self.length)
        return party.partial_decrypt(
            total, count=n, lead=lead == b"1", sigma=self._sigma(self.length)
        )

    def decrypt(self, message: bytes, round_idx: int) -> bytes:
        """This share's flooded partial decryption of the sum; refused beyond the epoch's
        decryption budget (σ was sized for it)."""
        payload = self.link.open(message, src=SERVER, phase=Phase.DECRYPT, round_idx=round_idx)
        total, lead, length = _unpack(payload, "sum", "lead", "length")
        if self.decryptions >= self.config.rounds_per_key:
            raise MessageRefused(f"client {self.id} has decrypted its {self.decryptions} rounds")
        self.decryptions += 1
        partial = self._partial(self.party, total, lead, length)
        return self.link.seal(SERVER, Phase.PARTIAL, round_idx, partial, about=self.id)

    def forward(self, message: bytes, round_idx: int, dealer: int) -> bytes:
        """My share of ``dealer``'s key share, sealed for the rebuilder the server names."""
        payload = self.link.open(
            message, src=SERVER, phase=Phase.RECOVER, round_idx=round_idx, about=dealer
        )
        rebuilder = int(payload)
        if rebuilder not in self.cohort or rebuilder == self.id:  # never to the server
            raise MessageRefused(
                f"client {self.id} forwards shares to other clients, not to {rebuilder}"
            )
        return self.link.seal(rebuilder, Phase.FORWARD, round_idx, self.held[dealer], about=dealer)

    def rebuild(self, message: bytes, round_idx: int, dealer: int, forwarded: dict[int, bytes]):
        """``dealer``'s key share from my share and t - 1 forwarded ones, and the flooded
        partial decryption of the sum with it."""
        payload = self.link.open(
            message, src=SERVER, phase=Phase.REBUILD, round_idx=round_idx, about=dealer
        )
        sealed = self.config.key_sharing == "sealed"
        names = ("sum", "lead", "length") + (("sealed",) if sealed else ())
        total, lead, length, *blob = _unpack(payload, *names)
        shares = [shamir.Share.from_bytes(self.held[dealer])]
        for helper, m in forwarded.items():
            opened = self.link.open(
                m, src=helper, phase=Phase.FORWARD, round_idx=round_idx, about=dealer
            )
            shares.append(shamir.Share.from_bytes(opened))
        secret = shamir.combine(shares)
        if sealed:
            nonce, body = blob[0][:_NONCE], blob[0][_NONCE:]
            try:
                secret = AESGCM(secret).decrypt(nonce, body, _key_label(self.link.epoch, dealer))
            except (InvalidTag, ValueError):
                raise MessageRefused(f"client {dealer}'s sealed key share does not open") from None
        party = multiparty.Party.from_key_bytes(self.session, secret)
        partial = self._partial(party, total, lead, length)
        return self.link.seal(SERVER, Phase.PARTIAL, round_idx, partial, about=dealer)


class _Server:
    """The aggregator's side: the context, the joint public key and its links; no secret key
    (tested). It adds ciphertexts and fuses partial decryptions, which it cannot make."""

    def __init__(self, cohort: tuple[int, ...], epoch: int, config: _Config) -> None:
        self.cohort = cohort
        self.session = multiparty.Session(
            config.params, insecure_for_testing=config.insecure_for_testing
        )
        self.link = _Link(SERVER, epoch)
        self._keys: dict[int, bytes] = {}
        self.sealed: dict[int, bytes] = {}  # client -> its key share, AES-GCM under a key it
        # Shamir-shared among the clients ("sealed" key sharing): opaque to the server

    def store(self, cid: int, message: bytes) -> None:
        self.sealed[cid] = self.link.open(message, src=cid, phase=Phase.SEALED_KEY, round_idx=SETUP)

    def directory(self, hellos: dict[int, bytes]) -> dict[int, tuple[bytes, bytes]]:
        """Each client's answer: the server's own key (bare) and the cohort's keys (tagged)."""
        keys = {}
        for cid, message in hellos.items():
            keys[str(cid)] = self.link.open(message, src=cid, phase=Phase.HELLO, round_idx=SETUP)
            self.link.connect(cid, keys[str(cid)])
        listing = io.pack_sections(keys)
        return {
            cid: (
                self.link.seal(cid, Phase.HELLO, SETUP, self.link.public),
                self.link.seal(cid, Phase.DIRECTORY, SETUP, listing),
            )
            for cid in hellos
        }

    def key(self, cid: int, message: bytes) -> bytes:
        self._keys[cid] = self.link.open(message, src=cid, phase=Phase.KEY, round_idx=SETUP)
        return self._keys[cid]

    def joint_key(self) -> bytes:
        try:
            joint = self.session.joint_public_key([self._keys[c] for c in self.cohort])
        except multiparty.KeyContributionError as e:
            who = "a client" if e.index is None else f"client {self.cohort[e.index]}"
            raise AggregationFailed(
                f"set-up failed: {who} sent a key contribution that was refused ({e}); no "
                "joint key was made and nothing was encrypted"
            ) from None
        self.session.set_public_key(joint)
        return joint

    def upload(self, cid: int, message: bytes, round_idx: int, count: int):
        """The checked ciphertexts of one client's upload (raises on anything wrong)."""
        blob = self.link.open(message, src=cid, phase=Phase.UPLOAD, round_idx=round_idx)
        return self.session.read(blob, count=count, partial=False)

    def partial(self, cid: int, share: int, message: bytes, round_idx: int, count: int):
        blob = self.link.open(
            message, src=cid, phase=Phase.PARTIAL, round_idx=round_idx, about=share
        )
        return self.session.read(blob, count=count, partial=True)


# -- the protocol ------------------------------------------------------------------------------
@dataclass
class _Epoch:
    cohort: tuple[int, ...]
    t: int
    server: _Server
    clients: dict[int, _Client]
    length: int | None = None
    rounds: int = 0
    rebuilt: frozenset[int] = frozenset()


class ThresholdCKKS:
    """Secure aggregation under threshold CKKS (see the module docstring for the protocol,
    its input range and its error). ``threshold``: t of n (default n // 2 + 1, at least
    that); ``key_sharing``: "direct" or "sealed" (set-up, step 3); ``wire``: makes the
    network of each set-up and round (a test's may replay or misroute messages). `setup` runs
    a key epoch on its own, for benchmarks."""

    name = "threshold-ckks"

    def __init__(
        self,
        *,
        threshold: int | None = None,
        params: CKKSParams | None = None,
        rounds_per_key: int = 1,
        statistical_security: int = 30,
        insecure_for_testing: bool = False,
        key_sharing: str = "sealed",
        wire: Callable[[], Wire] = Wire,
    ) -> None:
        if rounds_per_key < 1:
            raise ValueError(f"rounds_per_key must be >= 1, got {rounds_per_key}")
        if key_sharing not in ("direct", "sealed"):
            raise ValueError(f"key_sharing is 'direct' or 'sealed', got {key_sharing!r}")
        self.threshold = threshold
        self.config = _Config(
            params or multiparty.AGGREGATION,
            insecure_for_testing,
            rounds_per_key,
            statistical_security,
            key_sharing,
        )
        self.wire = wire
        self.epoch: _Epoch | None = None
        self._epochs = 0
        self.setup_cost: dict | None = None

    # -- set-up -----------------------------------------------------------------------------------
    def setup(self, clients: Iterable[int]) -> dict:
        """A new key epoch among ``clients``; returns (and keeps in `setup_cost`) its Wire cost."""
        cohort = tuple(sorted(set(clients)))
        n = len(cohort)
        t = self.threshold or n // 2 + 1
        if n < 3 or not n // 2 < t <= n or cohort[0] < 0:
            raise ValueError(
                f"threshold CKKS needs n >= 3 clients with ids >= 0 and n/2 < t <= n "
                f"(OpenFHE's rule for key-share recovery); got n = {n}, t = {t}"
            )
        self._epochs += 1
        wire = self.wire()
        wire.phase = "setup"
        with wire.clock(SERVER):
            server = _Server(cohort, self._epochs, self.config)
        clients_ = {}
        for c in cohort:
            with wire.clock(c):
                clients_[c] = _Client(c, cohort, t, self._epochs, self.config)
        hellos = {}
        for c, client in clients_.items():
            with wire.clock(c):
                hellos[c] = wire.carry(c, SERVER, client.hello())
        with wire.clock(SERVER):
            listings = server.directory(hellos)
        for c, client in clients_.items():
            hello, listing = (wire.carry(SERVER, c, m) for m in listings[c])
            with wire.clock(c):
                client.directory(hello, listing)
        lead, rest = cohort[0], cohort[1:]
        with wire.clock(lead):
            first = wire.carry(lead, SERVER, clients_[lead].lead_key())
        with wire.clock(SERVER):
            lead_key = server.key(lead, first)
            asks = {c: server.link.seal(c, Phase.LEAD_KEY, SETUP, lead_key) for c in rest}
        for c in rest:
            message = wire.carry(SERVER, c, asks[c])
            with wire.clock(c):
                reply = wire.carry(c, SERVER, clients_[c].key(message))
            with wire.clock(SERVER):
                server.key(c, reply)
        with wire.clock(SERVER):
            joint = server.joint_key()
            sends = {c: server.link.seal(c, Phase.JOINT_KEY, SETUP, joint) for c in cohort}
        for c, client in clients_.items():
            message = wire.carry(SERVER, c, sends[c])
            with wire.clock(c):
                client.joint_key(message)
        for c, client in clients_.items():
            with wire.clock(c):
                sealed, stored = client.shares()
            if stored is not None:
                message = wire.carry(c, SERVER, stored)
                with wire.clock(SERVER):
                    server.store(c, message)
            for message in sealed:
                dst = _recipient(wire.carry(c, SERVER, message))
                delivered = wire.carry(SERVER, dst, message)
                with wire.clock(dst):
                    clients_[dst].take_share(c, delivered)
        self.epoch = _Epoch(cohort, t, server, clients_)
        self.setup_cost = wire.cost()
        return self.setup_cost

    @property
    def server(self) -> _Server:
        if self.epoch is None:
            raise RuntimeError("no key epoch yet: run setup or aggregate first")
        return self.epoch.server

    def stated_error(self, length: int) -> dict:
        """The flooding σ each partial decryption carries and the error's standard deviation
        per value of a sum of the current cohort's ``length``-value vectors."""
        if self.epoch is None:
            raise RuntimeError("no key epoch yet: run setup or aggregate first")
        client = next(iter(self.epoch.clients.values()))
        n, sigma = len(self.epoch.cohort), client._sigma(length)
        std = multiparty.error_std(self.config.params, parties=n, summands=n, sigma=sigma)
        return {
            "flooding_sigma": sigma,
            "error_std": std,
            "statistical_security": self.config.statistical_security,
            "decryptions_per_key": self.config.rounds_per_key * client.session.count(length),
            "n": n,
            "t": self.epoch.t,
        }

    # -- a round ----------------------------------------------------------------------------------
    def aggregate(
        self,
        inputs: dict[int, np.ndarray],
        round_idx: int,
        drop_before_upload: frozenset[int] = frozenset(),
        drop_before_unmask: frozenset[int] = frozenset(),
    ) -> Aggregate:
        vectors = _check_inputs(inputs)
        length = len(next(iter(vectors.values())))
        cohort = tuple(sorted(vectors))
        if not set(drop_before_upload) | set(drop_before_unmask) <= set(cohort):
            raise ValueError("drop sets must name invited clients")
        e, setup = self.epoch, None
        if (
            e is None
            or e.cohort != cohort
            or e.rounds >= self.config.rounds_per_key
            or e.length not in (None, length)
        ):
            setup = self.setup(cohort)
            e = self.epoch
        e.length, e.rounds = length, e.rounds + 1
        wire, server, n, t = self.wire(), e.server, len(cohort), e.t
        count = server.session.count(length)
        excluded = {c: "dropped before upload" for c in drop_before_upload}
        batches = {}
        wire.phase = "upload"
        for c in cohort:
            if c in drop_before_upload:
                continue
            with wire.clock(c):
                message = wire.carry(c, SERVER, e.clients[c].upload(round_idx, vectors[c]))
            with wire.clock(SERVER):
                try:
                    batches[c] = server.upload(c, message, round_idx, count)
                except (MessageRefused, io.EnvelopeError, multiparty.MultipartyError) as err:
                    excluded[c] = f"upload refused: {err}"
        if len(batches) < t:
            raise AggregationFailed(
                f"{len(batches)} valid uploads of {n}, fewer than the threshold t = {t}: a sum "
                f"of so few says too much about each; nothing was decrypted"
            )
        present = [c for c in cohort if c not in drop_before_upload | drop_before_unmask]
        if len(present) < t:
            raise AggregationFailed(
                f"{len(present)} of {n} clients are left to decrypt, fewer than the threshold "
                f"t = {t}: no key share can be rebuilt and nothing was decrypted"
            )
        lead = present[0]
        with wire.clock(SERVER):
            total = server.session.add(list(batches.values()))

        def request(phase: Phase, dst: int, share: int) -> bytes:
            parts = {
                "sum": total,
                "lead": b"1" if share == lead else b"0",
                "length": str(length).encode(),
            }
            if phase == Phase.REBUILD and share in server.sealed:
                parts["sealed"] = server.sealed[share]
            about = -1 if phase == Phase.DECRYPT else share
            return server.link.seal(dst, phase, round_idx, _pack(**parts), about=about)

        wire.phase = "decrypt"
        partials: dict[int, multiparty.Batch] = {}
        refused = {}  # present clients whose partial decryption was refused: shares rebuilt
        for c in present:
            with wire.clock(SERVER):
                ask = wire.carry(SERVER, c, request(Phase.DECRYPT, c, c))
            try:
                with wire.clock(c):
                    reply = wire.carry(c, SERVER, e.clients[c].decrypt(ask, round_idx))
                with wire.clock(SERVER):
                    partials[c] = server.partial(c, c, reply, round_idx, count)
            except (MessageRefused, io.EnvelopeError) as err:
                refused[c] = str(err)
        survivors = sorted(partials)
        missing = [c for c in cohort if c not in partials]
        if len(survivors) < t:
            raise AggregationFailed(
                f"{len(survivors)} valid partial decryptions of {n}, fewer than the threshold "
                f"t = {t}: no key share can be rebuilt and nothing was decrypted"
            )
        if len(e.rebuilt | set(missing)) > n - t:
            e.rounds = self.config.rounds_per_key  # this epoch is spent: the next round re-keys
            raise AggregationFailed(
                f"{len(e.rebuilt | set(missing))} key shares rebuilt in this key epoch, more "
                f"than n - t = {n - t} (t - 1 colluding rebuilders could then hold them all): "
                f"nothing was decrypted, and the next round runs set-up again"
            )
        wire.phase = "recover"
        for i, j in enumerate(missing):
            partials[j] = self._recover(wire, e, j, survivors, i, request, round_idx, count)
        e.rebuilt |= set(missing)
        with wire.clock(SERVER):
            result = server.session.fuse([partials[c] for c in cohort], length)
        cost = {**wire.cost(), "rebuilt": missing, "partials_refused": refused}
        if setup is not None:
            cost["setup"] = setup
        unfinished = {c: "dropped before decrypting (its input is in the sum)" for c in batches}
        unfinished = {c: why for c, why in unfinished.items() if c in drop_before_unmask}
        unfinished.update({c: f"partial decryption refused: {why}" for c, why in refused.items()})
        return Aggregate(
            result, tuple(sorted(batches)), dict(sorted(excluded.items())), cost, unfinished
        )

    def _recover(self, wire, e, dealer, survivors, i, request, round_idx, count):
        """The partial decryption for ``dealer``'s key share, made by the i-th missing share's
        rebuilder (round-robin over the survivors) from its own Shamir share and t - 1 others'."""
        server = e.server
        rebuilder = survivors[i % len(survivors)]
        others = [h for h in survivors if h != rebuilder][: e.t - 1]
        forwarded = {}
        for h in others:
            with wire.clock(SERVER):
                ask = server.link.seal(
                    h, Phase.RECOVER, round_idx, str(rebuilder).encode(), about=dealer
                )
            message = wire.carry(SERVER, h, ask)
            with wire.clock(h):
                sealed = wire.carry(h, SERVER, e.clients[h].forward(message, round_idx, dealer))
            forwarded[h] = wire.carry(SERVER, _recipient(sealed), sealed)
        message = wire.carry(SERVER, rebuilder, request(Phase.REBUILD, rebuilder, dealer))
        try:
            with wire.clock(rebuilder):
                reply = e.clients[rebuilder].rebuild(message, round_idx, dealer, forwarded)
            reply = wire.carry(rebuilder, SERVER, reply)
            with wire.clock(SERVER):
                return server.partial(rebuilder, dealer, reply, round_idx, count)
        except (
            MessageRefused,
            io.EnvelopeError,
            shamir.ShareError,
            multiparty.MultipartyError,
        ) as err:
            raise AggregationFailed(
                f"client {rebuilder} could not rebuild client {dealer}'s key share ({err}); "
                f"nothing was decrypted"
            ) from None


def _check_inputs(inputs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    vectors = {c: np.asarray(v, dtype=np.float64).ravel() for c, v in inputs.items()}
    if not vectors or len({v.size for v in vectors.values()}) != 1:
        raise ValueError("inputs must be one or more vectors of one length")
    for c, v in vectors.items():
        if not np.all(np.isfinite(v)) or np.abs(v).max(initial=0.0) > VALUE_BOUND:
            raise ValueError(
                f"client {c}'s input has values outside ±2^30 or not finite; threshold CKKS "
                f"takes finite values within ±{VALUE_BOUND:g} (clip updates first)"
            )
    return vectors
