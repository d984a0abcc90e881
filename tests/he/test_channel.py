"""Frames between the roles are authenticated: an outsider cannot send either side a message."""

from __future__ import annotations

import multiprocessing as mp
import threading

import pytest

from privlearn.he.channel import Channel, ChannelError
from privlearn.transfer.protocol import Message, PipeEndpoint


def _pair(token_a=b"k" * 32, token_b=b"k" * 32):
    a, b = mp.Pipe()
    return Channel(a, initiator=True, token=token_a), Channel(b, initiator=False, token=token_b), a


def _exchange(client: Channel, server: Channel, body: bytes) -> bytes:
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("got", server.recv()))
    t.start()
    client.send(body)
    t.join(10)
    return out["got"]


def test_frames_travel_and_a_forged_or_replayed_one_is_refused():
    client, server, raw = _pair()
    assert _exchange(client, server, b"first") == b"first"
    # an outsider writes into the link: well-formed length, no key
    raw.send_bytes(b"\x00" * 8 + Message("train_step", {"batch": 0}).to_bytes() + b"\x00" * 32)
    with pytest.raises(ChannelError, match="failed authentication"):
        server.recv()


def test_a_replayed_frame_is_refused():
    client, server, raw = _pair()
    recorded = []
    send = client.conn.send_bytes
    client.conn.send_bytes = lambda b: (recorded.append(b), send(b))
    assert _exchange(client, server, b"pay me") == b"pay me"
    raw.send_bytes(recorded[-1])  # the same authentic frame again
    with pytest.raises(ChannelError, match="arrived where frame 1 was due"):
        server.recv()


def test_sides_with_different_tokens_cannot_talk():
    client, server, _ = _pair(token_b=b"x" * 32)
    errors = []
    t = threading.Thread(target=lambda: _catch(server.recv, errors))
    t.start()
    client.send(b"hello")
    t.join(10)
    assert isinstance(errors[0], ChannelError) and "failed authentication" in str(errors[0])


def test_a_forged_request_never_reaches_the_servers_handler():
    seen = []
    a, b = mp.Pipe()
    server = PipeEndpoint(
        b, lambda m: seen.append(m) or Message("ack"), initiator=False, token=b"s"
    )
    errors = []
    thread = threading.Thread(target=lambda: _catch(server.serve_forever, errors))
    thread.start()
    attacker = Channel(a, initiator=True, token=b"guessed")  # same wire, not the session's token
    attacker.send(b"Q" + Message("get_model").to_bytes())
    thread.join(10)
    assert seen == [] and isinstance(errors[0], ChannelError)


def _catch(fn, errors):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        errors.append(e)
