from __future__ import annotations

import multiprocessing as mp

import pytest

from privlearn.he import io
from privlearn.transfer.protocol import (
    Message,
    PipeEndpoint,
    ProtocolError,
    thread_pair,
)


def test_round_trip_and_validation():
    m = Message("refresh", {"level": 3}, (b"a", b"", b"xyz"))
    assert Message.from_bytes(m.to_bytes()) == m
    with pytest.raises(ProtocolError, match="unknown message kind"):
        Message("exfiltrate")
    with pytest.raises(TypeError):
        Message("ack", {"array": object()})
    with pytest.raises(ProtocolError, match="expected a model"):
        m.expect("model")


def test_tampered_messages_are_refused():
    data = bytearray(Message("ack", {"x": 1}, (b"payload",)).to_bytes())
    data[-3] ^= 1
    with pytest.raises(io.EnvelopeError):
        Message.from_bytes(bytes(data))


def test_thread_pair_nests_requests_and_records_everything():
    calls = []

    def server(msg):
        calls.append(msg.kind)
        reply = server_end.request(Message("refresh", {}, msg.blobs))  # ask the client back
        return Message("ack", {"got": reply.kind})

    client_end, server_end, thread = thread_pair(
        lambda m: Message("refreshed", {}, m.blobs), server, record=True
    )
    assert client_end.request(Message("train_step", {"batch": 0})).meta == {"got": "refreshed"}
    assert calls == ["train_step"]
    assert len(client_end.transcript) == 4  # two requests, two replies
    assert client_end.bytes_sent > 0 and client_end.bytes_received > 0
    client_end.close()
    thread.join(10)
    assert not thread.is_alive()


def _dies(conn):
    raise SystemExit(3)


def test_a_dead_peer_is_reported_not_waited_for():
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_dies, args=(child,))
    proc.start()
    end = PipeEndpoint(parent, initiator=True, token=b"t", peer_alive=proc.is_alive)
    with pytest.raises(ProtocolError, match="exited"):
        end.request(Message("validate"))
    proc.join()
