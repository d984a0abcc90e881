"""Untrusted bytes are parsed in a forked child first: a crash or a hang there is a refusal."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from privlearn.he import ClientContext, io, isolation


def test_a_crash_in_the_child_is_a_refusal_and_the_caller_lives():
    with pytest.raises(io.CorruptError, match="crashed.*SIGSEGV"):
        isolation.probe(lambda: os.kill(os.getpid(), signal.SIGSEGV), "crafted bytes")


def test_a_hang_in_the_child_is_stopped():
    with pytest.raises(io.CorruptError, match="hung"):
        isolation.probe(lambda: time.sleep(30), "crafted bytes", timeout=0.5)


def test_an_exception_in_the_child_is_reported_and_success_is_none():
    assert isolation.probe(lambda: 1 / 0, "crafted bytes") == "division by zero"
    assert isolation.probe(lambda: None, "bytes") is None


@pytest.mark.openfhe
def test_resigned_hostile_ciphertexts_never_take_the_client_down():
    """What a hostile server can send: mutated payloads in envelopes it re-signs. Before the
    probe, some such payloads killed the process inside OpenFHE's parser (SIGFPE)."""
    client = ClientContext.create("toy-n12", "openfhe", seed=1, insecure_for_testing=True)
    env = io.unpack(client.serialize(client.encrypt(np.linspace(-1, 1, 64))), kind="ciphertext")
    rng = np.random.default_rng(0)
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(60):
        payload = bytearray(env.payload)
        for _ in range(int(rng.integers(1, 4))):
            payload[int(rng.integers(0, 4096))] ^= int(rng.integers(1, 256))
        forged = io.pack(
            "ciphertext", env.backend, env.params_fingerprint, bytes(payload), env.meta
        )
        try:
            client.deserialize(forged)
            outcomes["parsed"] += 1
        except io.EnvelopeError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == 60
