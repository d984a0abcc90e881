"""Roles, handles and the one set of level rules every backend obeys.

A :class:`ClientContext` holds the secret key: it encrypts, decrypts and exports a public bundle.
An :class:`Evaluator` is built from that bundle's bytes alone and has no decrypt method at all.
Layers above ``he/`` call only the Evaluator's public methods, so the same algorithm runs on
the simulator and on real encryption.

Level rules (identical on every backend; the base class enforces them, backends only compute):

=====================================  ==========================================================
operation                              levels
=====================================  ==========================================================
add / sub / neg (ct, vector, scalar)   none; operands at different levels meet at the lower one
mul by an integer scalar               none (additions only; noise grows by the factor)
mul by a non-integer or complex scalar one, at ``rescale`` (as in OpenFHE, a scalar is encoded
                                       at scale Δ)
mul by a plaintext vector              one, at ``rescale``
mul ciphertext × ciphertext            one, at ``rescale`` (plus one relinearisation key switch)
rotate / rotate_many / conjugate       none (one key switch per result)
level_down(ct, l)                      drops to level ``l``
bootstrap                              needs one level left (OpenFHE rescales the input first);
                                       returns ``params.levels_after_bootstrap`` levels
=====================================  ==========================================================

``mul(..., rescale=False)`` leaves a product with a pending rescale (``scale_deg == 2``): such
products may be added to each other, then :meth:`Evaluator.rescale` consumes the level once.
Multiplying needs at least one level left; a ciphertext with a pending rescale cannot be
multiplied or bootstrapped until it is rescaled. Breaking a rule raises before any work is done.
"""

from __future__ import annotations

import importlib
import numbers
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privlearn.he import io
from privlearn.he.cost import CostCounter
from privlearn.he.params import CKKSParams, get_params

# Imaginary parts of a real ciphertext's slots are CKKS error, far below this fraction of its
# largest value (or of 1): a larger one means the ciphertext holds complex values.
IMAGINARY_TOLERANCE = 1e-2


class HEError(Exception):
    """Base class of errors raised by the HE layer."""


class LevelError(HEError, ValueError):
    """An operation needs more levels than the ciphertext has left, or a rescale is pending."""


class ParameterMismatchError(HEError, ValueError):
    """Operands come from different parameter sets or backends."""


class MissingKeyError(HEError, KeyError):
    """The public bundle holds no key for this rotation, conjugation or bootstrap."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class BackendUnavailableError(HEError, RuntimeError):
    """The requested backend cannot be loaded on this machine."""


@dataclass(frozen=True, eq=False)
class Ciphertext:
    """A handle to one ciphertext: its backend payload plus what the rules above need.

    ``level`` counts levels *remaining* (HETAL's convention): a fresh ciphertext has
    ``params.depth``; each rescale takes one.
    """

    raw: Any
    level: int
    slots: int
    params_fp: str
    backend: str
    scale_deg: int = 1
    is_complex: bool = False

    @property
    def pending_rescale(self) -> bool:
        return self.scale_deg == 2

    def __repr__(self) -> str:
        kind = "complex" if self.is_complex else "real"
        pend = ", pending rescale" if self.pending_rescale else ""
        return f"Ciphertext({self.backend}, level={self.level}, {self.slots} {kind} slots{pend})"


Operand = Ciphertext | np.ndarray | Sequence[complex] | complex | float | int


def is_integer_scalar(x: Any) -> bool:
    """True for scalars that multiply without a level (see the table above)."""
    if isinstance(x, (bool, np.bool_)):
        return False
    if isinstance(x, numbers.Integral):
        return True
    return isinstance(x, numbers.Real) and float(x).is_integer() and abs(x) < 2**31


class _Context(ABC):
    """What clients and evaluators share: parameters, backend name, cost, (de)serialization."""

    backend_name: str
    params: CKKSParams
    key_id: str  # names the key pair: a ciphertext under another key is refused, not computed on

    def __init__(self, params: CKKSParams) -> None:
        self.params = params
        self.cost = CostCounter()

    @property
    def slots(self) -> int:
        return self.params.slots

    @property
    def is_real_encryption(self) -> bool:
        """False for the simulator, whose 'ciphertexts' are plain numbers."""
        return True

    def _handle(
        self,
        raw: Any,
        level: int,
        scale_deg: int = 1,
        is_complex: bool = False,
    ) -> Ciphertext:
        return Ciphertext(
            raw,
            level,
            self.slots,
            self.params.fingerprint(),
            self.backend_name,
            scale_deg,
            is_complex,
        )

    def _like(self, ct: Ciphertext, raw: Any) -> Ciphertext:
        """A result at the same level, degree and kind as ``ct``."""
        return self._handle(raw, ct.level, ct.scale_deg, ct.is_complex)

    def _check(self, ct: Ciphertext) -> Ciphertext:
        if not isinstance(ct, Ciphertext):
            raise TypeError(f"expected a Ciphertext, got {type(ct).__name__}")
        if ct.backend != self.backend_name or ct.params_fp != self.params.fingerprint():
            raise ParameterMismatchError(
                f"ciphertext belongs to backend {ct.backend!r} with parameters {ct.params_fp}; "
                f"this context is {self.backend_name!r} with {self.params.fingerprint()} "
                f"({self.params.name})"
            )
        return ct

    def _vector(self, values: Any, what: str = "values") -> np.ndarray:
        v = np.asarray(values)
        if v.ndim != 1:
            v = v.reshape(-1) if v.ndim > 1 else v.reshape(1)
        if v.size > self.slots:
            raise ValueError(
                f"{what} has {v.size} entries but a ciphertext holds {self.slots} slots"
            )
        if not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
            raise TypeError(f"{what} must be numeric, got dtype {v.dtype}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{what} contains NaN or infinity")
        dtype = np.complex128 if np.iscomplexobj(v) else np.float64
        out = np.zeros(self.slots, dtype=dtype)
        out[: v.size] = v
        return out

    def noise_state(self) -> dict | None:
        """The state of the randomness this context draws itself, for a checkpoint to resume
        bit-identically: the simulator's noise generator. None where the backend draws from
        the operating system (OpenFHE), which no checkpoint can replay."""
        return None

    def set_noise_state(self, state: dict | None) -> None:
        """Continue from :meth:`noise_state`'s ``state``."""
        if state is not None:
            raise ValueError(f"the {self.backend_name} backend has no noise state to restore")

    # -- serialization --------------------------------------------------------------------------
    def serialize(self, ct: Ciphertext) -> bytes:
        """Ciphertext -> enveloped bytes (see :mod:`privlearn.he.io`)."""
        self._check(ct)
        meta = {
            "level": ct.level,
            "scale_deg": ct.scale_deg,
            "complex": ct.is_complex,
            "key": self.key_id,
        }
        return io.pack(
            "ciphertext",
            self.backend_name,
            self.params.fingerprint(),
            self._raw_to_bytes(ct.raw),
            meta,
        )

    def deserialize(self, data: bytes) -> Ciphertext:
        """Enveloped bytes -> Ciphertext; raises a specific :class:`io.EnvelopeError` if bad."""
        return self.deserialize_many([data])[0]

    def deserialize_many(self, blobs: Iterable[bytes]) -> list[Ciphertext]:
        """Several ciphertexts of one message at once: a backend that reads untrusted bytes in
        isolation (OpenFHE's) tries them all in one go."""
        headers = [self._header(data) for data in blobs]
        raws = self._raws_from_bytes([h[0] for h in headers], [(h[1], h[2]) for h in headers])
        return [
            self._handle(raw, lv, deg, cplx)
            for raw, (_, lv, deg, cplx) in zip(raws, headers, strict=True)
        ]

    def _header(self, data: bytes) -> tuple[bytes, int, int, bool]:
        """An envelope's payload, level, scale degree and complex flag, each checked."""
        env = io.unpack(
            data,
            kind="ciphertext",
            backend=self.backend_name,
            params_fingerprint=self.params.fingerprint(),
        )
        try:
            level, deg, cplx = env.meta["level"], env.meta["scale_deg"], env.meta["complex"]
            key = env.meta["key"]
        except KeyError as e:
            raise io.CorruptError(f"ciphertext header lacks {e}") from None
        if key != self.key_id:
            raise io.ForeignParametersError(
                "ciphertext was encrypted under another key pair than this context's (same "
                "preset, different client); it cannot be computed on or decrypted here"
            )
        if type(level) is not int or not 0 <= level <= self.params.depth or deg not in (1, 2):
            raise io.CorruptError(f"ciphertext header has impossible level {level}/degree {deg}")
        if type(cplx) is not bool:
            raise io.CorruptError(f"ciphertext header's complex flag is {cplx!r}, not a boolean")
        return env.payload, level, deg, cplx

    @abstractmethod
    def _raw_to_bytes(self, raw: Any) -> bytes: ...

    @abstractmethod
    def _raws_from_bytes(self, payloads: list[bytes], shapes: list[tuple[int, int]]) -> list: ...


class ClientContext(_Context):
    """The data owner's side: holds the secret key. Never hand this object to a server."""

    @staticmethod
    def create(
        preset: str | CKKSParams = "n16-d24",
        backend: str = "openfhe",
        *,
        seed: int | None = None,
        insecure_for_testing: bool = False,
    ) -> ClientContext:
        """Generate keys for ``preset`` on ``backend`` ("openfhe" or "simulator").

        ``seed`` fixes the simulator's noise; OpenFHE draws keys and encryption randomness from
        the operating system and cannot be seeded.
        """
        params = get_params(preset, insecure_for_testing=insecure_for_testing)
        return _backend_module(backend).Client(params, seed=seed)

    @staticmethod
    def load(path: str | os.PathLike, *, insecure_for_testing: bool = False) -> ClientContext:
        """The client :meth:`save` wrote to ``path``: the same keys, so it decrypts what was
        encrypted under them. The file must be readable by its owner only."""
        env = io.unpack(io.read_private(path), kind="secret_key")
        try:
            params = CKKSParams.from_summary(env.meta["params"])
        except (KeyError, TypeError, ValueError) as e:
            raise io.CorruptError(f"{path}: its parameters are unreadable ({e})") from None
        if params.fingerprint() != env.params_fingerprint:
            raise io.CorruptError(f"{path}: its parameters do not match its fingerprint")
        params.validate(insecure_for_testing=insecure_for_testing)
        return _backend_module(env.backend).Client.restore(params, env)

    def save(self, path: str | os.PathLike) -> Path:
        """Write this client's keys, the secret key included, to a new file of mode 0600.
        Whoever reads it can decrypt everything encrypted under this key: keep it apart from
        what the server holds."""
        meta, payload = self._secret_material()
        blob = io.pack(
            "secret_key",
            self.backend_name,
            self.params.fingerprint(),
            payload,
            {**meta, "params": self.params.summary()},
        )
        return io.write_private(path, blob)

    @abstractmethod
    def _secret_material(self) -> tuple[dict, bytes]:
        """What :meth:`save` writes: header fields and the serialized keys."""

    @abstractmethod
    def encrypt(self, values: Any, *, level: int | None = None) -> Ciphertext:
        """Encrypt up to ``slots`` real or complex values (zero-padded) at ``level`` (default:
        the top). A lower level makes a smaller ciphertext; use the lowest a computation needs."""

    def decrypt(self, ct: Ciphertext) -> np.ndarray:
        """All slots, as float64 for a real ciphertext and complex128 for a complex one.
        Refused: values that are not finite, and a ciphertext marked real whose slots hold
        more than CKKS error in their imaginary parts (the mark comes from a header its sender
        wrote; dropping the imaginary part would silently lose half of what it holds)."""
        values = self._decrypted(ct)
        if not np.isfinite(values).all():
            raise io.CorruptError("a ciphertext decrypted to values that are not finite")
        if ct.is_complex:
            return values
        scale = max(1.0, float(np.abs(values.real).max(initial=0.0)))
        if np.abs(values.imag).max(initial=0.0) > IMAGINARY_TOLERANCE * scale:
            raise io.CorruptError(
                "a ciphertext marked real holds imaginary parts beyond CKKS error; its "
                "header's complex flag is wrong"
            )
        return values.real.copy()

    def _decrypted(self, ct: Ciphertext) -> np.ndarray:
        self._check(ct)
        self.cost.record("decrypt", ct.level)
        return self._decrypt(ct)

    @abstractmethod
    def _decrypt(self, ct: Ciphertext) -> np.ndarray:
        """All slots as complex128."""

    @abstractmethod
    def public_bundle(
        self,
        rotations: Iterable[int] = (),
        *,
        conjugation: bool = False,
        bootstrap: bool = False,
        path: str | os.PathLike | None = None,
    ) -> bytes | Path:
        """Serialized public material for a server: public key, relinearisation key, the
        rotation keys for ``rotations`` only (each costs memory), and on request the
        conjugation and bootstrapping keys. Holds no secret key.

        Returns bytes, or with ``path`` writes a bundle directory (see
        :func:`privlearn.he.io.write_bundle`) and returns its path: use that for
        bootstrapping keys at N=2^16, which take gigabytes."""

    def refresh(self, ct: Ciphertext, *, level: int | None = None) -> Ciphertext:
        """Decrypt and encrypt afresh: the client-side alternative to bootstrapping. What is
        decrypted goes back encrypted, unchecked: a check on the values would answer a
        question about them to whoever sent the ciphertext."""
        values = self._decrypted(ct)
        return self.encrypt(values if ct.is_complex else values.real, level=level)

    def _levels_ok(self, level: int | None) -> int:
        level = self.params.depth if level is None else level
        if not 0 <= level <= self.params.depth:
            raise LevelError(f"level must be in 0..{self.params.depth}, got {level}")
        return level


class Evaluator(_Context):
    """The server's side: homomorphic operations from public keys only. No decryption exists.

    Public methods validate operands and enforce the level rules in the module docstring,
    record costs, then call the backend's primitives.
    """

    def __init__(
        self, params: CKKSParams, rotations: Iterable[int], conjugation: bool, bootstrap: bool
    ) -> None:
        super().__init__(params)
        self.rotation_keys = frozenset(int(k) % params.slots for k in rotations) - {0}
        self.has_conjugation_key = conjugation
        self.can_bootstrap = bootstrap

    @staticmethod
    def from_bundle(
        bundle: bytes | str | os.PathLike, *, insecure_for_testing: bool = False
    ) -> Evaluator:
        """Build an Evaluator from :meth:`ClientContext.public_bundle` output alone (bytes or
        a bundle directory); every byte is verified before a backend reads it. A bundle under
        parameters short of 128 bits needs the same loud opt-out as the client that made it."""
        env, sections = io.open_bundle(bundle)
        module = _backend_module(env.backend)
        return module.Evaluator.load(env, sections, insecure_for_testing=insecure_for_testing)

    # -- arithmetic -----------------------------------------------------------------------------
    def add(self, a: Ciphertext, b: Operand) -> Ciphertext:
        return self._add(a, b, negate_b=False)

    def sub(self, a: Ciphertext, b: Operand) -> Ciphertext:
        return self._add(a, b, negate_b=True)

    def neg(self, a: Ciphertext) -> Ciphertext:
        self._check(a)
        self.cost.record("add", a.level)
        return self._like(a, self._p_neg(a))

    def _add(self, a: Ciphertext, b: Operand, negate_b: bool) -> Ciphertext:
        self._check(a)
        if isinstance(b, Ciphertext):
            self._check(b)
            if a.scale_deg != b.scale_deg:
                raise LevelError(
                    "cannot add a ciphertext with a pending rescale to one without; "
                    "rescale the product first (or multiply both with rescale=False)"
                )
            level = min(a.level, b.level)
            raw = self._p_add_ct(a, b, level, negate_b)
            cplx = a.is_complex or b.is_complex
        elif np.ndim(b) == 0:
            c = -b if negate_b else b
            raw, level, cplx = self._p_add_scalar(a, c), a.level, a.is_complex or _is_cplx(c)
        else:
            v = self._vector(b, "plaintext operand")
            raw = self._p_add_plain(a, -v if negate_b else v)
            level, cplx = a.level, a.is_complex or np.iscomplexobj(v)
        self.cost.record("add", level)
        return self._handle(raw, level, a.scale_deg, cplx)

    def mul(self, a: Ciphertext, b: Operand, *, rescale: bool = True) -> Ciphertext:
        """a·b. Integer scalars cost no level; everything else one (see the module table)."""
        self._check(a)
        if not isinstance(b, Ciphertext) and np.ndim(b) == 0 and is_integer_scalar(b):
            self.cost.record("imult", a.level)
            return self._like(a, self._p_mul_int(a, int(b)))
        self._need_level(a, 1, "multiplication")
        if isinstance(b, Ciphertext):
            self._check(b)
            self._need_level(b, 1, "multiplication")
            level = min(a.level, b.level)
            raw = self._p_mul_ct(a, b, level)
            op, cplx = "mult", a.is_complex or b.is_complex
        elif np.ndim(b) == 0:
            raw, level, op = self._p_mul_scalar(a, b), a.level, "smult"
            cplx = a.is_complex or _is_cplx(b)
        else:
            v = self._vector(b, "plaintext operand")
            raw, level, op = self._p_mul_plain(a, v), a.level, "cmult"
            cplx = a.is_complex or np.iscomplexobj(v)
        self.cost.record(op, level)
        out = self._handle(raw, level, 2, cplx)
        return self.rescale(out) if rescale else out

    def square(self, a: Ciphertext, *, rescale: bool = True) -> Ciphertext:
        return self.mul(a, a, rescale=rescale)

    def rescale(self, ct: Ciphertext) -> Ciphertext:
        self._check(ct)
        if not ct.pending_rescale:
            raise LevelError("nothing to rescale: the ciphertext has no pending product")
        self.cost.record("rescale", ct.level)
        return self._handle(self._p_rescale(ct), ct.level - 1, 1, ct.is_complex)

    # -- rotations ------------------------------------------------------------------------------
    def _rotation_index(self, k: int) -> int:
        r = int(k) % self.slots
        if r and r not in self.rotation_keys:
            raise MissingKeyError(
                f"no rotation key for {k} (= {r} mod {self.slots}); the bundle has "
                f"{sorted(self.rotation_keys)}. Ask the client for a bundle with this rotation."
            )
        return r

    def rotate(self, ct: Ciphertext, k: int) -> Ciphertext:
        """Rotate slots left by ``k`` (slot i of the result is slot i+k of the input)."""
        self._check(ct)
        r = self._rotation_index(k)
        if r == 0:
            return ct
        self.cost.record("rotate", ct.level)
        return self._like(ct, self._p_rotate(ct, r))

    def rotate_many(self, ct: Ciphertext, ks: Iterable[int]) -> dict[int, Ciphertext]:
        """Several rotations of one ciphertext sharing one digit decomposition (hoisting)."""
        self._check(ct)
        ks = list(dict.fromkeys(int(k) for k in ks))
        idx = {k: self._rotation_index(k) for k in ks}
        distinct = sorted({r for r in idx.values() if r})
        out: dict[int, Ciphertext] = {}
        if len(distinct) == 1:
            rotated = {distinct[0]: self.rotate(ct, distinct[0])}
        elif distinct:
            self.cost.record("decompose", ct.level)
            self.cost.record("hoisted_rotate", ct.level, len(distinct))
            raws = self._p_rotate_hoisted(ct, distinct)
            rotated = {r: self._like(ct, raw) for r, raw in zip(distinct, raws, strict=True)}
        else:
            rotated = {}
        for k, r in idx.items():
            out[k] = rotated[r] if r else ct
        return out

    def conjugate(self, ct: Ciphertext) -> Ciphertext:
        """Complex conjugate of every slot (an automorphism: one key switch)."""
        self._check(ct)
        if not self.has_conjugation_key:
            raise MissingKeyError("the bundle has no conjugation key; request conjugation=True")
        self.cost.record("conjugate", ct.level)
        return self._like(ct, self._p_conjugate(ct))

    # -- levels ---------------------------------------------------------------------------------
    def level_down(self, ct: Ciphertext, level: int) -> Ciphertext:
        self._check(ct)
        self._need_no_pending(ct, "moved to a lower level")
        if level > ct.level or level < 0:
            raise LevelError(f"cannot move a level-{ct.level} ciphertext to level {level}")
        if level == ct.level:
            return ct
        self.cost.record("level_down", ct.level)
        return self._handle(self._p_level_down(ct, level), level, 1, ct.is_complex)

    def match_level(self, ct: Ciphertext, other: Ciphertext) -> Ciphertext:
        return self.level_down(ct, min(ct.level, other.level))

    def bootstrap(self, ct: Ciphertext) -> Ciphertext:
        """Refresh to ``params.levels_after_bootstrap`` levels.

        privlearn's contract: real and imaginary parts of every slot lie in [-1, 1], where the
        calibrated precision holds (the simulator enforces it). OpenFHE degrades beyond it
        (measured on toy-n12-boot: 24 bits at 1, 18 at 64, garbage at 1024), silently."""
        self._check(ct)
        if not (self.params.bootstrappable and self.can_bootstrap):
            why = (
                "the parameter set is not bootstrappable"
                if not self.params.bootstrappable
                else "the bundle has no bootstrapping keys (request bootstrap=True)"
            )
            raise MissingKeyError(f"cannot bootstrap: {why}")
        self._need_level(ct, 1, "bootstrapping (its first step rescales the input)")
        self.cost.record("bootstrap", ct.level)
        return self._handle(
            self._p_bootstrap(ct), self.params.levels_after_bootstrap, 1, ct.is_complex
        )

    def _need_level(self, ct: Ciphertext, n: int, what: str) -> None:
        self._need_no_pending(ct, "multiplied")
        if ct.level < n:
            raise LevelError(
                f"{what} needs {n} level(s) but the ciphertext has {ct.level} left; "
                f"bootstrap it, refresh it on the client, or plan for more depth"
            )

    @staticmethod
    def _need_no_pending(ct: Ciphertext, what: str) -> None:
        if ct.pending_rescale:
            raise LevelError(
                f"a ciphertext with a pending rescale cannot be {what}; "
                f"call evaluator.rescale(ct) first"
            )

    # -- backend primitives: compute only, all checks are done above ----------------------------
    @abstractmethod
    def _p_neg(self, a: Ciphertext) -> Any: ...
    @abstractmethod
    def _p_add_ct(self, a: Ciphertext, b: Ciphertext, level: int, negate_b: bool) -> Any: ...
    @abstractmethod
    def _p_add_scalar(self, a: Ciphertext, c: complex) -> Any: ...
    @abstractmethod
    def _p_add_plain(self, a: Ciphertext, v: np.ndarray) -> Any: ...
    @abstractmethod
    def _p_mul_int(self, a: Ciphertext, c: int) -> Any: ...
    @abstractmethod
    def _p_mul_ct(self, a: Ciphertext, b: Ciphertext, level: int) -> Any: ...
    @abstractmethod
    def _p_mul_scalar(self, a: Ciphertext, c: complex) -> Any: ...
    @abstractmethod
    def _p_mul_plain(self, a: Ciphertext, v: np.ndarray) -> Any: ...
    @abstractmethod
    def _p_rescale(self, ct: Ciphertext) -> Any: ...
    @abstractmethod
    def _p_rotate(self, ct: Ciphertext, r: int) -> Any: ...
    @abstractmethod
    def _p_rotate_hoisted(self, ct: Ciphertext, rs: list[int]) -> list[Any]: ...
    @abstractmethod
    def _p_conjugate(self, ct: Ciphertext) -> Any: ...
    @abstractmethod
    def _p_level_down(self, ct: Ciphertext, level: int) -> Any: ...
    @abstractmethod
    def _p_bootstrap(self, ct: Ciphertext) -> Any: ...


def bundle_header(
    env: io.Envelope, insecure_for_testing: bool = False
) -> tuple[CKKSParams, list[int], bool, bool]:
    """Parameters, rotations, conjugation and bootstrap flags from a bundle's header."""
    try:
        params = CKKSParams.from_summary(env.meta["params"])
        rotations, conj, boot = (
            env.meta["rotations"],
            env.meta["conjugation"],
            env.meta["bootstrap"],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise io.CorruptError(f"public bundle header is incomplete: {e}") from None
    if params.fingerprint() != env.params_fingerprint:
        raise io.CorruptError("public bundle's parameters do not match its fingerprint")
    params.validate(insecure_for_testing=insecure_for_testing)
    if not (isinstance(rotations, list) and all(type(r) is int for r in rotations)):
        raise io.CorruptError(
            f"public bundle's rotations are not a list of integers: {rotations!r:.80}"
        )
    if any(not 0 < r < params.slots for r in rotations):
        raise io.CorruptError(f"public bundle's rotations must lie in 1..{params.slots - 1}")
    if type(conj) is not bool or type(boot) is not bool:
        raise io.CorruptError("public bundle's conjugation and bootstrap flags must be booleans")
    if boot and not params.bootstrappable:
        raise io.CorruptError(
            f"public bundle grants bootstrapping under {params.name}, which has none"
        )
    return params, rotations, conj, boot


def _is_cplx(c: Any) -> bool:
    return isinstance(c, complex | np.complexfloating) and complex(c).imag != 0


BACKENDS = {"openfhe": "privlearn.he.openfhe_backend", "simulator": "privlearn.he.simulator"}


def _backend_module(name: str):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    try:
        return importlib.import_module(BACKENDS[name])
    except ImportError as e:
        raise BackendUnavailableError(f"backend {name!r} cannot be loaded: {e}") from e


def available_backends() -> dict[str, str | None]:
    """Backend name -> None if it loads, else the reason it does not."""
    out: dict[str, str | None] = {}
    for name in BACKENDS:
        try:
            _backend_module(name)
            out[name] = None
        except BackendUnavailableError as e:
            out[name] = str(e.__cause__ or e)
    return out
