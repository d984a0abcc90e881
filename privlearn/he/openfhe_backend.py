"""Real CKKS on OpenFHE (the ``openfhe`` PyPI wheel).

Facts this backend relies on, measured on OpenFHE 1.6 (wheel 1.6.1.0.22.4):

- ``CKKSDataType.COMPLEX`` must be set, or the imaginary part of every slot is dropped silently.
- FLEXIBLEAUTO scaling: a bootstrap keeps ~17 bits of precision, against ~11 with FIXEDMANUAL at
  the same moduli. FLEXIBLEAUTO rescales lazily; ``Compress(ct, towers)`` forces the rescale
  now, so a ciphertext's OpenFHE level always equals the handle's (checked after every op).
- Conjugation is the automorphism with index 2N - 1.
- OpenFHE keeps rotation keys in a process-wide table keyed by the secret key's tag. The
  client empties it once a bundle is serialized (it needs no evaluation keys itself); each
  Evaluator keeps its own key map and puts it back into the table before it rotates.
"""

from __future__ import annotations

import functools
import os
import sys
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from privlearn.he import io, isolation
from privlearn.he.backend import Ciphertext, ClientContext, HEError, bundle_header
from privlearn.he.backend import Evaluator as _EvaluatorBase
from privlearn.he.params import CKKSParams, InsecureParametersError

# OpenFHE parallelises with OpenMP, whose threads spin while they wait. On a machine whose
# cores are busy with other work, spinning threads steal each other's time: measured here
# under a load of 6 on 2 cores, a rotation took 297 ms spinning and 38 ms passive. Passive
# waiting costs little on an idle machine; a caller's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import openfhe as ofhe
except ImportError as e:  # pragma: no cover - depends on the interpreter
    v = sys.version_info
    hint = (
        "OpenFHE publishes no wheel for Python 3.11; use Python 3.10 or 3.12"
        if v[:2] == (3, 11)
        else "install it with `pip install 'privlearn[he]'` (wheels exist for CPython 3.10, "
        "glibc >= 2.36, and 3.12, glibc >= 2.38)"
    )
    raise ImportError(
        f"the openfhe module is not importable on Python {v[0]}.{v[1]} ({e}); {hint}"
    ) from e

BACKEND = "openfhe"
SER = ofhe.BINARY
_SECTIONS = ("context", "public_key", "relin_key")  # every bundle has them
# Which Evaluator's keys currently sit in OpenFHE's process-wide table, per key tag.
_ACTIVE: dict[str, weakref.ref] = {}


def version() -> str:
    from importlib.metadata import version as v

    return v("openfhe")


def make_context(params: CKKSParams):
    """A CryptoContext for ``params``. OpenFHE runs its own standard check for 128-bit sets."""
    p = ofhe.CCParamsCKKSRNS()
    p.SetRingDim(params.ring_dim)
    p.SetBatchSize(params.slots)
    p.SetMultiplicativeDepth(params.depth)
    p.SetScalingModSize(params.scale_bits)
    p.SetFirstModSize(params.first_mod_bits)
    p.SetNumLargeDigits(params.num_large_digits)
    p.SetKeySwitchTechnique(getattr(ofhe.KeySwitchTechnique, params.key_switching))
    p.SetScalingTechnique(getattr(ofhe.ScalingTechnique, params.scaling))
    p.SetSecretKeyDist(getattr(ofhe.SecretKeyDist, params.secret_dist.upper()))
    p.SetCKKSDataType(ofhe.CKKSDataType.COMPLEX)
    p.SetSecurityLevel(
        ofhe.SecurityLevel.HEStd_128_classic if params.secure else ofhe.SecurityLevel.HEStd_NotSet
    )
    try:
        cc = ofhe.GenCryptoContext(p)
    except RuntimeError as e:
        _clear_stale_estimate()
        if "does not comply with HE standards" not in str(e):
            raise
        raise InsecureParametersError(
            f"OpenFHE finds parameter set {params.name!r} short of 128-bit security "
            f"({str(e).split('): ')[-1]}). privlearn estimated log2(Q·P) at {params.log_qp()} of "
            f"{params.max_log_qp()} bits; its estimate is optimistic for some sets within a few "
            f"bits of the limit, and OpenFHE's check decides: lower the depth or the scale bits, "
            f"or raise num_large_digits"
        ) from None
    for feature in ("PKE", "KEYSWITCH", "LEVELEDSHE", "ADVANCEDSHE", "FHE"):
        cc.Enable(getattr(ofhe.PKESchemeFeature, feature))
    return cc


def _clear_stale_estimate() -> None:
    """A failed GenCryptoContext leaves OpenFHE's global estimate of the key-switching modulus
    set, and the next context built without a security level then fails on it. Building one
    tiny 128-bit context (which sets and consumes that estimate) clears it."""
    p = ofhe.CCParamsCKKSRNS()
    p.SetRingDim(8192)
    p.SetBatchSize(8)
    p.SetMultiplicativeDepth(1)
    p.SetScalingModSize(20)
    p.SetFirstModSize(21)
    p.SetNumLargeDigits(1)
    p.SetSecurityLevel(ofhe.SecurityLevel.HEStd_128_classic)
    ofhe.GenCryptoContext(p)


def _bootstrap_depth(params: CKKSParams) -> int:
    """Levels OpenFHE's bootstrapping consumes for ``params`` (asked of OpenFHE itself)."""
    return ofhe.CryptoContext.GetBootstrapDepth(
        list(params.bootstrap_level_budget), getattr(ofhe.SecretKeyDist, params.secret_dist.upper())
    )


class _OpenFHEMixin:
    backend_name = BACKEND
    params: CKKSParams
    _cc: Any

    def _raw_to_bytes(self, raw: Any) -> bytes:
        return ofhe.Serialize(raw, SER)

    def _raws_from_bytes(self, payloads: list[bytes], shapes: list[tuple[int, int]]) -> list:
        expect = [(self.params.depth - level, deg) for level, deg in shapes]
        self._isolated().check(payloads, expect, self.key_id)
        raws = []
        for payload, (level, deg) in zip(payloads, expect, strict=True):
            try:
                raw = ofhe.DeserializeCiphertextString(payload, SER)
            except Exception as e:  # OpenFHE raises RuntimeError subclasses
                raise io.CorruptError(f"OpenFHE could not read the ciphertext: {e}") from None
            if raw.GetLevel() != level or raw.GetNoiseScaleDeg() != deg:
                raise io.CorruptError("ciphertext header and payload disagree on its level")
            if raw.GetKeyTag() != self.key_id:
                raise io.ForeignParametersError("ciphertext payload is under another key pair")
            raws.append(raw)
        return raws

    def _pt(self, v: np.ndarray, level: int, scale_deg: int = 1):
        """Encode slot values at the OpenFHE level matching a handle's ``level``."""
        return self._cc.MakeCKKSPackedPlaintext(v, scale_deg, self.params.depth - level)

    def _handle(self, raw, level, scale_deg=1, is_complex=False) -> Ciphertext:
        if raw.GetLevel() != self.params.depth - level or raw.GetNoiseScaleDeg() != scale_deg:
            raise HEError(  # a bug in privlearn, never a user error
                f"level bookkeeping diverged from OpenFHE: handle level {level}/deg {scale_deg}, "
                f"OpenFHE level {raw.GetLevel()}/deg {raw.GetNoiseScaleDeg()}"
            )
        return Ciphertext(
            raw, level, self.params.slots, self.params.fingerprint(), BACKEND, scale_deg, is_complex
        )


class Client(_OpenFHEMixin, ClientContext):
    def __init__(self, params: CKKSParams, seed: int | None = None) -> None:
        super().__init__(params)
        if params.bootstrappable and params.depth - _bootstrap_depth(params) != (
            params.levels_after_bootstrap
        ):
            raise ValueError(
                f"{params.name}: depth {params.depth} leaves "
                f"{params.depth - _bootstrap_depth(params)} levels after bootstrapping, "
                f"not the {params.levels_after_bootstrap} the preset states"
            )
        self._cc = make_context(params)
        keys = self._cc.KeyGen()
        self._public_key, self._secret_key = keys.publicKey, keys.secretKey
        self._tag = self.key_id = self._secret_key.GetKeyTag()
        self._cc.EvalMultKeyGen(self._secret_key)
        self._relin = self._cc.GetEvalMultKeyVector(self._tag)
        self._bootstrap_ready = False
        self._material: isolation.Material | None = None

    def _isolated(self) -> isolation.Material:
        """This client's public material in the isolation worker, loaded on first use."""
        if self._material is None:
            sections = {
                "context": ofhe.Serialize(self._cc, SER),
                "public_key": ofhe.Serialize(self._public_key, SER),
                "relin_key": self._relin_key_bytes(),
            }
            self._material = isolation.Material(sections, trusted=True, what="own keys")
        return self._material

    def encrypt(self, values: Any, *, level: int | None = None) -> Ciphertext:
        level = self._levels_ok(level)
        v = self._vector(values)
        self.cost.record("encrypt", level)
        raw = self._cc.Encrypt(self._public_key, self._pt(v, level))
        return self._handle(raw, level, 1, np.iscomplexobj(v))

    def _decrypt(self, ct: Ciphertext) -> np.ndarray:
        pt = self._cc.Decrypt(self._secret_key, ct.raw)
        pt.SetLength(self.slots)
        return np.asarray(pt.GetCKKSPackedValue(), dtype=np.complex128)

    def public_bundle(self, rotations=(), *, conjugation=False, bootstrap=False, path=None):
        rotations = sorted({int(k) % self.slots for k in rotations} - {0})
        if bootstrap and not self.params.bootstrappable:
            raise ValueError(f"preset {self.params.name} is not bootstrappable")
        cc, tag = self._cc, self._tag
        cc.ClearEvalAutomorphismKeys()
        _ACTIVE.clear()
        if bootstrap:
            if not self._bootstrap_ready:
                cc.EvalBootstrapSetup(list(self.params.bootstrap_level_budget))
                self._bootstrap_ready = True
            cc.EvalBootstrapKeyGen(self._secret_key, self.slots)
        if rotations:
            cc.EvalRotateKeyGen(self._secret_key, rotations)
        if conjugation:
            conj = cc.EvalAutomorphismKeyGen(self._secret_key, [2 * self.params.ring_dim - 1])
            cc.InsertEvalAutomorphismKey(conj, tag)
        sections: dict[str, bytes | Path] = {
            "context": ofhe.Serialize(cc, SER),
            "public_key": ofhe.Serialize(self._public_key, SER),
            "relin_key": self._relin_key_bytes(),
        }
        if rotations or conjugation or bootstrap:
            if path is None:
                sections["automorphism_keys"] = ofhe.SerializeEvalAutomorphismKeyString(SER, tag)
            else:  # gigabytes at N=2^16 with bootstrapping: straight to disk
                f = Path(path) / "automorphism_keys.bin"
                f.parent.mkdir(parents=True, exist_ok=True)
                if not cc.SerializeEvalAutomorphismKey(str(f), SER, tag):
                    raise OSError(f"OpenFHE could not write {f}")
                sections["automorphism_keys"] = f
        cc.ClearEvalAutomorphismKeys()  # the client keeps no evaluation keys once sent
        if bootstrap:
            cc.ClearBootstrapPrecom()  # nor bootstrapping precomputations (gigabytes)
            self._bootstrap_ready = False
        meta = {
            "rotations": rotations,
            "conjugation": conjugation,
            "bootstrap": bootstrap,
            "params": self.params.summary(),
        }
        if path is not None:
            return io.write_bundle(path, BACKEND, self.params.fingerprint(), sections, meta)
        return io.pack(
            "public_bundle", BACKEND, self.params.fingerprint(), io.pack_sections(sections), meta
        )

    def _secret_material(self) -> tuple[dict, bytes]:
        sections = {
            "context": ofhe.Serialize(self._cc, SER),
            "public_key": ofhe.Serialize(self._public_key, SER),
            "secret_key": ofhe.Serialize(self._secret_key, SER),
            "relin_key": self._relin_key_bytes(),
        }
        return {}, io.pack_sections(sections)

    @classmethod
    def restore(cls, params: CKKSParams, env: io.Envelope) -> Client:
        """A client from :meth:`ClientContext.save`'s file (its owner's own, so trusted)."""
        s = io.unpack_sections(env.payload)
        self = cls.__new__(cls)
        ClientContext.__init__(self, params)
        try:
            self._cc = ofhe.DeserializeCryptoContextString(s["context"], SER)
            _check_context(self._cc, params)
            for feature in ("PKE", "KEYSWITCH", "LEVELEDSHE", "ADVANCEDSHE", "FHE"):
                self._cc.Enable(getattr(ofhe.PKESchemeFeature, feature))
            self._public_key = ofhe.DeserializePublicKeyString(s["public_key"], SER)
            self._secret_key = ofhe.DeserializePrivateKeyString(s["secret_key"], SER)
            self._tag = self.key_id = self._secret_key.GetKeyTag()
            if self._public_key.GetKeyTag() != self._tag:
                raise io.CorruptError("the saved public and secret keys are not one pair")
            load_relin_key(self._cc, s["relin_key"], self._tag)
        except (KeyError, RuntimeError) as e:
            raise io.CorruptError(f"OpenFHE could not read the saved keys: {e}") from None
        self._relin = self._cc.GetEvalMultKeyVector(self._tag)
        self._bootstrap_ready = False
        self._material = None
        return self

    def _relin_key_bytes(self) -> bytes:
        """This client's relinearisation key as OpenFHE's table holds it, put back from the
        client's own copy if the table has none for its tag (a bundle that failed to load in
        this process may have emptied it)."""
        if self._tag not in ofhe.CryptoContext.GetAllEvalMultKeys():
            self._cc.InsertEvalMultKey(self._relin, self._tag)
        return ofhe.SerializeEvalMultKeyString(SER, self._tag)

    def _secret_key_bytes(self) -> bytes:
        """For tests that prove the secret key never leaves: its serialized form."""
        return ofhe.Serialize(self._secret_key, SER)


def _check_context(cc, params: CKKSParams) -> None:
    """A bundle's context must be the one its header's parameters build: the header's security
    claim is checked on the parameters, so a context of another ring or chain must not pass."""
    ref = make_context(params)
    for what, get in (
        ("ring dimension", lambda c: c.GetRingDimension()),
        ("multiplicative depth", lambda c: c.GetMultiplicativeDepth()),
        ("ciphertext modulus", lambda c: str(c.GetElementParams().GetModulus())),
        ("scaling technique", lambda c: str(c.GetScalingTechnique())),
        ("key switching", lambda c: str(c.GetKeySwitchTechnique())),
    ):
        if get(cc) != get(ref):
            raise io.CorruptError(
                f"public bundle's context has {what} {str(get(cc))[:40]}, but its header's "
                f"parameters ({params.name}) give {str(get(ref))[:40]}"
            )


def load_relin_key(cc, blob: bytes, tag: str) -> None:
    """Make ``blob``'s relinearisation key the one OpenFHE's process-wide table holds for key
    tag ``tag``. The table takes one key vector per tag and refuses a second, so in one process
    a bundle's key was never used (the client's, generated first, stayed). Other tags' keys are
    put back, and on failure the table is left as it was."""
    before = dict(ofhe.CryptoContext.GetAllEvalMultKeys())
    ofhe.ClearEvalMultKeys()
    try:
        ofhe.DeserializeEvalMultKeyString(blob, SER)
        if tag not in ofhe.CryptoContext.GetAllEvalMultKeys():
            raise io.CorruptError("the relinearisation key is under another key pair")
    except BaseException:
        ofhe.ClearEvalMultKeys()
        _insert_relin_keys(cc, before)
        raise
    _insert_relin_keys(cc, {t: v for t, v in before.items() if t != tag})


def _insert_relin_keys(cc, keys: dict) -> None:
    for t, v in keys.items():
        cc.InsertEvalMultKey(v, t)


class OperationError(HEError, RuntimeError):
    """OpenFHE refused an operation with keys from a bundle (a key it lacks or cannot use)."""


def _openfhe_op(primitive):
    """Primitives that use evaluation keys: OpenFHE's refusal becomes an OperationError."""

    @functools.wraps(primitive)
    def run(self, *args):
        try:
            return primitive(self, *args)
        except RuntimeError as e:
            raise OperationError(f"OpenFHE refused {primitive.__name__[3:]}: {e}") from None

    return run


class Evaluator(_OpenFHEMixin, _EvaluatorBase):
    @classmethod
    def load(
        cls, env: io.Envelope, sections: dict[str, bytes | Path], insecure_for_testing: bool = False
    ) -> Evaluator:
        params, rotations, conj, boot = bundle_header(env, insecure_for_testing)
        return cls(params, rotations, conj, boot, sections)

    def __init__(self, params, rotations, conjugation, bootstrap, sections) -> None:
        super().__init__(params, rotations, conjugation, bootstrap)

        missing = [k for k in _SECTIONS if k not in sections]
        if missing:
            raise io.CorruptError(f"public bundle lacks its {', '.join(missing)} section")
        # small sections as bytes; automorphism keys stay a file if large
        public = {
            k: v.read_bytes() if k in _SECTIONS and isinstance(v, Path) else v
            for k, v in sections.items()
        }
        self._conj_index = 2 * params.ring_dim - 1
        self._material = isolation.Material(public, trusted=False, what="public bundle")
        self._load(public)
        if bootstrap:
            self._cc.EvalBootstrapSetup(list(params.bootstrap_level_budget))
        self._m = self._cc.GetCyclotomicOrder()

    def _isolated(self) -> isolation.Material:
        return self._material

    def _load(self, public: dict[str, bytes | Path]) -> None:
        """Read the sections into OpenFHE (read safely in the isolation worker's fork first)."""
        try:
            self._cc = ofhe.DeserializeCryptoContextString(public["context"], SER)
            _check_context(self._cc, self.params)
            for feature in ("PKE", "KEYSWITCH", "LEVELEDSHE", "ADVANCEDSHE", "FHE"):
                self._cc.Enable(getattr(ofhe.PKESchemeFeature, feature))
            self._public_key = ofhe.DeserializePublicKeyString(public["public_key"], SER)
            self._tag = self.key_id = self._public_key.GetKeyTag()
            load_relin_key(self._cc, public["relin_key"], self._tag)
            self._keys = None
            keys = public.get("automorphism_keys")
            # OpenFHE merges into the table: another evaluator's keys for this tag would pass
            # for this bundle's (each evaluator puts its own back when it rotates)
            self._cc.ClearEvalAutomorphismKeys()
            _ACTIVE.clear()
            if isinstance(keys, Path):
                if not self._cc.DeserializeEvalAutomorphismKey(str(keys), SER):
                    raise RuntimeError(f"cannot read {keys}")
            elif keys is not None:
                ofhe.DeserializeEvalAutomorphismKeyString(keys, SER)
            if keys is not None:
                self._keys = self._cc.GetEvalAutomorphismKeyMap(self._tag)
                _ACTIVE[self._tag] = weakref.ref(self)
            self._check_claimed_keys()
        except RuntimeError as e:
            raise io.CorruptError(f"OpenFHE could not read the public bundle: {e}") from None

    def _check_claimed_keys(self) -> None:
        """Every rotation and the conjugation the header grants must have its key."""
        wanted = set(self._cc.FindAutomorphismIndices(sorted(self.rotation_keys)))
        if self.has_conjugation_key:
            wanted.add(self._conj_index)
        have = set()
        if self._keys is not None:
            have = set(self._cc.GetExistingEvalAutomorphismKeyIndices(self._tag))
        if wanted - have:
            raise io.CorruptError(
                f"public bundle grants {len(wanted)} rotation/conjugation keys but holds "
                f"{len(wanted & have)} of them"
            )

    def _activate(self) -> None:
        """Put this evaluator's keys back in OpenFHE's table if another context replaced them."""
        ref = _ACTIVE.get(self._tag)
        if (ref() if ref else None) is not self and self._keys is not None:
            self._cc.InsertEvalAutomorphismKey(self._keys, self._tag)
            _ACTIVE[self._tag] = weakref.ref(self)

    # primitives ------------------------------------------------------------------------------
    def _p_neg(self, a):
        return self._cc.EvalNegate(a.raw)

    def _p_add_ct(self, a, b, level, negate_b):
        return (self._cc.EvalSub if negate_b else self._cc.EvalAdd)(a.raw, b.raw)

    def _p_add_scalar(self, a, c):
        return self._cc.EvalAdd(a.raw, complex(c) if isinstance(c, complex) else float(c))

    def _p_add_plain(self, a, v):
        return self._cc.EvalAdd(a.raw, self._pt(v, a.level, a.scale_deg))

    def _p_mul_int(self, a, c):
        cc = self._cc
        if c == 0:
            return cc.EvalSub(a.raw, a.raw)
        acc, base, n = None, a.raw, abs(c)
        while n:  # double-and-add: no level, exact integer factor
            if n & 1:
                acc = base if acc is None else cc.EvalAdd(acc, base)
            n >>= 1
            if n:
                base = cc.EvalAdd(base, base)
        return cc.EvalNegate(acc) if c < 0 else (acc if acc is not a.raw else acc.Clone())

    @_openfhe_op
    def _p_mul_ct(self, a, b, level):
        if a is b:
            return self._cc.EvalSquare(a.raw)
        return self._cc.EvalMult(a.raw, b.raw)

    def _p_mul_scalar(self, a, c):
        return self._cc.EvalMult(a.raw, complex(c) if isinstance(c, complex) else float(c))

    def _p_mul_plain(self, a, v):
        return self._cc.EvalMult(a.raw, self._pt(v, a.level))

    def _p_rescale(self, ct):
        return self._cc.Compress(ct.raw, ct.level)  # towers left = new level + 1

    @_openfhe_op
    def _p_rotate(self, ct, r):
        self._activate()
        return self._cc.EvalRotate(ct.raw, r)

    @_openfhe_op
    def _p_rotate_hoisted(self, ct, rs):
        self._activate()
        digits = self._cc.EvalFastRotationPrecompute(ct.raw)
        return [self._cc.EvalFastRotation(ct.raw, r, self._m, digits) for r in rs]

    @_openfhe_op
    def _p_conjugate(self, ct):
        self._activate()
        return self._cc.EvalAutomorphism(ct.raw, self._conj_index, self._keys)

    def _p_level_down(self, ct, level):
        return self._cc.Compress(ct.raw, level + 1)

    @_openfhe_op
    def _p_bootstrap(self, ct):
        self._activate()
        out = self._cc.EvalBootstrap(ct.raw)  # FLEXIBLEAUTO leaves a rescale pending: do it now
        return self._cc.Compress(out, self.params.levels_after_bootstrap + 1)
