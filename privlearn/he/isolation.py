"""Untrusted bytes meet OpenFHE first where a crash cannot take the caller down.

OpenFHE's deserializers and arithmetic trust their input: crafted bytes inside a well-formed
envelope (whose SHA-256 anyone can recompute) have ended in SIGSEGV, SIGFPE and heap-corruption
aborts, in parsing and in the first operation on what parsed (a decryption). privlearn checks
everything it can parse itself; what only OpenFHE can read is tried first in a throw-away
process: if that dies or hangs, the bytes are refused and the caller — a secret-key holder
answering a server, or a server reading a client's upload — lives on.

The throw-away processes are forks of one *worker*, a fresh interpreter spawned with a single
OpenMP thread: a fork of a process whose OpenMP pool has started hangs in its first parallel
region, so forking the caller itself could parse but never compute. The worker holds public
material only (a context, a public key and a relinearisation key, loaded from bytes that a
fork has already read safely), never a secret key. Per untrusted message a fork parses every
ciphertext, checks its level and key tag, and runs a canary of the operations the caller runs
(an addition; a multiplication with relinearisation where a level is left). Rotations with
keys the worker does not load, and bootstrapping, are not tried (see the threat model).
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import uuid
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from privlearn.he.io import CorruptError, ForeignParametersError

# a bootstrapping key set at N=2^16 (6.5 GB) takes tens of seconds to parse
LOAD_TIMEOUT_S, LOAD_S_PER_GB = 10.0, 20.0
# parsing and a single-threaded canary product at N=2^16, with a wide margin: crafted
# ciphertexts have hung OpenFHE, so this is how long one can hold up its receiver
CHECK_TIMEOUT_S = 5.0


# what a fork may allocate: OpenFHE's keys at N=2^16 peak at ~6x their serialized size
MEMORY_MARGIN = 2 << 30
KEY_PARSE_FACTOR = 8


def _check_timeout(count: int) -> float:
    return CHECK_TIMEOUT_S * (1 + count)


def _load_timeout(sections: dict) -> float:
    return LOAD_TIMEOUT_S + LOAD_S_PER_GB * _size(sections) / 2**30


class IsolationError(CorruptError):
    """Untrusted bytes crashed or hung OpenFHE in the isolated process."""


# -- the caller's side --------------------------------------------------------------------------
class _Worker:
    """The worker process and the link to it; one per process, started on first use. A fresh
    interpreter (``python -m privlearn.he.isolation``), not a multiprocessing spawn, which
    would re-run the caller's main module."""

    def __init__(self) -> None:
        import privlearn

        root = str(Path(privlearn.__file__).resolve().parents[1])
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # read when the worker's OpenMP loads
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "privlearn.he.isolation"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.send = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
        self.recv = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
        self.proc.stdin.close()
        self.proc.stdout.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, request: tuple, timeout: float) -> dict:
        self.send.send(request)
        # the worker's own fork enforces ``timeout``; this margin only catches a stuck worker
        if not self.recv.poll(timeout + 60):
            self.proc.kill()
            raise OSError("the isolation worker did not answer")
        return json.loads(self.recv.recv_bytes())


_lock = threading.Lock()  # one request at a time: a session's client and server share the worker
_worker: _Worker | None = None
_owner = 0  # the process that started it: a fork of the caller starts its own
_generation = 0  # which worker this is, so that material is loaded again into a new one
# material collected since the last request: a finalizer may run inside a request (the
# garbage collector runs anywhere), so it only queues the key and the next request drops it
_dropped: list[str] = []


def _ask(request: tuple, timeout: float, material: Material | None = None) -> dict:
    global _worker, _owner, _generation
    with _lock:
        if _worker is None or _owner != os.getpid() or not _worker.alive():
            _worker, _owner, _generation = _Worker(), os.getpid(), _generation + 1
            _dropped.clear()  # a new worker holds none of them
        try:
            while _dropped:
                _worker.ask(("drop", _dropped.pop()), 10)
            if material is not None and material.generation != _generation:
                load = ("load", material.key, material.public, False)
                _raise_for(_worker.ask(load, _load_timeout(material.public)), "public material")
                material.generation = _generation
            return _worker.ask(request, timeout)
        except (EOFError, OSError):
            _worker = None
            raise CorruptError("the isolation worker exited; the bytes are refused") from None


def _raise_for(answer: dict, what: str) -> None:
    if "crash" in answer:
        raise IsolationError(f"{what} crashed OpenFHE in an isolated process ({answer['crash']})")
    if "hang" in answer:
        raise IsolationError(f"{what} hung OpenFHE (stopped after {answer['hang']:.0f} s)")
    if answer.get("foreign"):
        raise ForeignParametersError(f"{what}: {answer['error']}")
    if "error" in answer:
        raise CorruptError(f"{what} is not readable by OpenFHE: {answer['error']}")


class Material:
    """A context's public material loaded in the worker, for :meth:`check`; dropped from the
    worker when this object is collected, loaded again if the worker had to be restarted (or
    the caller forked)."""

    def __init__(self, sections: dict[str, bytes | Path], *, trusted: bool, what: str) -> None:
        """``sections``: "context", "public_key", "relin_key" and optionally
        "automorphism_keys" (bytes, or a path to a verified file). Untrusted sections are read
        in a fork first; ``trusted`` ones (the client's own) are loaded directly."""
        self.key = uuid.uuid4().hex
        plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in sections.items()}
        _raise_for(_ask(("load", self.key, plain, not trusted), _load_timeout(plain)), what)
        self.public = {k: plain[k] for k in ("context", "public_key", "relin_key")}
        self.generation = _generation
        weakref.finalize(self, _drop, self.key)

    def check(self, payloads: Sequence[bytes], expect: Sequence[tuple[int, int]], tag: str):
        """Parse ``payloads`` (OpenFHE ciphertexts) and run the canary on each in a fork; raise
        if one is refused. ``expect``: each one's (OpenFHE level, noise scale degree)."""
        timeout = _check_timeout(len(payloads))
        answer = _ask(("check", self.key, list(payloads), list(expect), tag), timeout, self)
        what = "ciphertext" if len(payloads) == 1 else f"ciphertext {answer.get('index', '?')}"
        _raise_for(answer, what)


def check_public_keys(context: bytes, payloads: Sequence[bytes], what: str) -> None:
    """Parse untrusted public keys (multiparty key contributions, OpenFHE's payloads) under
    ``context`` and add them together, in a fork of the worker; raise if one is refused."""
    sections = {"context": context, **{str(i): p for i, p in enumerate(payloads)}}
    memory = MEMORY_MARGIN + KEY_PARSE_FACTOR * _size(sections)
    answer = _ask(("keys", "", context, list(payloads), memory), _load_timeout(sections))
    index = answer.get("index")
    try:
        _raise_for(answer, what if index is None else f"{what} {index}")
    except CorruptError as e:
        raise KeyRefused(str(e), index) from None


class KeyRefused(CorruptError):
    """A public key that does not parse or add; `index`: its position (None: unknown)."""

    def __init__(self, message: str, index: int | None) -> None:
        super().__init__(message)
        self.index = index


def _drop(key: str) -> None:
    if _owner == os.getpid():
        _dropped.append(key)


# -- the worker's side --------------------------------------------------------------------------
def _serve() -> None:
    """The worker: load material, try untrusted bytes in forks, until the caller goes. Requests
    come pickled from the caller (trusted: it started this process); answers go back as JSON,
    so nothing this process sends can run code in the caller."""
    recv, send = Connection(0, writable=False), Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # stray prints must not corrupt the link
    states: dict[str, Any] = {}
    while True:
        try:
            request = recv.recv()
        except EOFError:
            return
        send.send_bytes(json.dumps(_answer(states, *request)).encode())


def _answer(states: dict, op: str, key: str, *args) -> dict:
    if op == "drop":
        states.pop(key, None)
        return {}
    if op == "keys":
        context, payloads, memory = args
        sections = {"context": context, **{str(i): p for i, p in enumerate(payloads)}}
        return _in_fork(lambda: _add_keys(context, payloads), _load_timeout(sections), memory)
    if op == "load":
        sections, probe = args
        answer = {}
        if probe:
            memory = MEMORY_MARGIN + KEY_PARSE_FACTOR * _size(sections)
            answer = _in_fork(
                lambda: _load(sections, with_rotations=True), _load_timeout(sections), memory
            )
        if not answer:
            states[key] = _load(sections, with_rotations=False)
        return answer
    payloads, expect, tag = args
    timeout = _check_timeout(len(payloads))
    memory = MEMORY_MARGIN + KEY_PARSE_FACTOR * sum(len(p) for p in payloads)
    return _in_fork(lambda: _canary(states[key], payloads, expect, tag), timeout, memory)


def _size(sections: dict) -> int:
    return sum(os.path.getsize(v) if isinstance(v, str) else len(v) for v in sections.values())


def _load(sections: dict, *, with_rotations: bool):
    import openfhe as ofhe

    from privlearn.he.openfhe_backend import SER, load_relin_key

    cc = ofhe.DeserializeCryptoContextString(sections["context"], SER)
    tag = ofhe.DeserializePublicKeyString(sections["public_key"], SER).GetKeyTag()
    load_relin_key(cc, sections["relin_key"], tag)
    keys = sections.get("automorphism_keys") if with_rotations else None
    if isinstance(keys, str):
        if not cc.DeserializeEvalAutomorphismKey(keys, SER):
            raise RuntimeError("cannot read the automorphism keys")
    elif keys is not None:
        ofhe.DeserializeEvalAutomorphismKeyString(keys, SER)
    return cc


def _add_keys(context: bytes, payloads: list[bytes]) -> None:
    import openfhe as ofhe

    from privlearn.he.openfhe_backend import SER

    cc = ofhe.DeserializeCryptoContextString(context, SER)
    keys = []
    for i, payload in enumerate(payloads):
        try:
            keys.append(ofhe.DeserializePublicKeyString(payload, SER))
        except Exception as e:  # noqa: BLE001 - OpenFHE raises RuntimeError subclasses
            raise _Refused(i, f"OpenFHE could not read it: {e}") from None
    joint = keys[0]
    for i, key in enumerate(keys[1:], 1):
        try:
            joint = cc.MultiAddPubKeys(joint, key, "probe")
        except Exception as e:  # noqa: BLE001
            raise _Refused(i, f"it does not add to the others: {e}") from None


def _canary(cc, payloads: list[bytes], expect: list, tag: str) -> None:
    import openfhe as ofhe

    from privlearn.he.openfhe_backend import SER

    depth = cc.GetMultiplicativeDepth()
    for i, (payload, (level, deg)) in enumerate(zip(payloads, expect, strict=True)):
        try:
            ct = ofhe.DeserializeCiphertextString(payload, SER)
        except Exception as e:  # noqa: BLE001 - OpenFHE raises RuntimeError subclasses
            raise _Refused(i, f"OpenFHE could not read it: {e}") from None
        if ct.GetLevel() != level or ct.GetNoiseScaleDeg() != deg:
            raise _Refused(i, "its header and payload disagree on its level")
        if ct.GetKeyTag() != tag:
            raise _Refused(i, "its payload is under another key pair", foreign=True)
        cc.EvalAdd(ct, ct)
        if level + deg < depth:  # room for one more product (FLEXIBLEAUTO rescales first)
            cc.EvalMult(ct, ct)


class _Refused(Exception):
    def __init__(self, index: int, reason: str, *, foreign: bool = False) -> None:
        super().__init__(reason)
        self.index, self.foreign = index, foreign


def _in_fork(work, timeout: float, memory: int | None = None) -> dict:
    """Run ``work()`` in a fork of the worker: {} if it finished, else why it did not.
    ``memory``: bytes the fork may map beyond what it inherits (a crafted length field has
    made OpenFHE allocate without bound)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the fork: work, report, leave without running any cleanup
        os.close(read_end)
        if memory is not None:
            mapped = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf(
                "SC_PAGESIZE"
            )
            resource.setrlimit(resource.RLIMIT_AS, (mapped + memory, mapped + memory))
        faulthandler.disable()  # its crash is reported by the caller, in one line
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        answer: dict = {}
        try:
            work()
        except _Refused as e:
            answer = {"error": str(e)[:300], "index": e.index, "foreign": e.foreign}
        except BaseException as e:  # noqa: BLE001 - any failure refuses the bytes
            answer = {"error": f"{type(e).__name__}: {e}"[:300]}
        os.write(write_end, json.dumps(answer).encode()[:4000])
        os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout)
        report = os.read(read_end, 4096) if ready else None
    finally:
        os.close(read_end)
    if report is None:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if report is None:
        return {"hang": timeout}
    if os.WIFSIGNALED(status):
        return {"crash": signal.Signals(os.WTERMSIG(status)).name}
    return json.loads(report) if report else {"crash": "exited without a report"}


if __name__ == "__main__":
    _serve()
