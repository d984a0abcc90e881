"""Untrusted bytes meet OpenFHE first in a fork of the isolation worker: a crash or a hang there
is a refusal, and the caller (a secret-key holder, or a server) lives on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from privlearn.he import isolation


def test_the_fork_reports_a_crash_a_hang_an_error_and_success():
    assert isolation._in_fork(lambda: os.kill(os.getpid(), signal.SIGSEGV), 10) == {
        "crash": "SIGSEGV"
    }
    t = time.perf_counter()
    assert isolation._in_fork(lambda: time.sleep(30), 0.5) == {"hang": 0.5}
    assert time.perf_counter() - t < 10
    assert isolation._in_fork(lambda: 1 / 0, 10) == {"error": "ZeroDivisionError: division by zero"}
    assert isolation._in_fork(lambda: None, 10) == {}


# Mutated payloads in envelopes a hostile peer re-signs, aimed at the bytes every ciphertext
# shares (its embedded parameters, moduli and sizes), handed to a client that decrypts them
# and a server that computes on them, both with OpenMP's threads running. Run in a child
# interpreter so that a crash fails this test instead of killing the test run. Before the
# isolation worker, about 3 % of such payloads parsed and then crashed the process (SIGFPE,
# SIGABRT) or hung it in the first operation.
_HOSTILE = """
import json, sys, numpy as np
from privlearn.he import ClientContext, Evaluator, io, isolation
client = ClientContext.create("toy-n12", "openfhe", seed=1, insecure_for_testing=True)
ev = Evaluator.from_bundle(client.public_bundle([1]), insecure_for_testing=True)
x = client.encrypt(np.linspace(-1, 1, 64), level=3)
ev.mul(x, x)  # OpenMP's thread pool is up, as in any real session
env = io.unpack(client.serialize(x), kind="ciphertext")
other = io.unpack(client.serialize(client.encrypt(np.zeros(4), level=3)), kind="ciphertext")
a, b = np.frombuffer(env.payload, np.uint8), np.frombuffer(other.payload, np.uint8)
shared = np.where(a[:2000] == b[:2000])[0]
rng = np.random.default_rng(int(sys.argv[1]))
out = {"accepted": 0, "refused": 0, "isolated": 0}
for _ in range(int(sys.argv[2])):
    p = bytearray(env.payload)
    for pos in rng.choice(shared, int(rng.integers(1, 3))):
        p[pos] = int(rng.integers(0, 256))
    forged = io.pack("ciphertext", env.backend, env.params_fingerprint, bytes(p), env.meta)
    for side in (client, ev):
        try:
            ct = side.deserialize(forged)
            client.decrypt(ct) if side is client else ev.rotate(ev.mul(ct, ct), 1)
            out["accepted"] += 1
        except isolation.IsolationError:
            out["isolated"] += 1
        except io.EnvelopeError:
            out["refused"] += 1
print(json.dumps(out))
"""


def _hostile(seed: int, cases: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _HOSTILE, str(seed), str(cases)],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, f"the process died ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.openfhe
def test_hostile_ciphertexts_never_take_the_client_or_the_server_down():
    out = _hostile(seed=7, cases=100)
    assert sum(out.values()) == 200 and out["refused"] > 0


@pytest.mark.openfhe
@pytest.mark.slow
def test_many_hostile_ciphertexts_are_isolated_not_fatal():
    out = _hostile(seed=1, cases=600)
    assert sum(out.values()) == 1200 and out["isolated"] > 0


@pytest.mark.openfhe
def test_a_fork_of_the_caller_gets_a_worker_of_its_own_with_the_material_loaded():
    """A forked child saw the parent's worker as gone, started a new one without the
    parent's material, and refused every ciphertext."""
    import numpy as np

    from privlearn.he import ClientContext, Evaluator

    client = ClientContext.create("toy-n12", "openfhe", seed=8, insecure_for_testing=True)
    ev = Evaluator.from_bundle(client.public_bundle(), insecure_for_testing=True)
    blob = client.serialize(client.encrypt(np.ones(4)))
    ev.deserialize(blob)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ev.deserialize(blob)
            os.write(write_end, b"ok")
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    assert os.read(read_end, 2) == b"ok"
    ev.deserialize(blob)  # the parent's worker is still its own


def test_material_collected_during_a_request_is_dropped_later_not_deadlocked():
    """A Material's finalizer ran `_ask` under the non-reentrant request lock: collected by
    the garbage collector inside another request, it hung the process."""
    import threading

    from privlearn.he import ClientContext, Evaluator

    client = ClientContext.create("toy-n12", "openfhe", seed=9, insecure_for_testing=True)
    ev = Evaluator.from_bundle(client.public_bundle(), insecure_for_testing=True)
    blob = client.serialize(client.encrypt(np.ones(4)))
    ev.deserialize(blob)  # the worker runs and holds this material
    with isolation._lock:  # as if inside a request
        t = threading.Thread(target=isolation._drop, args=("collected-key",), daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive()
    assert "collected-key" in isolation._dropped
    ev.deserialize(blob)  # the next request sends the queued drop
    assert not isolation._dropped
