"""Run a native deserializer on untrusted bytes where a crash cannot take the caller down.

OpenFHE's deserializers trust their input: crafted bytes inside a well-formed envelope (whose
SHA-256 anyone can recompute) have ended in SIGSEGV, SIGFPE and heap-corruption aborts. The
envelope checks everything privlearn can parse; what only OpenFHE can parse is first parsed in
a forked child. If the child dies or hangs, the bytes are refused and the caller — a
secret-key holder answering a server, or a server reading a client's upload — lives on. The
parent then parses the same bytes itself: one fork and one extra parse.

Only parsing is probed. Bytes that parse can still crash the first operation on them (a
decryption has died of SIGFPE); running that operation in the child hung OpenFHE (its thread
pool does not survive a fork), so that case remains open (see the threat model in the docs).
"""

from __future__ import annotations

import faulthandler
import os
import select
import signal
from collections.abc import Callable

from privlearn.he.io import CorruptError

TIMEOUT_S = 120.0  # generous: a bootstrapping key set at N=2^16 takes tens of seconds to parse


def probe(parse: Callable[[], object], what: str, timeout: float = TIMEOUT_S) -> str | None:
    """Run ``parse()`` in a forked child. Raise :class:`CorruptError` if the child crashes or
    hangs; return the message of an exception it raised (the parent's own parse then raises
    the precise error), None if it finished. Without ``os.fork`` (Windows) nothing is probed."""
    if not hasattr(os, "fork"):
        return None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: parse, report one byte, leave without running any cleanup
        os.close(read_end)
        faulthandler.disable()  # its crash is reported by the parent, in one line
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        report = b"0"
        try:
            parse()
        except BaseException as e:  # noqa: BLE001 - any failure refuses the bytes
            report = b"1" + str(e)[:300].encode(errors="replace")
        os.write(write_end, report)
        os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout)
        report = os.read(read_end, 512) if ready else None
    finally:
        os.close(read_end)
    if report is None:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if report is None:
        raise CorruptError(f"{what} hung OpenFHE's parser (stopped after {timeout:.0f} s)")
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        raise CorruptError(f"{what} crashed OpenFHE's parser in an isolated process ({name})")
    return None if report == b"0" else report[1:].decode(errors="replace")
