"""The HE layer's formats: ciphertexts, and public bundles as bytes and as directories.

Every one travels in an envelope (:mod:`privlearn.he.io`) whose SHA-256 anyone can
recompute, so each format is mutated twice over: raw (the checksum must catch it) and
re-signed (the payload or header changed, then the envelope rebuilt with a valid digest, as a
hostile peer would), which is what reaches OpenFHE. Results are decrypted by the client and
compared with the unmutated input's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np

from privlearn.bench.fuzz.mutate import mutate_bytes, mutate_tree
from privlearn.bench.fuzz.runner import Format, vector

LEVEL = 2  # operands low in the chain: small ciphertexts, and a multiplication still fits
ROTATION = 1


# -- envelopes ----------------------------------------------------------------------------------
def split_envelope(data: bytes) -> tuple[dict, bytes]:
    (hlen,) = struct.unpack(">I", data[4:8])
    return json.loads(data[8 : 8 + hlen]), data[8 + hlen :]


def sign(header: dict, payload: bytes, *, fix_length: bool = True) -> bytes:
    """An envelope around ``header`` (any values) and ``payload`` with a valid SHA-256."""
    from privlearn.he import io

    h = {k: v for k, v in header.items() if k != "sha256"}
    if fix_length:
        h["length"] = len(payload)
    digest = hashlib.sha256(json.dumps(h, sort_keys=True).encode())
    digest.update(payload)
    h["sha256"] = digest.hexdigest()
    hb = json.dumps(h, sort_keys=True).encode()
    return io.MAGIC + struct.pack(">I", len(hb)) + hb + payload


def resign_payload(rng, data: bytes) -> tuple[str, bytes]:
    header, payload = split_envelope(data)
    desc, payload = mutate_bytes(rng, payload)
    return f"re-signed payload: {desc}", sign(header, payload)


def resign_header(rng, data: bytes) -> tuple[str, bytes]:
    header, payload = split_envelope(data)
    desc, header = mutate_tree(rng, header, protect=("sha256",))
    if not isinstance(header, dict):
        header = {"header": header}
    return f"re-signed header: {desc}", sign(header, payload, fix_length=False)


def mutate_envelope(rng, data: bytes, raw: float = 0.2, payload: float = 0.5) -> tuple[str, bytes]:
    """Raw bytes, a re-signed payload or a re-signed header, in these shares."""
    u = rng.random()
    if u < raw:
        desc, out = mutate_bytes(rng, data)
        return f"raw: {desc}", out
    if u < raw + payload:
        return resign_payload(rng, data)
    return resign_header(rng, data)


# -- OpenFHE set-up shared by the formats -------------------------------------------------------
def client(rotations=(ROTATION,)) -> tuple[Any, bytes]:
    """A client context and its public bundle (bytes)."""
    from privlearn.bench.fuzz import PRESET
    from privlearn.he import ClientContext

    ctx = ClientContext.create(PRESET, "openfhe", insecure_for_testing=True)
    return ctx, ctx.public_bundle(list(rotations))


def values(slots: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, slots)


def operate(ev, ctx, ct) -> dict:
    """add, mul and rotate on the server, each result decrypted by the client."""
    results = {"add": ev.add(ct, ct), "mul": ev.mul(ct, ct), "rotate": ev.rotate(ct, ROTATION)}
    return {k: vector(ctx.decrypt(ctx.deserialize(ev.serialize(r)))) for k, r in results.items()}


class CiphertextFormat(Format):
    """A ciphertext read by the server (then add, mul, rotate) or by the client (decrypt).
    Also: a ciphertext of another client under the same preset, whole."""

    name = "ciphertext"
    targets = ("server", "client")

    def setup(self, workdir: Path) -> None:
        from privlearn.he import Evaluator

        self.ctx, bundle = client()
        self.ev = Evaluator.from_bundle(bundle, insecure_for_testing=True)
        v = values(self.ctx.slots)
        self.data = self.ctx.serialize(self.ctx.encrypt(v, level=LEVEL))
        other, _ = client(())
        self.foreign = other.serialize(other.encrypt(v, level=LEVEL))

    def base(self, target):
        return self.data

    def mutate(self, rng, target, casedir):
        if rng.random() < 0.03:
            return "another client's ciphertext (same preset)", self.foreign
        return mutate_envelope(rng, self.data)

    def observe(self, target, data, casedir):
        if target == "client":
            return {"decrypt": vector(self.ctx.decrypt(self.ctx.deserialize(data)))}
        return operate(self.ev, self.ctx, self.ev.deserialize(data))


class _Bundle(Format):
    """What both bundle formats share: a client, its ciphertext, and the server's work on a
    freshly loaded Evaluator (mul needs the relinearisation key, rotate the rotation key)."""

    targets = ("Evaluator.from_bundle",)

    def setup(self, workdir: Path) -> None:
        self.ctx, self.bundle = client()
        self.ct = self.ctx.serialize(self.ctx.encrypt(values(self.ctx.slots), level=LEVEL))
        self.foreign_ctx, self.foreign = client()

    def evaluate(self, source) -> dict:
        from privlearn.he import Evaluator

        ev = Evaluator.from_bundle(source, insecure_for_testing=True)
        return operate(ev, self.ctx, ev.deserialize(self.ct))


class BundleBytes(_Bundle):
    """`Evaluator.from_bundle(bytes)`. Mutations: the envelope raw, one section's bytes
    re-signed, the header re-signed, or sections dropped, swapped, or taken from another
    client's bundle."""

    name = "bundle-bytes"

    def base(self, target):
        return self.bundle

    def mutate(self, rng, target, casedir):
        from privlearn.he import io

        u = rng.random()
        if u < 0.15:
            desc, out = mutate_bytes(rng, self.bundle)
            return f"raw: {desc}", out
        header, payload = split_envelope(self.bundle)
        if u < 0.35:
            return resign_header(rng, self.bundle)
        sections = io.unpack_sections(payload)
        names = sorted(sections)
        name = names[int(rng.integers(0, len(names)))]
        if u < 0.88:
            desc, sections[name] = mutate_bytes(rng, sections[name])
            desc = f"re-signed section {name}: {desc}"
        else:
            op = str(rng.choice(["drop", "foreign", "swap", "rename"]))
            if op == "drop":
                del sections[name]
            elif op == "foreign":
                other = io.unpack_sections(split_envelope(self.foreign)[1])
                sections[name] = other[name]
            elif op == "swap":
                second = names[(names.index(name) + 1) % len(names)]
                sections[name], sections[second] = sections[second], sections[name]
            else:
                sections[name + "_x"] = sections.pop(name)
            desc = f"re-signed sections: {op} {name}"
        return desc, sign(header, io.pack_sections(sections))

    def observe(self, target, data, casedir):
        return self.evaluate(data)


class BundleDir(_Bundle):
    """`Evaluator.from_bundle(directory)`. Mutations: a file's bytes raw, a section re-signed
    (its index entry and the envelope updated), the index or header re-signed, and the file
    system: a section or `bundle.plhe` replaced by a symlink, a FIFO, a directory, a hard
    link, or removed."""

    name = "bundle-dir"

    def setup(self, workdir: Path) -> None:
        super().setup(workdir)
        self.dir = self.ctx.public_bundle([ROTATION], path=workdir / "bundle")
        self.files = sorted(p.name for p in self.dir.iterdir())
        self.outside = workdir / "outside.bin"  # a file beside, not inside, the bundle
        self.outside.write_bytes(b"not a section")

    def base(self, target):
        return self.dir

    def mutate(self, rng, target, casedir):
        d = casedir / "bundle"
        shutil.copytree(self.dir, d)
        envelope = d / "bundle.plhe"
        header, payload = split_envelope(envelope.read_bytes())
        index = json.loads(payload)
        name = self.files[int(rng.integers(0, len(self.files)))]
        f = d / name
        u = rng.random()
        if u < 0.2:
            desc, blob = mutate_bytes(rng, f.read_bytes())
            f.write_bytes(blob)
            return f"raw {name}: {desc}", d
        if u < 0.5 and name != "bundle.plhe":
            desc, blob = mutate_bytes(rng, f.read_bytes())
            f.write_bytes(blob)
            index[name[: -len(".bin")]] = {
                "length": len(blob),
                "sha256": hashlib.sha256(blob).hexdigest(),
            }
            envelope.write_bytes(sign(header, json.dumps(index, sort_keys=True).encode()))
            return f"re-signed {name}: {desc}", d
        if u < 0.7:
            desc, tree = _index_mutation(rng, index)
            envelope.write_bytes(sign(header, json.dumps(tree, sort_keys=True).encode()))
            return f"re-signed index: {desc}", d
        if u < 0.8:
            desc, blob = resign_header(rng, envelope.read_bytes())
            envelope.write_bytes(blob)
            return desc, d
        return self._file_system(rng, f, name), d

    def _file_system(self, rng, f: Path, name: str) -> str:
        op = str(
            rng.choice(
                [
                    "symlink-same",
                    "symlink-outside",
                    "symlink-dev-zero",
                    "fifo",
                    "directory",
                    "hardlink",
                    "remove",
                ]
            )
        )
        keep = f.with_name(name + ".orig")
        f.rename(keep)
        if op == "symlink-same":
            f.symlink_to(keep)
        elif op == "symlink-outside":
            f.symlink_to(self.outside)
        elif op == "symlink-dev-zero":
            f.symlink_to("/dev/zero")
        elif op == "fifo":
            os.mkfifo(f)
        elif op == "directory":
            f.mkdir()
        elif op == "hardlink":
            os.link(keep, f)
        return f"file system: {name} -> {op}"

    def observe(self, target, data, casedir):
        return self.evaluate(data)


TRAVERSALS = ("../../../../etc/passwd", "/etc/passwd", "../outside", "context.bin/..", "a/b", "")


def _index_mutation(rng, index: dict) -> tuple[str, Any]:
    """A tree mutation of the section index, or a section renamed to a path outside it."""
    if rng.random() < 0.4:
        tree = dict(index)
        old = sorted(tree)[int(rng.integers(0, len(tree)))]
        new = TRAVERSALS[int(rng.integers(0, len(TRAVERSALS)))]
        tree[new] = tree.pop(old)
        return f"section {old} renamed {new!r}", tree
    return mutate_tree(rng, index)
