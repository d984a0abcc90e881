"""CKKS parameter sets: named presets, and a 128-bit security check that does not trust callers.

Every parameter set is checked against the Homomorphic Encryption Standard's table (classic
128-bit security, ternary secret: the largest log2(Q·P) allowed per ring dimension), on top of
OpenFHE's own check, which the real backend also runs. An insecure set is refused unless the
caller passes ``insecure_for_testing=True``.

On the sparse secret of the bootstrappable preset (``SPARSE_ENCAPSULATED``): the secret key that
protects every ciphertext is uniform ternary, so the standard's table applies to it unchanged.
A second, sparse key (Hamming weight 32) exists only inside bootstrapping, where OpenFHE switches
to it right before ModRaise at the small modulus q0·P' (about 126 bits); LWE at N = 2^16 with
that modulus and that weight is far above 128 bits (Bossuat, Troncoso-Pastoriza, Hubaux,
ePrint 2022/024; OpenFHE issues #1001, #1041). The plain ``SPARSE_TERNARY`` distribution, whose
*main* key is sparse, is not offered: the standard's table does not cover it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

# HE Standard (homomorphicencryption.org, 2018), Table 1, ternary secret, 128-bit classic:
# max log2(Q·P) per ring dimension. N = 65536 is OpenFHE's extension of the same table
# (src/core/lib/lattice/stdlatticeparms.cpp), computed with the same lattice estimator method.
HE_STANDARD_128_TERNARY: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
    65536: 1772,
}

AUX_MOD_BITS = 60  # size of OpenFHE's key-switching (P) primes

SECRET_DISTRIBUTIONS = ("uniform_ternary", "sparse_encapsulated")


class InsecureParametersError(ValueError):
    """A parameter set falls short of 128-bit security and no test opt-out was given."""


@dataclass(frozen=True)
class CKKSParams:
    """One CKKS parameter set; everything a backend needs to build a context.

    Scaling is OpenFHE's FLEXIBLEAUTO (exact per-level scale tracking: 6 more bits after a
    bootstrap than FIXEDMANUAL, measured), and key switching is HYBRID with
    ``num_large_digits`` digits. ``depth`` is the number of levels of a fresh ciphertext;
    for bootstrappable sets it includes the levels bootstrapping itself consumes.
    """

    name: str
    ring_dim: int
    depth: int
    scale_bits: int
    first_mod_bits: int
    num_large_digits: int
    secret_dist: str = "uniform_ternary"
    bootstrap_level_budget: tuple[int, int] | None = None
    levels_after_bootstrap: int | None = None
    security: str = "128-classic"  # or "insecure"
    key_switching: str = "HYBRID"
    scaling: str = "FLEXIBLEAUTO"
    description: str = field(default="", compare=False)

    @property
    def slots(self) -> int:
        return self.ring_dim // 2

    @property
    def bootstrappable(self) -> bool:
        return self.bootstrap_level_budget is not None

    @property
    def secure(self) -> bool:
        return self.security == "128-classic"

    def log_qp(self) -> int:
        """Estimated log2(Q·P) as OpenFHE estimates it for the standard check.

        Q has ``depth + 1`` primes (first, then scale-sized), plus one bit for the alternating
        prime selection; P holds enough 60-bit primes to exceed the largest key-switching digit.
        """
        num_primes = self.depth + 1
        log_q = self.first_mod_bits + (num_primes - 1) * self.scale_bits
        if log_q != AUX_MOD_BITS:
            log_q += 1
        per_digit = math.ceil(num_primes / self.num_large_digits)
        bits = [self.first_mod_bits] + [self.scale_bits] * (num_primes - 1)
        max_digit = max(sum(bits[i : i + per_digit]) for i in range(0, num_primes, per_digit))
        if max_digit != AUX_MOD_BITS:
            max_digit += 1
        return log_q + math.ceil(max_digit / AUX_MOD_BITS) * AUX_MOD_BITS

    def max_log_qp(self) -> int | None:
        return HE_STANDARD_128_TERNARY.get(self.ring_dim)

    def security_problems(self) -> list[str]:
        """Why this set is not 128-bit secure (empty when it is)."""
        problems = []
        limit = self.max_log_qp()
        if limit is None:
            problems.append(
                f"ring dimension {self.ring_dim} is not in the HE standard table "
                f"({sorted(HE_STANDARD_128_TERNARY)})"
            )
        elif self.log_qp() > limit:
            problems.append(
                f"log2(Q·P) ≈ {self.log_qp()} bits exceeds the {limit} bits that 128-bit security "
                f"allows at N={self.ring_dim}; lower the depth, the scale bits or the first "
                f"modulus, raise num_large_digits, or double the ring dimension"
            )
        if self.secret_dist not in SECRET_DISTRIBUTIONS:
            problems.append(
                f"secret distribution {self.secret_dist!r} is not one whose security the "
                f"standard covers; use one of {SECRET_DISTRIBUTIONS}"
            )
        return problems

    def validate(self, *, insecure_for_testing: bool = False) -> CKKSParams:
        """Check structure always, security unless the loud opt-out is given; return self."""
        if self.ring_dim & (self.ring_dim - 1) or self.ring_dim < 1024:
            raise ValueError(f"ring_dim must be a power of two >= 1024, got {self.ring_dim}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if not 20 <= self.scale_bits <= 60 or not self.scale_bits <= self.first_mod_bits <= 60:
            raise ValueError(
                f"need 20 <= scale_bits ({self.scale_bits}) <= first_mod_bits "
                f"({self.first_mod_bits}) <= 60"
            )
        num_primes, dnum = self.depth + 1, self.num_large_digits
        per_digit = math.ceil(num_primes / dnum) if dnum > 0 else 0
        if dnum < 1 or num_primes - per_digit * (dnum - 1) <= 0:
            raise ValueError(
                f"{num_primes} moduli cannot be split into {dnum} key-switching digits; "
                f"choose num_large_digits between 1 and {num_primes} that leaves no digit empty"
            )
        if self.bootstrappable != (self.levels_after_bootstrap is not None):
            raise ValueError("bootstrap_level_budget and levels_after_bootstrap go together")
        if self.secure:
            problems = self.security_problems()
            if problems:
                raise InsecureParametersError(
                    f"parameter set {self.name!r} is marked 128-bit but is not: "
                    + "; ".join(problems)
                )
        elif not insecure_for_testing:
            problems = self.security_problems() or ["it is marked insecure"]
            raise InsecureParametersError(
                f"parameter set {self.name!r} does not give 128-bit security ("
                + "; ".join(problems)
                + "). Use a 128-bit preset (privlearn info lists them), or pass "
                "insecure_for_testing=True in tests only."
            )
        return self

    def fingerprint(self) -> str:
        """Short hash of everything that changes the cryptosystem (not the name or prose)."""
        d = asdict(self)
        d.pop("name"), d.pop("description")
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def from_summary(cls, d: dict) -> CKKSParams:
        """Inverse of :meth:`summary` (the derived fields are recomputed, not trusted)."""
        budget = d["bootstrap_level_budget"]
        return cls(
            **{
                k: d[k]
                for k in (
                    "name",
                    "ring_dim",
                    "depth",
                    "scale_bits",
                    "first_mod_bits",
                    "num_large_digits",
                    "secret_dist",
                    "levels_after_bootstrap",
                    "key_switching",
                    "scaling",
                    "security",
                )
            },
            bootstrap_level_budget=tuple(budget) if budget else None,
        )

    def summary(self) -> dict:
        return {
            "name": self.name,
            "ring_dim": self.ring_dim,
            "slots": self.slots,
            "depth": self.depth,
            "scale_bits": self.scale_bits,
            "first_mod_bits": self.first_mod_bits,
            "num_large_digits": self.num_large_digits,
            "key_switching": self.key_switching,
            "scaling": self.scaling,
            "secret_dist": self.secret_dist,
            "bootstrap_level_budget": self.bootstrap_level_budget,
            "levels_after_bootstrap": self.levels_after_bootstrap,
            "log_qp": self.log_qp(),
            "max_log_qp_128": self.max_log_qp(),
            "security": self.security,
        }


_PRESETS = [
    CKKSParams(
        name="n16-d24",
        ring_dim=1 << 16,
        depth=24,
        scale_bits=50,
        first_mod_bits=60,
        num_large_digits=3,
        description="128-bit, 2^15 slots, no bootstrapping; 3 key-switching digits (fast "
        "rotations). The deepest set at this digit count.",
    ),
    CKKSParams(
        name="n16-d28",
        ring_dim=1 << 16,
        depth=28,
        scale_bits=50,
        first_mod_bits=60,
        num_large_digits=8,
        description="128-bit, 2^15 slots, no bootstrapping: the most depth 128-bit security "
        "allows at N=2^16 with 50-bit scaling (8 digits make key switching ~3x slower).",
    ),
    CKKSParams(
        name="n15-d11",
        ring_dim=1 << 15,
        depth=11,
        scale_bits=50,
        first_mod_bits=60,
        num_large_digits=3,
        description="128-bit, 2^14 slots, no bootstrapping: for client-refresh training, "
        "where depth is renewed by the client; each operation costs about a quarter of "
        "n16-d24's (half the ring, half the moduli).",
    ),
    CKKSParams(
        name="n16-boot",
        ring_dim=1 << 16,
        depth=20,
        scale_bits=59,
        first_mod_bits=60,
        num_large_digits=3,
        secret_dist="sparse_encapsulated",
        bootstrap_level_budget=(3, 3),
        levels_after_bootstrap=4,
        description="128-bit, 2^15 slots, bootstrappable (16 levels for bootstrapping, 4 "
        "usable after; ~17 bits of precision after a bootstrap).",
    ),
    CKKSParams(
        name="n16-boot7",
        ring_dim=1 << 16,
        depth=23,
        scale_bits=55,
        first_mod_bits=60,
        num_large_digits=4,
        secret_dist="sparse_encapsulated",
        bootstrap_level_budget=(3, 3),
        levels_after_bootstrap=7,
        description="128-bit, 2^15 slots, bootstrappable with 7 levels after each bootstrap: "
        "encrypted training's products and Nesterov step need 5 (7 with HETAL's DiagATB) "
        "between bootstraps. 55-bit scaling and 4 digits pay for them; bootstrap precision "
        "stays ~16 bits (measured).",
    ),
    CKKSParams(
        name="toy-n12",
        ring_dim=1 << 12,
        depth=24,
        scale_bits=50,
        first_mod_bits=60,
        num_large_digits=3,
        security="insecure",
        description="INSECURE, for unit tests: n16-d24's moduli at N=2^12 (2048 slots).",
    ),
    CKKSParams(
        name="toy-n12-boot7",
        ring_dim=1 << 12,
        depth=23,
        scale_bits=55,
        first_mod_bits=60,
        num_large_digits=4,
        secret_dist="sparse_encapsulated",
        bootstrap_level_budget=(3, 3),
        levels_after_bootstrap=7,
        security="insecure",
        description="INSECURE, for unit tests: n16-boot7's moduli at N=2^12.",
    ),
    CKKSParams(
        name="toy-n12-boot",
        ring_dim=1 << 12,
        depth=20,
        scale_bits=59,
        first_mod_bits=60,
        num_large_digits=3,
        secret_dist="sparse_encapsulated",
        bootstrap_level_budget=(3, 3),
        levels_after_bootstrap=4,
        security="insecure",
        description="INSECURE, for unit tests: n16-boot's moduli at N=2^12.",
    ),
]

PRESETS: dict[str, CKKSParams] = {p.name: p for p in _PRESETS}


def get_params(preset: str | CKKSParams, *, insecure_for_testing: bool = False) -> CKKSParams:
    """Look up a preset by name (or pass a CKKSParams through) and validate it."""
    if isinstance(preset, CKKSParams):
        return preset.validate(insecure_for_testing=insecure_for_testing)
    try:
        params = PRESETS[preset]
    except KeyError:
        raise ValueError(
            f"unknown CKKS preset {preset!r}; choose one of {sorted(PRESETS)}"
        ) from None
    return params.validate(insecure_for_testing=insecure_for_testing)
