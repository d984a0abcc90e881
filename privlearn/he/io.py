"""A versioned envelope around every byte string privlearn writes for the HE layer.

Layout: ``b"PLHE"`` | header length (4 bytes, big-endian) | header (UTF-8 JSON) | payload.
The header names the format version, the kind of object, the backend, the parameter
fingerprint, the payload length and its SHA-256. All of it is checked *before* a single payload
byte reaches a backend's deserializer: OpenFHE's own can abort the whole process on corrupt
input, so corrupt, truncated, foreign or wrong-version files must never get that far.

The SHA-256 guards against accidents (truncation, bit rot, the wrong file), not against an
adversary: anyone can write a well-formed envelope around crafted bytes. OpenFHE parses such
bytes first in a forked child (:mod:`privlearn.he.isolation`), so a parser crash is a refusal;
bytes that parse can still crash or corrupt the first operation on them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"PLHE"
FORMAT_VERSION = 1
_MAX_HEADER = 1 << 20
# A section name becomes a file name inside the bundle directory: no separators, no dots.
_SECTION_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")


class EnvelopeError(ValueError):
    """A serialized HE object could not be loaded; the message says what is wrong."""


class TruncatedError(EnvelopeError):
    pass


class CorruptError(EnvelopeError):
    pass


class VersionError(EnvelopeError):
    pass


class ForeignParametersError(EnvelopeError):
    pass


class WrongKindError(EnvelopeError):
    pass


@dataclass(frozen=True)
class Envelope:
    kind: str
    backend: str
    params_fingerprint: str
    meta: dict[str, Any]
    payload: bytes


def pack(
    kind: str,
    backend: str,
    params_fingerprint: str,
    payload: bytes,
    meta: dict[str, Any] | None = None,
) -> bytes:
    header = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "backend": backend,
        "params": params_fingerprint,
        "length": len(payload),
        "meta": meta or {},
    }
    header["sha256"] = _digest(header, payload)
    hb = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack(">I", len(hb)) + hb + payload


def unpack(
    data: bytes, *, kind: str, backend: str | None = None, params_fingerprint: str | None = None
) -> Envelope:
    """Verify and open an envelope; raise a specific EnvelopeError on any mismatch."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EnvelopeError(f"expected bytes for a serialized {kind}, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 8:
        raise TruncatedError(f"serialized {kind} is {len(data)} bytes: too short to hold a header")
    if data[:4] != MAGIC:
        raise CorruptError(
            f"not a privlearn HE file (starts {data[:4]!r}, expected {MAGIC!r}); "
            f"was it written by privlearn.he?"
        )
    (hlen,) = struct.unpack(">I", data[4:8])
    if hlen > _MAX_HEADER:
        raise CorruptError(f"header length {hlen} is implausible; the file is corrupt")
    if len(data) < 8 + hlen:
        raise TruncatedError(f"file ends inside its header ({len(data)} of {8 + hlen} bytes)")
    try:
        header = json.loads(data[8 : 8 + hlen].decode())
        version = header["format"]
        got_kind, got_backend = header["kind"], header["backend"]
        fp, length, digest = header["params"], header["length"], header["sha256"]
        meta = header.get("meta", {})
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CorruptError(f"header of serialized {kind} is unreadable: {e}") from None
    for field, value, want in (
        ("length", length, int),
        ("meta", meta, dict),
        ("kind", got_kind, str),
        ("backend", got_backend, str),
        ("params", fp, str),
        ("sha256", digest, str),
    ):
        if type(value) is not want:
            raise CorruptError(f"header of serialized {kind} has a {type(value).__name__} {field}")
    if json.dumps(header, sort_keys=True).encode() != data[8 : 8 + hlen]:
        raise CorruptError(f"header of serialized {kind} was edited (not in its written form)")
    if version != FORMAT_VERSION:
        raise VersionError(
            f"format version {version} is not supported (this privlearn reads version "
            f"{FORMAT_VERSION}); re-create the file with this version"
        )
    if got_kind != kind:
        raise WrongKindError(f"expected a serialized {kind}, got a {got_kind}")
    if backend is not None and got_backend != backend:
        raise ForeignParametersError(
            f"{kind} was written by the {got_backend!r} backend; this context is {backend!r}"
        )
    if params_fingerprint is not None and fp != params_fingerprint:
        raise ForeignParametersError(
            f"{kind} was made under CKKS parameters {fp}, this context uses "
            f"{params_fingerprint}; both sides must use the same preset"
        )
    payload = data[8 + hlen :]
    if len(payload) < length:
        raise TruncatedError(f"{kind} payload is truncated: {len(payload)} of {length} bytes")
    if len(payload) > length:
        raise CorruptError(f"{kind} has {len(payload) - length} unexpected trailing bytes")
    if _digest({k: v for k, v in header.items() if k != "sha256"}, payload) != digest:
        raise CorruptError(f"{kind} fails its SHA-256 check: header or payload bytes were altered")
    return Envelope(got_kind, got_backend, fp, meta, payload)


def _digest(header: dict[str, Any], payload: bytes) -> str:
    """SHA-256 over the header (all fields but the digest itself) and the payload."""
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    h.update(payload)
    return h.hexdigest()


def write_bundle(
    path: str | os.PathLike,
    backend: str,
    params_fingerprint: str,
    sections: dict[str, bytes | Path],
    meta: dict[str, Any],
) -> Path:
    """A public bundle as a directory: one file per section plus ``bundle.plhe``, an envelope
    whose payload indexes the sections with their lengths and SHA-256. Bootstrapping keys at
    N=2^16 run to gigabytes; this layout lets OpenFHE write and read them straight from disk
    instead of holding a second copy in memory. Sections given as Paths already sit in
    ``path`` (written there by the backend)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    index = {}
    for name, blob in sections.items():
        f = path / f"{name}.bin"
        if not isinstance(blob, Path):
            f.write_bytes(blob)
        elif blob.resolve() != f.resolve():
            raise ValueError(f"section {name} must be written to {f}, not {blob}")
        index[name] = {"length": f.stat().st_size, "sha256": _file_sha256(f)}
    envelope = pack(
        "public_bundle",
        backend,
        params_fingerprint,
        json.dumps(index, sort_keys=True).encode(),
        {**meta, "layout": "directory"},
    )
    (path / "bundle.plhe").write_bytes(envelope)
    return path


def open_bundle(source: bytes | str | os.PathLike) -> tuple[Envelope, dict[str, bytes | Path]]:
    """Verify a bundle (bytes, or a directory from :func:`write_bundle`) and return its
    envelope and sections; in a directory, sections are returned as verified file paths."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        env = unpack(source, kind="public_bundle")
        return env, unpack_sections(env.payload)
    path = Path(source)
    try:
        env = unpack(_regular_file(path / "bundle.plhe").read_bytes(), kind="public_bundle")
    except OSError as e:
        raise EnvelopeError(f"cannot read a public bundle at {path}: {e}") from None
    try:
        index = json.loads(env.payload)
    except json.JSONDecodeError as e:
        raise CorruptError(f"bundle index is unreadable: {e}") from None
    if not isinstance(index, dict):
        raise CorruptError("bundle index is not a mapping of section names")
    sections: dict[str, bytes | Path] = {}
    for name, info in index.items():
        # Names are checked before the file system is touched: a hostile index cannot make
        # the reader hash, or reveal the existence of, any file outside the bundle.
        if not _SECTION_NAME.match(name):
            raise CorruptError(f"bundle index names an invalid section {name[:40]!r}")
        length, digest = (
            (info.get("length"), info.get("sha256")) if isinstance(info, dict) else (None, None)
        )
        if not (type(length) is int and length >= 0 and isinstance(digest, str)):
            raise CorruptError(f"bundle index entry for section {name} is malformed")
        f = path / f"{name}.bin"
        try:
            size = _regular_file(f).stat().st_size
        except FileNotFoundError:
            size = -1
        if size < length:
            raise TruncatedError(f"bundle section {f} has {size} of {length} bytes")
        if size > length or _file_sha256(f) != digest:
            raise CorruptError(f"bundle section {f} fails its length or SHA-256 check")
        sections[name] = f
    return env, sections


def _regular_file(path: Path) -> Path:
    """``path`` if it is a regular file, not a link: reading a FIFO or a device would hang."""
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise CorruptError(f"{path} is not a regular file")
    return path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def pack_sections(sections: dict[str, bytes]) -> bytes:
    """Concatenate named byte strings (name length, name, payload length, payload)."""
    out = bytearray()
    for name, blob in sections.items():
        nb = name.encode()
        out += struct.pack(">H", len(nb)) + nb + struct.pack(">Q", len(blob)) + blob
    return bytes(out)


def unpack_sections(data: bytes) -> dict[str, bytes]:
    sections, pos = {}, 0
    try:
        while pos < len(data):
            (nlen,) = struct.unpack_from(">H", data, pos)
            name = data[pos + 2 : pos + 2 + nlen].decode()
            pos += 2 + nlen
            (blen,) = struct.unpack_from(">Q", data, pos)
            pos += 8
            if pos + blen > len(data):
                raise CorruptError(f"section {name!r} runs past the end of the bundle")
            sections[name] = data[pos : pos + blen]
            pos += blen
    except (struct.error, UnicodeDecodeError) as e:
        raise CorruptError(f"bundle sections are unreadable: {e}") from None
    return sections


def write_private(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` (secret-key material) to a new file only its owner can read (mode 0600,
    set when the file is created, so it is never readable by others, not even briefly). An
    existing file is never overwritten: a key is not replaced by accident."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def write_atomic(path: str | os.PathLike, data: bytes, *, private: bool = False) -> Path:
    """Replace ``path`` with ``data`` so a crash leaves the old file or the new one, never a
    torn one: written beside it, flushed to disk, then renamed over it. ``private``: the file
    is created mode 0600 (:func:`write_private`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # left by a crash mid-write
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_private(path: str | os.PathLike) -> bytes:
    """The bytes of a file :func:`write_private` wrote; refused if others may read or write it
    (as ssh refuses a private key), which means it may have been read or swapped."""
    path = Path(path)
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise CorruptError(f"{path} is not a regular file")
    if mode & 0o077:
        raise PermissionError(
            f"{path} holds a secret key but its mode is {stat.S_IMODE(mode):04o}: others may "
            f"read or change it. Restrict it with `chmod 600 {path}` if you trust its contents"
        )
    return path.read_bytes()
