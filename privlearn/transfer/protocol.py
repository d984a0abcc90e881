"""The one narrow interface between client and server: messages of bytes.

Everything the two roles exchange is a :class:`Message`: a kind, small public metadata (shapes,
epoch numbers: never data) and a tuple of byte strings (serialized ciphertexts or a public
bundle). A message travels as one enveloped byte string (``privlearn.he.io``), checked on
arrival, so the same code runs in one process (two threads), across processes, or over a
network. Between the two roles every frame is authenticated (:mod:`privlearn.he.channel`).
Endpoints can record a transcript of every byte that crossed, which the tests search for
secret-key bytes.
"""

from __future__ import annotations

import json
import multiprocessing
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from privlearn.he import io
from privlearn.he.channel import Channel

KINDS = {
    "setup": "client -> server: public bundle (or a bundle directory's path), the training "
    "spec and the encrypted initial weights",
    "resume": "client -> server: continue a checkpointed session from the server's stored "
    "state of the named generation (meta: the bundle's name, the spec, the key id)",
    "upload": "client -> server: one encrypted batch (features, labels) of a split",
    "train_step": "client -> server: one step on the named training batch",
    "validate": "client -> server: forward pass over the validation batches",
    "squared_errors": "server -> client: encrypted (P − Y)² summed over validation batches",
    "refresh": "server -> client: ciphertexts to decrypt and encrypt afresh at a level",
    "refreshed": "client -> server: the fresh ciphertexts, same order",
    "predict": "client -> server: encrypted features to score",
    "predictions": "server -> client: encrypted logits (times the weight scale) or probabilities",
    "get_model": "client -> server: ask for the retained encrypted weight snapshots",
    "model": "server -> client: encrypted weights, one snapshot per retained epoch",
    "set_model": "client -> server: the chosen weights, encrypted afresh, to serve",
    "ack": "either way: done, nothing to return",
    "error": "either way: the request was refused (meta: why); the refusing side lives on",
}
# What the server learns beyond ciphertexts: message kinds, sizes, timing and metadata. The
# early-stopping decision reaches it as one bit per epoch: whether another "train_step" comes.


class ProtocolError(ValueError):
    """A message is malformed or of a kind the receiver does not take."""


class SessionAborted(ProtocolError):
    """Raised by a handler where any answer, a refusal included, would tell the other side
    something it must not learn: the link ends instead (the caller's request raises this)."""


@dataclass(frozen=True)
class Message:
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    blobs: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ProtocolError(f"unknown message kind {self.kind!r}; known: {sorted(KINDS)}")
        json.dumps(self.meta)  # metadata must be plain JSON (no arrays, no objects)

    def to_bytes(self) -> bytes:
        sections = {f"{i:06d}": b for i, b in enumerate(self.blobs)}
        return io.pack("message", "protocol", self.kind, io.pack_sections(sections), self.meta)

    @staticmethod
    def from_bytes(data: bytes) -> Message:
        env = io.unpack(data, kind="message", backend="protocol")
        blobs = io.unpack_sections(env.payload)
        return Message(env.params_fingerprint, env.meta, tuple(blobs[k] for k in sorted(blobs)))

    def expect(self, *kinds: str) -> Message:
        if self.kind not in kinds:
            raise ProtocolError(f"expected a {' or '.join(kinds)} message, got {self.kind!r}")
        return self


Handler = Callable[[Message], Message]


def link_token() -> bytes:
    """A fresh secret both ends of one link are given when the session starts them."""
    return secrets.token_bytes(32)


def _reply(data: bytes) -> Message:
    return _checked_reply(Message.from_bytes(data))


def _checked_reply(msg: Message) -> Message:
    """A reply, or the other side's refusal raised here as a ProtocolError."""
    if msg.kind == "error":
        raise ProtocolError(f"the other side refused the request: {msg.meta.get('error')}")
    return msg


class Endpoint:
    """One side of a two-way link. :meth:`request` sends a message and waits for the reply,
    answering with ``handler`` any request that arrives from the other side meanwhile (the
    server asks for refreshes while the client waits for an epoch to finish)."""

    def __init__(self, handler: Handler | None = None, transcript: list[bytes] | None = None):
        self.handler = handler
        self.transcript = transcript
        self.bytes_sent = self.bytes_received = 0
        self.bytes_by_kind: Counter[str] = Counter()  # both ways, by message kind

    def _count(self, msg: Message, size: int) -> None:
        self.bytes_by_kind[msg.kind] += size

    def _record(self, *blobs: bytes) -> None:
        if self.transcript is not None:
            self.transcript += blobs

    def handle(self, data: bytes) -> bytes:
        """Answer one request; traffic both ways is counted as this side's."""
        if self.handler is None:
            raise ProtocolError("this endpoint answers no requests")
        try:
            request = Message.from_bytes(data)
            self._count(request, len(data))
            answer = self.handler(request)
        except SessionAborted:
            raise
        except Exception as e:  # noqa: BLE001 - one bad request must not end this side
            answer = Message("error", {"error": f"{type(e).__name__}: {e}"[:2000]})
        reply = answer.to_bytes()
        self._count(answer, len(reply))
        self.bytes_received += len(data)
        self.bytes_sent += len(reply)
        self._record(data, reply)
        return reply


class PipeEndpoint(Endpoint):
    """One side of a duplex ``multiprocessing`` pipe, every frame authenticated
    (:mod:`privlearn.he.channel`; the client is the link's ``initiator``): frames are
    b"Q"/b"A" + message bytes, and b"X" ends the other side's :meth:`serve_forever`."""

    def __init__(
        self,
        conn: Connection,
        handler: Handler | None = None,
        *,
        initiator: bool,
        token: bytes,
        peer_alive: Callable[[], bool] | None = None,
        transcript: list[bytes] | None = None,
    ) -> None:
        super().__init__(handler, transcript)
        self.conn = conn
        self.peer_alive = peer_alive
        self.channel = Channel(conn, initiator=initiator, token=token, wait=self._wait)

    def _wait(self) -> None:
        """Return when a frame is there; raise instead of waiting forever if the peer died."""
        while self.peer_alive is not None and not self.conn.poll(1.0):
            if not self.peer_alive():
                raise ProtocolError("the other side's process exited before answering")

    def request(self, msg: Message) -> Message:
        out = msg.to_bytes()
        self.channel.send(b"Q" + out)
        self.bytes_sent += len(out)
        self._count(msg, len(out))
        while True:
            frame = self.channel.recv()
            if frame[:1] == b"A":
                self.bytes_received += len(frame) - 1
                self._record(out, frame[1:])
                reply = Message.from_bytes(frame[1:])
                self._count(reply, len(frame) - 1)
                return _checked_reply(reply)
            self._answer(frame)

    def serve_forever(self) -> None:
        while (frame := self.channel.recv()) != b"X":
            self._answer(frame)

    def close(self) -> None:
        self.channel.send(b"X")

    def send_final(self, msg: Message) -> None:
        """After :meth:`serve_forever` returned: one last message (a server's final report)."""
        self.channel.send(b"A" + msg.to_bytes())

    def recv_final(self) -> Message:
        """After :meth:`close`: the other side's last message."""
        return _reply(self.channel.recv()[1:])

    def _answer(self, frame: bytes) -> None:
        if frame[:1] != b"Q":
            raise ProtocolError(f"unexpected frame type {frame[:1]!r}")
        self.channel.send(b"A" + self.handle(frame[1:]))


def thread_pair(
    client: Handler, server: Handler, *, record: bool = False
) -> tuple[PipeEndpoint, PipeEndpoint, threading.Thread]:
    """Both roles in one process, the server answering in a thread of its own: they meet only
    through a pipe of bytes, so nothing reachable from the server leads back to the client
    (an in-process link holding the other side let the server reach the secret key by
    attributes). Returns the client's end, the server's end and the (started) thread."""
    a, b = multiprocessing.Pipe()
    token = link_token()
    server_end = PipeEndpoint(b, server, initiator=False, token=token)
    thread = threading.Thread(target=server_end.serve_forever, name="privlearn-server", daemon=True)
    client_end = PipeEndpoint(
        a,
        client,
        initiator=True,
        token=token,
        peer_alive=thread.is_alive,
        transcript=[] if record else None,
    )
    thread.start()
    return client_end, server_end, thread
