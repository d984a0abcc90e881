"""The slot simulator: CKKS's arithmetic, levels and noise on plain numpy vectors.

THIS IS NOT ENCRYPTION. A simulator "ciphertext" holds its slot values in the clear. The
simulator exists to develop and test algorithms at full size, fast: it obeys the same level
rules as the real backend (the shared base class enforces them), raises the same errors, counts
the same operations, and adds Gaussian noise of the size OpenFHE shows for the same parameters
after encryption, each rescale, each key switch and each bootstrap (:mod:`privlearn.he.noise`,
calibrated by ``python -m privlearn.he.calibrate``). Anything that
claims to protect data must run on a real backend.

One check only the simulator can make: bootstrapping slots outside [-1, 1] raises here, where
OpenFHE would silently return garbage.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from privlearn.he import io
from privlearn.he.backend import ClientContext, LevelError, bundle_header
from privlearn.he.backend import Evaluator as _EvaluatorBase
from privlearn.he.noise import NoiseModel
from privlearn.he.params import CKKSParams

BACKEND = "simulator"
NOT_ENCRYPTION = "SIMULATOR - NOT ENCRYPTION: slot values travel in the clear"
BOOTSTRAP_INPUT_BOUND = 1.0


class _SimMixin:
    backend_name = BACKEND
    params: CKKSParams
    noise: NoiseModel
    _rng: np.random.Generator

    @property
    def is_real_encryption(self) -> bool:
        return False

    def _noise(self, raw: np.ndarray, sigma: float) -> np.ndarray:
        n = raw.size
        return raw + sigma * (self._rng.standard_normal(n) + 1j * self._rng.standard_normal(n))

    def noise_state(self) -> dict:
        return self._rng.bit_generator.state

    def set_noise_state(self, state: dict | None) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"the simulator's noise state is a mapping, got {state!r:.60}")
        self._rng.bit_generator.state = state

    def _raw_to_bytes(self, raw: np.ndarray) -> bytes:
        return raw.astype(np.complex128).tobytes()

    def _raws_from_bytes(self, payloads: list[bytes], shapes) -> list[np.ndarray]:
        out = []
        for payload in payloads:
            if len(payload) != 16 * self.params.slots:
                raise io.CorruptError(
                    f"simulator ciphertext has {len(payload)} bytes, "
                    f"expected {16 * self.params.slots}"
                )
            out.append(np.frombuffer(payload, dtype=np.complex128).copy())
        return out


class Client(_SimMixin, ClientContext):
    """Simulated data owner. Its 'secret key' is a random token: nothing here is hidden."""

    def __init__(self, params: CKKSParams, seed: int | None = None) -> None:
        super().__init__(params)
        self.noise = NoiseModel.for_params(params)
        self._seed = int(seed) if seed is not None else secrets.randbits(63)
        self._rng = np.random.default_rng(self._seed)
        self._secret = secrets.token_bytes(32)
        self.key_id = secrets.token_hex(16)

    def encrypt(self, values: Any, *, level: int | None = None):
        level = self._levels_ok(level)
        v = self._vector(values)
        self.cost.record("encrypt", level)
        return self._handle(
            self._noise(v.astype(np.complex128), self.noise.fresh), level, 1, np.iscomplexobj(v)
        )

    def _decrypt(self, ct) -> np.ndarray:
        return ct.raw.astype(np.complex128)

    def public_bundle(self, rotations=(), *, conjugation=False, bootstrap=False, path=None):
        rotations = sorted({int(k) % self.slots for k in rotations} - {0})
        if bootstrap and not self.params.bootstrappable:
            raise ValueError(f"preset {self.params.name} is not bootstrappable")
        meta = {
            "rotations": rotations,
            "conjugation": conjugation,
            "bootstrap": bootstrap,
            "params": self.params.summary(),
            "noise_seed": self._seed + 1,
            "key": self.key_id,
            "warning": NOT_ENCRYPTION,
        }
        if path is not None:
            return io.write_bundle(path, BACKEND, self.params.fingerprint(), {}, meta)
        return io.pack("public_bundle", BACKEND, self.params.fingerprint(), b"", meta)

    def _secret_key_bytes(self) -> bytes:
        return self._secret

    def _secret_material(self) -> tuple[dict, bytes]:
        return {"key": self.key_id, "seed": self._seed}, self._secret

    @classmethod
    def restore(cls, params: CKKSParams, env: io.Envelope) -> Client:
        key, seed = env.meta.get("key"), env.meta.get("seed")
        if not isinstance(key, str) or type(seed) is not int:
            raise io.CorruptError("simulator key file lacks its key id or seed")
        self = cls(params, seed=seed)
        self._secret, self.key_id = env.payload, key
        return self


class Evaluator(_SimMixin, _EvaluatorBase):
    @classmethod
    def load(cls, env: io.Envelope, sections: dict, insecure_for_testing: bool = False):
        params, rotations, conj, boot = bundle_header(env, insecure_for_testing)
        key_id = env.meta.get("key")
        if not isinstance(key_id, str):
            raise io.CorruptError("simulator bundle header lacks its key id")
        return cls(params, rotations, conj, boot, key_id, seed=env.meta.get("noise_seed"))

    def __init__(self, params, rotations, conjugation, bootstrap, key_id, seed=None) -> None:
        super().__init__(params, rotations, conjugation, bootstrap)
        self.key_id = key_id
        self.noise = NoiseModel.for_params(params)
        self._rng = np.random.default_rng(seed)

    def _p_neg(self, a):
        return -a.raw

    def _p_add_ct(self, a, b, level, negate_b):
        return a.raw - b.raw if negate_b else a.raw + b.raw

    def _p_add_scalar(self, a, c):
        return a.raw + c

    def _p_add_plain(self, a, v):
        return a.raw + v

    def _p_mul_int(self, a, c):
        return a.raw * c

    def _p_mul_ct(self, a, b, level):
        return self._noise(a.raw * b.raw, self.noise.keyswitch)  # relinearisation

    def _p_mul_scalar(self, a, c):
        return a.raw * c

    def _p_mul_plain(self, a, v):
        return a.raw * v

    def _p_rescale(self, ct):
        return self._noise(ct.raw, self.noise.rescale)

    def _p_rotate(self, ct, r):
        return self._noise(np.roll(ct.raw, -r), self.noise.keyswitch)

    def _p_rotate_hoisted(self, ct, rs):
        return [self._p_rotate(ct, r) for r in rs]

    def _p_conjugate(self, ct):
        return self._noise(np.conj(ct.raw), self.noise.keyswitch)

    def _p_level_down(self, ct, level):
        return self._noise(ct.raw, self.noise.rescale)

    def _p_bootstrap(self, ct):
        worst = max(np.abs(ct.raw.real).max(), np.abs(ct.raw.imag).max())
        if worst > BOOTSTRAP_INPUT_BOUND * (1 + 1e-6):
            raise LevelError(
                f"simulator check: bootstrapping a slot of size {worst:.3g}; inputs must lie "
                f"in [-{BOOTSTRAP_INPUT_BOUND}, {BOOTSTRAP_INPUT_BOUND}] (OpenFHE would return "
                f"garbage silently). Scale the values down before bootstrapping."
            )
        return self._noise(ct.raw, self.noise.bootstrap)
