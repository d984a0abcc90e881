"""Shamir secret sharing of byte strings, t-of-n, over the prime field GF(2^31 - 1).

A secret is cut into 3-byte symbols (each < 2^24 < p), and every symbol is shared with its
own random polynomial of degree t - 1, all symbols at once in numpy: any t shares rebuild the
bytes, any t - 1 are uniformly distributed and say nothing about them. Shamir has no
integrity of its own: the protocols carry shares under authenticated encryption, and a garbled
share is caught here only by chance (a rebuilt symbol outside 2^24). Used for SecAgg+'s
seeds and mask keys and for threshold CKKS's serialized key shares, which OpenFHE's Python
binding cannot share across processes itself.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

P = 2**31 - 1  # a Mersenne prime: products of two residues fit in int64
_SYMBOL = 3  # bytes per field element
_HEAD = struct.Struct("<4sHHIQ")  # magic, x, t, secret length, symbols
_MAGIC = b"SHM1"


class ShareError(ValueError):
    """A share that does not parse, or shares that cannot rebuild a secret together."""


@dataclass(frozen=True)
class Share:
    """One party's share: the evaluation point x (1..n), the threshold t and the secret's
    length, with one field element per 3-byte symbol."""

    x: int
    t: int
    length: int
    y: np.ndarray  # int64, values in [0, P)

    def to_bytes(self) -> bytes:
        head = _HEAD.pack(_MAGIC, self.x, self.t, self.length, len(self.y))
        return head + self.y.astype("<u4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if not isinstance(data, (bytes, bytearray)) or len(data) < _HEAD.size:
            raise ShareError("a Shamir share is shorter than its header")
        magic, x, t, length, k = _HEAD.unpack_from(data)
        if magic != _MAGIC:
            raise ShareError("not a Shamir share (bad magic)")
        if len(data) != _HEAD.size + 4 * k or k != -(-length // _SYMBOL):
            raise ShareError(f"a Shamir share of {length} bytes must hold {k} symbols exactly")
        if not (1 <= x < P and t >= 1):
            raise ShareError(f"a Shamir share has x = {x}, t = {t}")
        y = np.frombuffer(data, "<u4", offset=_HEAD.size).astype(np.int64)
        if np.any(y >= P):
            raise ShareError("a Shamir share holds a value outside the field")
        return cls(x, t, length, y)


def _random_field(shape: tuple[int, ...]) -> np.ndarray:
    """Uniform residues mod P from OS entropy (64-bit draws: the bias is below 2^-32)."""
    n = int(np.prod(shape))
    raw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    return (raw % np.uint64(P)).astype(np.int64).reshape(shape)


def _symbols(secret: bytes) -> np.ndarray:
    pad = (-len(secret)) % _SYMBOL
    b = np.frombuffer(secret + b"\0" * pad, dtype=np.uint8).reshape(-1, _SYMBOL).astype(np.int64)
    return b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)


def split(secret: bytes, n: int, t: int) -> list[Share]:
    """n shares of `secret`, any t of which rebuild it (1 <= t <= n < 2^16)."""
    if not 1 <= t <= n < 2**16:
        raise ValueError(f"Shamir needs 1 <= t <= n < 65536, got t = {t}, n = {n}")
    s = _symbols(bytes(secret))
    coeffs = _random_field((t - 1, len(s)))  # degree 1..t-1; the constant term is the secret
    xs = np.arange(1, n + 1, dtype=np.int64)[:, None]
    acc = np.zeros((n, len(s)), dtype=np.int64)
    for c in coeffs[::-1]:  # Horner from the top coefficient down, every x at once
        acc = (acc + c) * xs % P
    ys = (acc + s) % P
    return [Share(x, t, len(secret), ys[x - 1]) for x in range(1, n + 1)]


def combine(shares: list[Share]) -> bytes:
    """The secret from at least t shares with distinct x (extra shares are ignored)."""
    if not shares:
        raise ShareError("no shares to combine")
    t, length = shares[0].t, shares[0].length
    if any(s.t != t or s.length != length for s in shares):
        raise ShareError("the shares come from different secrets (t or length differ)")
    distinct = {s.x: s for s in shares}
    if len(distinct) < t:
        raise ShareError(f"{len(distinct)} distinct shares, fewer than the threshold {t}")
    use = list(distinct.values())[:t]
    xs = np.array([s.x for s in use], dtype=np.int64)
    num = np.ones(t, dtype=np.int64)  # Lagrange basis at 0: prod_{j != i} x_j / (x_j - x_i)
    den = np.ones(t, dtype=np.int64)
    for j, xj in enumerate(xs):
        other = np.arange(t) != j
        num[other] = num[other] * xj % P
        den[other] = den[other] * ((xj - xs[other]) % P) % P
    weights = [int(a) * pow(int(b), P - 2, P) % P for a, b in zip(num, den, strict=True)]
    acc = np.zeros_like(use[0].y)
    for s, w in zip(use, weights, strict=True):
        acc = (acc + s.y * w) % P
    if np.any(acc >= 2 ** (8 * _SYMBOL)):
        raise ShareError("the shares do not rebuild a byte string (one is forged or corrupt)")
    b = np.stack([acc & 0xFF, (acc >> 8) & 0xFF, (acc >> 16) & 0xFF], axis=1).astype(np.uint8)
    return b.tobytes()[:length]
