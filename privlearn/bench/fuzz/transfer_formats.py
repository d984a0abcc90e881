"""The transfer-learning messages: requests the server takes, replies the client reads.

Both sides come from one real set-up on a tiny task (2 classes, 5 features, one training
and one validation batch, toy-n12). A message is an envelope too (:mod:`privlearn.he.io`), so
mutations are raw, or re-signed: the metadata, the header, the section framing, one
ciphertext inside (itself raw or re-signed), or the list of ciphertexts (dropped, repeated,
swapped, another client's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from privlearn.bench.fuzz.he_formats import client, mutate_envelope, sign, split_envelope
from privlearn.bench.fuzz.mutate import mutate_bytes, mutate_tree
from privlearn.bench.fuzz.runner import BrokenAfter, Format, differs, vector


class _Direct:
    """The server's link to the client for refresh requests, in one process: bytes both ways
    through the client's Endpoint, as over a pipe (no thread: children are forked)."""

    def __init__(self, handler) -> None:
        from privlearn.transfer.protocol import Endpoint

        self.endpoint = Endpoint(handler)

    def request(self, msg):
        from privlearn.transfer.protocol import _reply

        return _reply(self.endpoint.handle(msg.to_bytes()))


def _problem(n: int, f: int = 5, c: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, f))
    y = rng.integers(0, c, n)
    x = centers[y] + 0.8 * rng.normal(size=(n, f))
    x = (x - x.mean(0)) / x.std(0)
    return x / np.linalg.norm(x, axis=1).max(), y


class _Session(Format):
    """A client and a server after setup and uploads of one training and one validation
    batch; ``self.msgs`` holds one valid message of each kind."""

    def setup(self, workdir: Path) -> None:
        from privlearn.bench.fuzz import PRESET
        from privlearn.he import ClientContext
        from privlearn.transfer.protocol import Message
        from privlearn.transfer.roles import Client, Server
        from privlearn.transfer.train import TrainSpec

        self.spec = TrainSpec(
            classes=2, features=6, batch_size=32, lr=2.0, epochs=2, logit_range=16
        )
        self.ctx = ClientContext.create(PRESET, "openfhe", insecure_for_testing=True)
        self.client = Client(self.ctx, self.spec, seed=0)
        self.server = Server(workdir / "server", bundle_root=workdir, insecure_for_testing=True)
        self.server.endpoint = _Direct(self.client.handle)
        self.level = self.spec.data_level(self.ctx.slots, spare=0)
        self.server.handle(self.client.setup(workdir / "bundle"))
        self.x, self.y = _problem(32, seed=0)
        self.xv, self.yv = _problem(20, seed=1)
        for m in self.client.batches(self.x, self.y, "train", self.level) + self.client.batches(
            self.xv, self.yv, "val", self.level
        ):
            self.server.handle(m)
        w = np.random.default_rng(2).normal(0, 0.3, (2, 6))
        self.probe = self.client.encrypt_features(self.xv[:8], self.level)[0]
        self.msgs = {
            "upload": self.client.batches(self.x, self.y, "train", self.level)[0],
            "train_step": Message("train_step", {"batch": 0, "epoch": 0}),
            "validate": Message("validate"),
            "predict": self.probe,
            "set_model": self.client.set_model(w),
            "get_model": Message("get_model"),
        }
        other, _ = client(())
        self.foreign = other.serialize(other.encrypt(np.zeros(4), level=self.level))

    def mutate_message(self, rng, data: bytes) -> tuple[str, bytes]:
        from privlearn.he import io

        header, payload = split_envelope(data)
        u = rng.random()
        if u < 0.15:
            desc, out = mutate_bytes(rng, data)
            return f"raw: {desc}", out
        if u < 0.45:
            desc, meta = mutate_tree(rng, {"meta": header["meta"]})
            return f"re-signed {desc}", sign({**header, "meta": meta.get("meta", meta)}, payload)
        if u < 0.55:
            desc, h = mutate_tree(rng, header, protect=("sha256", "meta"))
            return f"re-signed header: {desc}", sign(h, payload, fix_length=False)
        if u < 0.62:
            desc, p = mutate_bytes(rng, payload)
            return f"re-signed framing: {desc}", sign(header, p)
        blobs = io.unpack_sections(payload)
        names = sorted(blobs)
        if not names:
            desc, meta = mutate_tree(rng, {"meta": header["meta"]})
            return f"re-signed {desc}", sign({**header, "meta": meta.get("meta", meta)}, payload)
        name = names[int(rng.integers(0, len(names)))]
        if u < 0.9:
            desc, blobs[name] = mutate_envelope(rng, blobs[name])
            desc = f"ciphertext {int(name)}: {desc}"
        else:
            op = str(rng.choice(["drop", "repeat", "swap", "foreign"]))
            if op == "drop":
                del blobs[name]
            elif op == "repeat":
                blobs[f"{len(names):06d}"] = blobs[name]
            elif op == "swap":
                blobs[name], blobs[names[0]] = blobs[names[0]], blobs[name]
            else:
                blobs[name] = self.foreign
            desc = f"ciphertexts: {op} {int(name)}"
        return desc, sign(header, io.pack_sections(blobs))

    def view(self, msg) -> dict:
        """A message as the client sees it: kind, metadata, every ciphertext decrypted."""
        return {
            "kind": msg.kind,
            "meta": msg.meta,
            "blobs": [vector(self.ctx.decrypt(self.ctx.deserialize(b))) for b in msg.blobs],
        }


class ServerRequest(_Session):
    """`Server.handle(Message.from_bytes(bytes))` for each request kind. Afterwards, whatever
    happened, the server must answer a valid `predict` as before (refused: as before the
    request; accepted: as after the unmutated request), or the case is unclean (a refusal
    that broke the server) or silent wrong (an acceptance that did)."""

    name = "server-request"
    targets = ("upload", "train_step", "validate", "predict", "set_model", "get_model")

    def setup(self, workdir: Path) -> None:
        super().setup(workdir)
        self.before = self.follow_up()

    def follow_up(self) -> Any:
        reply = self.server.handle(self.probe)
        return vector(self.client.predictions(self.probe, reply).reshape(-1))

    def base(self, target):
        return self.msgs[target].to_bytes()

    def mutate(self, rng, target, casedir):
        return self.mutate_message(rng, self.base(target))

    def observe(self, target, data, casedir):
        from privlearn.transfer.protocol import Message

        try:
            reply = self.server.handle(Message.from_bytes(data))
        except Exception as e:
            try:
                after = self.follow_up()
                why = differs(after, self.before)
            except Exception as f:  # noqa: BLE001 - reported as the finding
                why = f"{type(f).__name__}: {f}"
            if why:
                raise BrokenAfter(
                    f"after refusing ({type(e).__name__}: {e}) the server answers a valid "
                    f"predict wrongly: {why}"
                ) from e
            raise
        return {"reply": self.view(reply), "after": self.follow_up()}


class ClientReply(_Session):
    """The secret-key holder reading what a hostile server sends: `Client.handle` on a
    refresh request (it decrypts and re-encrypts), and `Client.validation`, `predictions`
    and `weights` on the replies of validate, predict and get_model."""

    name = "client-reply"
    targets = ("refresh", "squared_errors", "predictions", "model")

    def setup(self, workdir: Path) -> None:
        from privlearn.transfer.protocol import Message

        super().setup(workdir)
        ev = self.server.ev
        cts = [self.ctx.deserialize(b) for b in self.probe.blobs]
        self.replies = {
            "refresh": Message(
                "refresh", {"level": self.level}, tuple(ev.serialize(ev.add(c, 0.0)) for c in cts)
            ),
            "squared_errors": self.server.handle(self.msgs["validate"]),
            "predictions": self.server.handle(self.probe),
            "model": self.server.handle(self.msgs["get_model"]),
        }
        self.epoch = self.replies["model"].meta["snapshots"][-1]["epoch"]

    def base(self, target):
        return self.replies[target].to_bytes()

    def mutate(self, rng, target, casedir):
        return self.mutate_message(rng, self.base(target))

    def observe(self, target, data, casedir):
        from privlearn.transfer.protocol import Message

        msg = Message.from_bytes(data)
        if target == "refresh":
            out = Message.from_bytes(self.client.handle(msg).to_bytes())
            return self.view(out)
        if target == "squared_errors":
            v = self.client.validation(msg, self.yv)
            return {k: v[k] for k in ("val_brier", "val_accuracy", "flooding_sigma")}
        if target == "predictions":
            return vector(self.client.predictions(self.probe, msg).reshape(-1))
        return vector(self.client.weights(msg, self.epoch).reshape(-1))
