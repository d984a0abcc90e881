"""Threshold CKKS on OpenFHE: a joint key from every party's share, decryption only by all.

n parties each hold a secret key share s_i; the joint public key encrypts under s = Σ s_i, so
no party (and no server) decrypts alone. Party 1's ``KeyGen`` fixes the public ``a``, every
other party runs ``MultipartyKeyGen(pk_1, fresh=True)`` on the same ``a``, and the server adds
the public keys (``MultiAddPubKeys``): one parallel round, no chain. A ciphertext is decrypted
by one partial decryption per key share (``MultipartyDecryptLead`` for one of them,
``MultipartyDecryptMain`` for the rest) fused by ``MultipartyDecryptFusion``. Every operation
takes and returns bytes; what another party sends is read in the isolation worker first
(:mod:`privlearn.he.isolation`).

A dropped party's share is rebuilt from t of n Shamir shares: in one process with OpenFHE's
``ShareKeys`` / ``RecoverSharedKey`` (:meth:`Party.share_keys`, :meth:`Party.recover`), whose
shares are objects the Python binding cannot serialize; across processes from the share's
bytes (:meth:`Party.key_bytes`, :meth:`Party.from_key_bytes`), which the caller Shamir-shares.
OpenFHE requires t > n/2.

Flooding (IND-CPA^D). A fused decryption reveals m + e, and e depends on the keys (Li and
Micciancio, Eurocrypt 2021). OpenFHE's partial decryptions add Gaussian noise of σ = 2^20 per
coefficient (measured): about 1 bit of statistical security against :func:`error_bound` at
N = 2^14, n = 10. Its NOISE_FLOODING_MULTIPARTY mode is not usable for CKKS from Python. So
each partial decryption here carries its own flood: a Gaussian of σ per real value drawn from
the OS's entropy, encoded into *complex* slots (real and imaginary parts independent, so the
coefficient-domain noise is full rank, not confined to a subspace) and added with ``EvalAdd``
to the partial decryption, a one-element ciphertext. σ is
:func:`privlearn.he.flooding.flooding_sigma` of :func:`error_bound`, a bound on the ℓ2 norm of
the key-dependent error of one decrypted ciphertext (all N real values together: the Gaussian
mechanism's Rényi cost of a shifted vector is its squared ℓ2 norm over 2σ²), with ``queries``
the number of ciphertexts the joint key will ever decrypt. Each party floods with the full σ,
so one honest party's flood hides the error whoever colludes; the fused value carries k floods
(k partial decryptions), error standard deviation √k·σ per value.

The bound holds for sums of ciphertexts that the seam's own `Session.encrypt` made. It is a
high-probability bound for honest encryptions, not a worst case over crafted ones (Guo et al.,
USENIX Security 2024, attack floods sized that way), and no flood helps against a crafted
ciphertext at all: (c0, c1) = (0, Δ) decrypts to the joint secret key itself. Only proofs
that each ciphertext is a well-formed encryption (not built here) would rule that out.

Slots are complex, and sums are linear, so each ciphertext packs 2·(N/2) = N real values (the
first half in the real parts, the second in the imaginary parts): 32 bytes per value uploaded.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from privlearn.he import io, isolation
from privlearn.he.flooding import flooding_sigma
from privlearn.he.openfhe_backend import BACKEND, SER, make_context, ofhe
from privlearn.he.params import CKKSParams, get_params

AGGREGATION = CKKSParams(
    name="mp-n14",
    ring_dim=1 << 14,
    depth=1,
    scale_bits=59,
    first_mod_bits=60,
    num_large_digits=2,
    description="128-bit threshold CKKS for sums: 2^14 reals per ciphertext (complex slots), "
    "two moduli (a 2^59 scale decodes sums below 2^58), no multiplication.",
)
TOY_AGGREGATION = CKKSParams(
    name="toy-mp-n11",
    ring_dim=1 << 11,
    depth=1,
    scale_bits=59,
    first_mod_bits=60,
    num_large_digits=2,
    security="insecure",
    description="INSECURE, for unit tests: mp-n14's moduli at N=2^11.",
)

KEY_NOISE = 3.19  # OpenFHE's Gaussian for key generation and encryption errors
PARTIAL_NOISE = 2.0**20  # OpenFHE's per-coefficient noise in a partial decryption (measured)
TAIL = 1.25  # error_bound's margin over the expected ℓ2 norm (a χ² on N ≥ 2048 values)

_KIND = {False: "mp_ciphertexts", True: "mp_partials"}
# Isolation material per joint key tag. Held here, not by sessions: a Material collected in a
# garbage cycle runs its finalizer, which asks the worker, wherever the collector happens to
# run, and inside another request to the worker that deadlocks on isolation's lock.
_MATERIALS: OrderedDict[str, isolation.Material] = OrderedDict()
_MAX_MATERIALS = 4


class MultipartyError(ValueError):
    """A key contribution, ciphertext or partial decryption cannot be used."""


class KeyContributionError(MultipartyError):
    """A key contribution refused at set-up; `index`: its position (None: unknown)."""

    def __init__(self, message: str, index: int | None) -> None:
        super().__init__(message)
        self.index = index


def _error_variance(params: CKKSParams, parties: int, summands: int) -> float:
    """Per coefficient, the variance of the key-dependent error of a sum of fresh ciphertexts.

    A fresh ciphertext's error is v·e + e_1·s + e_0 (v and s = Σ s_i ternary, e = Σ e_i and
    e_0, e_1 Gaussian of σ = 3.19): (4/3)·N·k·σ² + σ², plus 1/12 of encoding rounding."""
    n, k = params.ring_dim, parties
    return summands * (4 / 3 * n * k * KEY_NOISE**2 + KEY_NOISE**2 + 1 / 12)


def error_bound(params: CKKSParams, *, parties: int, summands: int) -> float:
    """Bound (`TAIL` over its expectation) on the ℓ2 norm, over the N real values of one
    ciphertext, of the key-dependent error of a sum of ``summands`` fresh ciphertexts under a
    joint key of ``parties`` shares. A slot sums N coefficients, so the squared norm over the
    N/2 complex slots is (N²/2)·var/Δ². OpenFHE's own partial-decryption noise is fresh, not
    key-dependent, and left out."""
    var = _error_variance(params, parties, summands)
    return TAIL * params.ring_dim * math.sqrt(var / 2) / 2.0**params.scale_bits


def flood_sigma(
    params: CKKSParams,
    *,
    parties: int,
    summands: int,
    decryptions: int,
    statistical_security: int = 30,
) -> float:
    """σ each partial decryption's flood needs, per real value, so that ``decryptions``
    decrypted ciphertexts under one joint key keep ``statistical_security`` bits."""
    bound = error_bound(params, parties=parties, summands=summands)
    return flooding_sigma(bound, statistical_security=statistical_security, queries=decryptions)


def error_std(params: CKKSParams, *, parties: int, summands: int, sigma: float) -> float:
    """Standard deviation, per real value, of a fused sum's error: ``parties`` floods of σ,
    OpenFHE's partial-decryption noise and the ciphertexts' own error."""
    var = parties * PARTIAL_NOISE**2 + _error_variance(params, parties, summands)
    return math.sqrt(parties * sigma**2 + params.ring_dim / 2 * var / 4.0**params.scale_bits)


def _normal(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Two arrays of standard normals from the OS's entropy (Box–Muller): a flood must be
    unpredictable to whoever sees the result, which a seeded PRNG's outputs need not be."""
    u = np.frombuffer(os.urandom(16 * size), dtype=np.uint64).reshape(2, size) >> np.uint64(11)
    radius = np.sqrt(-2.0 * np.log((u[0] + 1.0) * 2.0**-53))  # u[0] + 1 in (0, 2^53]
    angle = 2.0 * np.pi * u[1] * 2.0**-53
    return radius * np.cos(angle), radius * np.sin(angle)


@dataclass(frozen=True)
class Batch:
    """The ciphertexts (or one-element partial decryptions) of one message, read and checked."""

    raws: tuple[Any, ...]
    partial: bool


class Session:
    """The public side of one threshold key: the context and, once set, the joint public key.
    Clients and the server each hold one; it holds no secret key."""

    def __init__(self, params: CKKSParams | None = None, *, insecure_for_testing: bool = False):
        self.params = get_params(params or AGGREGATION, insecure_for_testing=insecure_for_testing)
        if self.params.bootstrappable:
            raise ValueError("threshold CKKS needs no bootstrapping; pass a leveled set")
        self._cc = make_context(self.params)
        self._cc.Enable(ofhe.PKESchemeFeature.MULTIPARTY)
        self.fingerprint = self.params.fingerprint()
        self.values_per_ciphertext = self.params.ring_dim  # two reals per complex slot
        self._modulus = str(self._cc.GetElementParams().GetModulus())
        self._public_key: Any = None
        self.tag: str | None = None

    def count(self, length: int) -> int:
        """Ciphertexts that hold ``length`` real values."""
        return max(1, -(-length // self.values_per_ciphertext))

    # -- keys -----------------------------------------------------------------------------------
    def joint_public_key(self, contributions: list[bytes]) -> bytes:
        """The server's step: add the lead's public key (first) and the others' into the joint
        key, tagged with the SHA-256 of all of them. The contributions are parsed and added in
        the isolation worker first: a crafted one is refused, naming its position."""
        envs = [
            io.unpack(c, kind="mp_public_key", backend=BACKEND, params_fingerprint=self.fingerprint)
            for c in contributions
        ]
        try:
            isolation.check_public_keys(
                ofhe.Serialize(self._cc, SER), [e.payload for e in envs], "key contribution"
            )
        except isolation.KeyRefused as e:
            raise KeyContributionError(str(e), e.index) from None
        keys = [self._read_public_key(c) for c in contributions]
        tag = hashlib.sha256(b"".join(contributions)).hexdigest()
        joint = keys[0]
        for key in keys[1:]:
            joint = self._cc.MultiAddPubKeys(joint, key, tag)
        return self._pack_public_key(joint)

    def set_public_key(self, blob: bytes) -> None:
        """Encrypt under, and accept only ciphertexts under, this joint key."""
        self._public_key = self._read_public_key(blob)
        self.tag = self._public_key.GetKeyTag()

    def _pack_public_key(self, key) -> bytes:
        return io.pack(
            "mp_public_key",
            BACKEND,
            self.fingerprint,
            ofhe.Serialize(key, SER),
            {"key": key.GetKeyTag()},
        )

    def _read_public_key(self, blob: bytes):
        env = io.unpack(
            blob, kind="mp_public_key", backend=BACKEND, params_fingerprint=self.fingerprint
        )
        try:
            return ofhe.DeserializePublicKeyString(env.payload, SER)
        except RuntimeError as e:
            raise MultipartyError(f"OpenFHE cannot read the public key: {e}") from None

    # -- encryption and addition (public) -------------------------------------------------------
    def encrypt(self, values: np.ndarray) -> bytes:
        """Encrypt a real vector under the joint key, ``count(len(values))`` ciphertexts."""
        if self._public_key is None:
            raise RuntimeError("set the joint public key before encrypting")
        v = np.asarray(values, dtype=np.float64).ravel()
        n, half = self.values_per_ciphertext, self.values_per_ciphertext // 2
        rows = np.zeros((self.count(v.size), n))
        rows.flat[: v.size] = v
        raws = [
            self._cc.Encrypt(
                self._public_key, self._cc.MakeCKKSPackedPlaintext(r[:half] + 1j * r[half:])
            )
            for r in rows
        ]
        return self._pack(raws, partial=False)

    def add(self, batches: list[Batch]) -> bytes:
        """The sum of several clients' checked ciphertexts, as bytes."""
        if not batches or any(b.partial or len(b.raws) != len(batches[0].raws) for b in batches):
            raise ValueError("add takes one or more batches of ciphertexts of one length")
        sums = list(batches[0].raws)
        for b in batches[1:]:
            sums = [self._cc.EvalAdd(s, r) for s, r in zip(sums, b.raws, strict=True)]
        return self._pack(sums, partial=False)

    def fuse(self, partials: list[Batch], length: int) -> np.ndarray:
        """The decrypted sum (float64, ``length`` values) from one partial decryption per key
        share, exactly one of them the lead's."""
        if not partials or any(not p.partial for p in partials):
            raise ValueError("fuse takes the partial decryptions of every key share")
        half = self.values_per_ciphertext // 2
        rows = []
        for i in range(len(partials[0].raws)):
            pt = self._cc.MultipartyDecryptFusion([p.raws[i] for p in partials])
            pt.SetLength(half)
            z = pt.GetCKKSPackedValueArray()
            rows.append(np.concatenate([z.real, z.imag]))
        return np.concatenate(rows)[:length]

    # -- bytes ----------------------------------------------------------------------------------
    def _pack(self, raws: list, *, partial: bool) -> bytes:
        sections = {f"c{i}": ofhe.Serialize(r, SER) for i, r in enumerate(raws)}
        return io.pack(
            _KIND[partial],
            BACKEND,
            self.fingerprint,
            io.pack_sections(sections),
            {"count": len(raws), "key": self.tag},
        )

    def read(self, blob: bytes, *, count: int, partial: bool) -> Batch:
        """Check and parse another party's ciphertexts (or partial decryptions): the envelope,
        their number, then in the isolation worker OpenFHE's parse, level and key; here the
        context, slots, scale and element count. Raises an :class:`io.EnvelopeError` naming
        what is wrong."""
        if self.tag is None:
            raise RuntimeError("set the joint public key before reading ciphertexts")
        what = "partial decryptions" if partial else "ciphertexts"
        env = io.unpack(
            blob, kind=_KIND[partial], backend=BACKEND, params_fingerprint=self.fingerprint
        )
        if env.meta.get("key") != self.tag:
            raise io.ForeignParametersError(f"{what} are under another joint key")
        sections = io.unpack_sections(env.payload)
        payloads = [sections.get(f"c{i}") for i in range(count)]
        if len(sections) != count or None in payloads:
            raise io.CorruptError(f"message holds {len(sections)} {what}, expected {count}")
        self._isolated().check(payloads, [(0, 1)] * count, self.tag)
        try:
            raws = tuple(ofhe.DeserializeCiphertextString(p, SER) for p in payloads)
        except RuntimeError as e:
            raise io.CorruptError(f"OpenFHE could not read the {what}: {e}") from None
        scale = self._cc.GetScalingFactorReal(0)
        for r in raws:
            cc = r.GetCryptoContext()
            if (
                cc.GetRingDimension() != self.params.ring_dim
                or str(cc.GetElementParams().GetModulus()) != self._modulus
                or r.GetSlots() != self.params.slots
                or not math.isclose(r.GetScalingFactor(), scale, rel_tol=1e-9)
            ):
                raise io.ForeignParametersError(f"{what} are in another CKKS context or scale")
            if r.NumberCiphertextElements() != (1 if partial else 2):
                raise io.CorruptError(
                    f"a {'partial decryption' if partial else 'ciphertext'} has "
                    f"{r.NumberCiphertextElements()} elements"
                )
        return Batch(raws, partial)

    def _isolated(self) -> isolation.Material:
        """The joint key's public material in the isolation worker, one per joint key in this
        process (kept in `_MATERIALS`). The worker's loader wants a relinearisation key; sums
        never multiply (and the worker's canary multiplies only where a level is left, which
        depth-1 fresh ciphertexts lack), so it gets one made from a throwaway secret under the
        joint key's tag, discarded at once."""
        if self.tag in _MATERIALS:
            _MATERIALS.move_to_end(self.tag)
            return _MATERIALS[self.tag]
        before = dict(ofhe.CryptoContext.GetAllEvalMultKeys())
        throwaway = self._cc.KeyGen().secretKey
        throwaway.SetKeyTag(self.tag)
        self._cc.EvalMultKeyGen(throwaway)
        relin = ofhe.SerializeEvalMultKeyString(SER, self.tag)
        ofhe.ClearEvalMultKeys()
        for tag, keys in before.items():
            self._cc.InsertEvalMultKey(keys, tag)
        sections = {
            "context": ofhe.Serialize(self._cc, SER),
            "public_key": ofhe.Serialize(self._public_key, SER),
            "relin_key": relin,
        }
        while len(_MATERIALS) >= _MAX_MATERIALS:
            _MATERIALS.popitem(last=False)  # dropped from the worker here, not inside a request
        _MATERIALS[self.tag] = isolation.Material(sections, trusted=True, what="joint key")
        return _MATERIALS[self.tag]


class Party:
    """One party's secret key share and what only it can do with it."""

    def __init__(self, session: Session, secret, public_key: bytes | None) -> None:
        """Use :meth:`lead`, :meth:`join`, :meth:`from_key_bytes` or :meth:`recover`.
        ``public_key``: this share's contribution to the joint key (None when rebuilt)."""
        self.session, self._secret, self.public_key = session, secret, public_key

    @classmethod
    def lead(cls, session: Session) -> Party:
        """The first party: its key pair fixes the public polynomial a."""
        keys = session._cc.KeyGen()
        return cls(session, keys.secretKey, session._pack_public_key(keys.publicKey))

    @classmethod
    def join(cls, session: Session, lead_public_key: bytes) -> Party:
        """Any other party: a fresh key share on the lead's a (added by the server later)."""
        lead = session._read_public_key(lead_public_key)
        keys = session._cc.MultipartyKeyGen(lead, False, True)
        return cls(session, keys.secretKey, session._pack_public_key(keys.publicKey))

    def partial_decrypt(self, ciphertexts: bytes, *, count: int, lead: bool, sigma: float) -> bytes:
        """This share's partial decryption of ``count`` ciphertexts (the lead's adds c0), each
        flooded with a complex Gaussian of ``sigma`` per real value (0: no flood, for tests)."""
        s = self.session
        batch = s.read(ciphertexts, count=count, partial=False)
        decrypt = s._cc.MultipartyDecryptLead if lead else s._cc.MultipartyDecryptMain
        out = []
        for raw in batch.raws:
            part = decrypt([raw], self._secret)[0]
            if sigma > 0:
                re, im = _normal(s.params.slots)
                part = s._cc.EvalAdd(
                    part, s._cc.MakeCKKSPackedPlaintext(sigma * (re + 1j * im), 1, 0)
                )
            out.append(part)
        return s._pack(out, partial=True)

    # -- dropout recovery -----------------------------------------------------------------------
    def key_bytes(self) -> bytes:
        """This share serialized, for the caller to Shamir-share under encryption."""
        s = self.session
        return io.pack("mp_secret_key", BACKEND, s.fingerprint, ofhe.Serialize(self._secret, SER))

    @classmethod
    def from_key_bytes(cls, session: Session, blob: bytes) -> Party:
        """A share rebuilt from :meth:`key_bytes` (parsed in this process: the rebuilder trusts
        the dealer's bytes to be OpenFHE's)."""
        env = io.unpack(
            blob, kind="mp_secret_key", backend=BACKEND, params_fingerprint=session.fingerprint
        )
        try:
            return cls(session, ofhe.DeserializePrivateKeyString(env.payload, SER), None)
        except RuntimeError as e:
            raise MultipartyError(f"a rebuilt key share does not parse: {e}") from None

    def share_keys(self, n: int, t: int, index: int) -> dict[int, Any]:
        """OpenFHE's Shamir shares of this key for the other parties 1..n (this party is
        ``index``): objects that live in this process only."""
        return self.session._cc.ShareKeys(self._secret, n, t, index, "shamir")

    @classmethod
    def recover(cls, session: Session, shares: dict[int, Any], n: int, t: int) -> Party:
        """A dropped party's share from the shares (holder index -> share) that at least t
        other parties hold, by OpenFHE's RecoverSharedKey."""
        secret = ofhe.PrivateKey(session._cc)
        session._cc.RecoverSharedKey(secret, shares, n, t, "shamir")
        return cls(session, secret, None)
