"""Authenticated frames between a client and its server: nobody else can send them a message.

The envelope's SHA-256 catches accidents, not an adversary (anyone can re-sign bytes), and
OpenFHE's readers must not see bytes from just anyone. So the two sides agree a session key
when the link opens — X25519 key agreement, the shared secret and a link token (a random
value the session hands both sides when it starts them) through HKDF-SHA256 — and every frame
carries a sequence number and an HMAC-SHA256 under that key. A frame that fails the check, is
replayed or comes out of order is refused before any parser sees it.

Without the token the key agreement is unauthenticated: an active attacker present from the
first frame could sit in the middle. The token is what binds the handshake to the two
processes the session started; a network service must bind it to something the user holds
(an access token, TLS).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_HELLO = b"privlearn-link-v1"
_SEQ = struct.Struct(">Q")
_TAG = 32


class ChannelError(ValueError):
    """A frame failed authentication, or the link's handshake did."""


class Channel:
    """One side of an authenticated link over a ``multiprocessing`` connection. ``initiator``
    (the client) speaks first in the handshake; both sides must hold the same ``token``."""

    def __init__(
        self,
        conn: Connection,
        *,
        initiator: bool,
        token: bytes,
        wait: Callable[[], None] | None = None,
    ) -> None:
        """``wait`` blocks until a frame can be read, or raises (e.g. if the peer died)."""
        self.conn, self.initiator, self.token, self.wait = conn, initiator, token, wait
        self._key: bytes | None = None
        self._sent = self._received = 0

    def _handshake(self) -> None:
        mine = X25519PrivateKey.generate()
        pub = mine.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        if self.initiator:
            self.conn.send_bytes(_HELLO + pub)
            theirs = self._read()
        else:
            theirs = self._read()
            self.conn.send_bytes(_HELLO + pub)
        if len(theirs) != len(_HELLO) + 32 or not theirs.startswith(_HELLO):
            raise ChannelError("the other side did not open the link with a privlearn handshake")
        peer = theirs[len(_HELLO) :]
        try:
            shared = mine.exchange(X25519PublicKey.from_public_bytes(peer))
        except ValueError as e:  # an all-zero (small-order) point
            raise ChannelError(f"the other side's handshake key is invalid: {e}") from None
        first, second = (pub, peer) if self.initiator else (peer, pub)
        self._key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=self.token, info=_HELLO + first + second
        ).derive(shared)

    def _mac(self, sender_is_initiator: bool, seq: int, body: bytes) -> bytes:
        label = b"C" if sender_is_initiator else b"S"
        return hmac.new(self._key, label + _SEQ.pack(seq) + body, hashlib.sha256).digest()

    def send(self, body: bytes) -> None:
        if self._key is None:
            self._handshake()
        seq = self._sent
        self._sent += 1
        self.conn.send_bytes(_SEQ.pack(seq) + body + self._mac(self.initiator, seq, body))

    def recv(self) -> bytes:
        if self._key is None:
            self._handshake()
        frame = self._read()
        if len(frame) < _SEQ.size + _TAG:
            raise ChannelError(f"a {len(frame)}-byte frame is too short to be authenticated")
        (seq,), body, tag = _SEQ.unpack(frame[: _SEQ.size]), frame[_SEQ.size : -_TAG], frame[-_TAG:]
        if not hmac.compare_digest(tag, self._mac(not self.initiator, seq, body)):
            raise ChannelError("a frame failed authentication (not from this link's other side)")
        if seq != self._received:
            raise ChannelError(f"frame {seq} arrived where frame {self._received} was due")
        self._received += 1
        return body

    def _read(self) -> bytes:
        if self.wait is not None:
            self.wait()
        return self.conn.recv_bytes()
