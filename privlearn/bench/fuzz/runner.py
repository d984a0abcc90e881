"""Run fuzz cases in forked children and classify what each did.

A case is (format, seed, index): its mutation is drawn from a generator seeded by those three
alone, so `privlearn bench fuzz --format F --case N` re-runs exactly one. The job process
prepares each format once (keys, a tiny session, a tiny FL run), computes the unmutated
result of every target in a child, then forks one child per case under an address-space
limit and a timeout. Classes:

- ``clean``: refused with one of privlearn's documented errors (per format: see `clean`);
- ``unclean``: any other exception (type, message and the raising frame are recorded);
- ``crash``: the child died of a signal; ``hang``: it ran past the timeout;
- ``silent_wrong``: accepted, but the result differs from the unmutated case's;
- ``benign``: accepted, same result; ``code_exec``: a planted payload ran (its marker file
  appeared), whatever else happened.

OpenFHE's OpenMP threads do not survive a fork (operations in a forked child hang), nor do
torch's: the job therefore runs in a fresh interpreter whose environment sets
``OMP_NUM_THREADS=1`` before either library is imported (:func:`run_fresh`).
"""

from __future__ import annotations

import faulthandler
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = ("clean", "benign", "unclean", "crash", "hang", "silent_wrong", "code_exec")
BAD = ("unclean", "crash", "hang", "code_exec")  # never acceptable
TIMEOUT_S = 30.0
MEMORY_GB = 4.0  # above what the job process already maps
_PRIVLEARN = str(Path(__file__).resolve().parents[2])
_HARNESS = str(Path(__file__).resolve().parent)


class BrokenAfter(Exception):
    """Raised by a case whose target stopped answering valid requests after a mutated one."""


class Format:
    """One input format. Subclasses set ``name``, ``targets`` (what loads the input: a role
    or a message kind) and implement `setup`, `base`, `mutate` and `observe`."""

    name: str
    targets: tuple[str, ...]
    marker: Path | None = None  # a code-execution payload creates this file

    def setup(self, workdir: Path) -> None:
        """Build what every case needs (in the job process, so children inherit it)."""

    def base(self, target: str) -> Any:
        """The unmutated input of ``target``."""
        raise NotImplementedError

    def mutate(self, rng: np.random.Generator, target: str, casedir: Path) -> tuple[str, Any]:
        """``(description, mutated input)``; may write files under ``casedir``."""
        raise NotImplementedError

    def observe(self, target: str, data: Any, casedir: Path) -> Any:
        """Load ``data`` the way privlearn does and return a JSON-able observation (in the
        child); raise whatever the loader raises."""
        raise NotImplementedError

    def clean(self, e: BaseException) -> bool:
        """A documented refusal: privlearn's ValueError family (EnvelopeError, ProtocolError,
        InsecureParametersError, its own ValueErrors) or HEError, with a message, raised by
        privlearn itself: a ValueError from numpy or OpenFHE passing through is unclean."""
        from privlearn.he.backend import HEError

        if isinstance(e, BrokenAfter) or not str(e).strip():
            return False
        if isinstance(e, HEError):
            return True
        return isinstance(e, ValueError) and _raised_in_privlearn(e)

    def judge(self, target: str, value: Any, reference: Any) -> str | None:
        """Why ``value`` is wrong (silent_wrong), or None (benign)."""
        return differs(value, reference)


def _raised_in_privlearn(e: BaseException) -> bool:
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and _own(frames[-1].filename)


def _own(filename: str) -> bool:
    return filename.startswith(_PRIVLEARN) and not filename.startswith(_HARNESS)


def _frame(f: traceback.FrameSummary) -> str:
    name = f.filename
    if name.startswith(_PRIVLEARN):
        name = "privlearn/" + os.path.relpath(name, _PRIVLEARN)
    elif "site-packages/" in name:
        name = name.split("site-packages/")[-1]
    return f"{name}:{f.lineno} in {f.name}"


def _where(e: BaseException) -> dict:
    frames = traceback.extract_tb(e.__traceback__)
    own = [f for f in frames if _own(f.filename)]
    return {
        "raised_at": _frame(frames[-1]) if frames else "",
        "privlearn_frame": _frame(own[-1]) if own else "",
    }


def differs(a: Any, b: Any, rtol: float = 1e-3, path: str = "") -> str | None:
    """The first place two observations differ beyond ``rtol`` (relative to the reference's
    magnitude), or a non-finite number where the reference has a finite one."""
    if isinstance(b, dict):
        if not isinstance(a, dict) or set(a) != set(b):
            return f"{path or 'result'}: keys {sorted(a) if isinstance(a, dict) else a!r}"
        for k in b:
            r = differs(a[k], b[k], rtol, f"{path}.{k}" if path else str(k))
            if r:
                return r
        return None
    if isinstance(b, list) and b and all(isinstance(x, (int, float)) for x in b):
        x, y = np.asarray(a, dtype=float) if _numeric(a) else None, np.asarray(b, dtype=float)
        if x is None or x.shape != y.shape:
            return f"{path}: {str(a)[:60]} instead of {len(b)} numbers"
        bad = ~np.isfinite(x) & np.isfinite(y)
        if bad.any():
            return f"{path}: {int(bad.sum())} non-finite values"
        err = float(np.max(np.abs(x - y))) if x.size else 0.0
        scale = float(np.max(np.abs(y))) if y.size else 0.0
        if err > rtol * max(scale, 1.0):
            return f"{path}: off by {err:.3g} (reference magnitude {scale:.3g})"
        return None
    if isinstance(b, list):
        if not isinstance(a, list) or len(a) != len(b):
            return f"{path}: {len(a) if isinstance(a, list) else a!r} items instead of {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            r = differs(x, y, rtol, f"{path}[{i}]")
            if r:
                return r
        return None
    if isinstance(b, float) and isinstance(a, (int, float)) and not isinstance(a, bool):
        return differs([a], [b], rtol, path)
    if type(a) is not type(b) or a != b:
        return f"{path}: {str(a)[:60]!r} instead of {str(b)[:60]!r}"
    return None


def _numeric(a: Any) -> bool:
    return isinstance(a, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in a
    )


def vector(v: np.ndarray) -> dict:
    """A decrypted vector as an observation: real parts, and the largest imaginary part."""
    v = np.asarray(v)
    return {"re": np.real(v).astype(float).tolist(), "im": float(np.max(np.abs(np.imag(v))))}


# -- one case in a child ------------------------------------------------------------------------
def run_child(
    fn: Callable[[], Any],
    clean: Callable[[BaseException], bool],
    *,
    timeout: float = TIMEOUT_S,
    memory_bytes: int | None = None,
    quiet: bool = True,
    stack_file: Path | None = None,
) -> dict:
    """Run ``fn`` in a forked child; returns {"status": "value"|"error"|"crash"|"hang", ...}.
    With ``stack_file``, the child's Python stack at a fatal signal or at the timeout is
    written there, and a crash or hang names the frame it happened in."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            if memory_bytes:
                resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if quiet:
                faulthandler.disable()  # it writes to a copy of stderr taken earlier
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)
                os.dup2(null, 2)
            if stack_file is not None:
                stacks = open(stack_file, "w")  # noqa: SIM115 - open until the child exits
                faulthandler.enable(stacks)
                faulthandler.dump_traceback_later(max(timeout - 1, 0.5), file=stacks)
            try:
                msg = {"status": "value", "value": fn()}
            except BaseException as e:  # noqa: BLE001 - the point is to see every failure
                msg = {
                    "status": "error",
                    "clean": bool(clean(e)),
                    "type": f"{type(e).__module__}.{type(e).__qualname__}",
                    "message": " ".join(str(e).split())[:600],
                    **_where(e),
                    "traceback": traceback.format_exc()[-3000:],
                }
            data = json.dumps(msg, default=repr).encode()
        except BaseException as e:  # noqa: BLE001 - even the report failed
            data = json.dumps(
                {
                    "status": "error",
                    "clean": False,
                    "type": type(e).__name__,
                    "message": f"reporting failed: {e}"[:600],
                }
            ).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(write_end, view[: 1 << 16]) :]
        os._exit(0)
    os.close(write_end)
    chunks, deadline, timed_out = [], time.monotonic() + timeout, False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_end], [], [], left)
            if not ready:
                continue
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return {
            "status": "hang",
            "message": f"no answer after {timeout:.0f} s",
            **_stack(stack_file),
        }
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return {"status": "crash", "message": name, **_stack(stack_file)}
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
        return {"status": "crash", "message": f"exited with status {code} and no report"}


_FRAME = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')


def _stack(path: Path | None) -> dict:
    """Where a crashed or hung child was, from faulthandler's dump (most recent call first)."""
    try:
        text = path.read_text() if path is not None else ""
    except OSError:
        text = ""
    frames = [traceback.FrameSummary(f, int(n), name) for f, n, name in _FRAME.findall(text)]
    own = [f for f in frames if _own(f.filename)]
    return {
        "raised_at": _frame(frames[0]) if frames else "",
        "privlearn_frame": _frame(own[0]) if own else "",
    }


def classify(fmt: Format, target: str, result: dict, reference: Any) -> tuple[str, str]:
    if result["status"] in ("crash", "hang"):
        return result["status"], result["message"]
    if result["status"] == "error":
        cls = "clean" if result["clean"] else "unclean"
        return cls, f"{result['type']}: {result['message']}"
    why = fmt.judge(target, result["value"], reference)
    return ("silent_wrong", why) if why else ("benign", "")


def case_rng(name: str, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), index])


def _vm_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- a format's run -----------------------------------------------------------------------------
def run_format(
    fmt: Format,
    cases: int,
    *,
    seed: int = 0,
    only: int | None = None,
    timeout: float = TIMEOUT_S,
    memory_gb: float = MEMORY_GB,
    progress: Callable[[str], None] | None = None,
    partial: Callable[[dict], None] | None = None,
) -> dict:
    """Run ``cases`` cases of ``fmt`` (or only case ``only``); counts and every case that is
    neither clean nor benign. ``partial`` gets the summary so far every 50 cases."""
    work = Path(tempfile.mkdtemp(prefix=f"privlearn-fuzz-{fmt.name}-"))
    try:
        t0 = time.perf_counter()
        fmt.setup(work)
        setup_s = time.perf_counter() - t0
        memory = _vm_bytes() + int(memory_gb * 2**30)
        refs = {}
        for target in fmt.targets:
            casedir = work / f"ref-{target}"
            casedir.mkdir()
            r = run_child(
                lambda: fmt.observe(target, fmt.base(target), casedir),  # noqa: B023 - run now
                fmt.clean,
                timeout=timeout * 4,
                memory_bytes=memory,
            )
            if r["status"] != "value":
                raise RuntimeError(f"{fmt.name}/{target}: the unmutated input fails: {r}")
            refs[target] = r["value"]
        counts = dict.fromkeys(CLASSES, 0)
        findings, third_party = [], 0
        indices = [only] if only is not None else range(cases)
        t1 = time.perf_counter()

        def summary(done: int) -> dict:
            elapsed = time.perf_counter() - t1
            return {
                "format": fmt.name,
                "seed": seed,
                "cases": done,
                "counts": dict(counts),
                "clean_raised_outside_privlearn": third_party,
                "cases_per_s": round(done / elapsed, 2) if elapsed else None,
                "setup_s": round(setup_s, 1),
                "findings": list(findings),
            }

        for i in indices:
            rng = case_rng(fmt.name, seed, i)
            target = fmt.targets[int(rng.integers(0, len(fmt.targets)))]
            casedir = work / f"case-{i}"
            casedir.mkdir()
            if fmt.marker is not None:
                fmt.marker.unlink(missing_ok=True)
            mutation, data = fmt.mutate(rng, target, casedir)
            started = time.perf_counter()
            result = run_child(
                lambda: fmt.observe(target, data, casedir),  # noqa: B023 - called at once
                fmt.clean,
                timeout=timeout,
                memory_bytes=memory,
                quiet=only is None,
                stack_file=casedir / "stack.txt",
            )
            cls, detail = classify(fmt, target, result, refs[target])
            if fmt.marker is not None and fmt.marker.exists():
                cls, detail = "code_exec", f"marker file written; then {cls}: {detail}"
            counts[cls] += 1
            record = {
                "case": i,
                "target": target,
                "mutation": mutation,
                "class": cls,
                "detail": detail.replace(str(work), "<work>")[:600],
                "seconds": round(time.perf_counter() - started, 3),
            }
            for key in ("raised_at", "privlearn_frame"):
                if result.get(key):
                    record[key] = result[key]
            if cls == "clean" and not result.get("raised_at", "").startswith("privlearn"):
                third_party += 1  # refused as a user error, but by a library under privlearn
            if only is not None:
                record["traceback"] = result.get("traceback", "")
            if cls not in ("clean", "benign") or only is not None:
                findings.append(record)
            shutil.rmtree(casedir, ignore_errors=True)
            if (i + 1) % 50 == 0:
                if progress:
                    progress(f"{fmt.name}: {i + 1}/{cases} " + _line(counts))
                if partial:
                    partial(summary(i + 1))
        return summary(len(indices))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _line(counts: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in counts.items() if v)


def environment(preset: str, timeout: float) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ofhe = version("openfhe")
    except PackageNotFoundError:
        ofhe = None
    return {
        "preset": preset,
        "backend": "openfhe",
        "openfhe": ofhe,
        "torch": version("torch"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "timeout_s": timeout,
        "memory_limit_gb": MEMORY_GB,
    }


def run(
    formats: list[str],
    cases: int,
    *,
    seed: int = 0,
    only: int | None = None,
    timeout: float = TIMEOUT_S,
    out: Path | None = None,
    progress: Callable[[str], None] | None = print,
) -> dict:
    """Run the formats in this process, which must have OMP_NUM_THREADS=1 (see run_fresh);
    with ``out``, the document is rewritten every 50 cases (a stopped run keeps its part)."""
    from privlearn.bench.fuzz import FORMATS, PRESET

    if os.environ.get("OMP_NUM_THREADS") != "1":
        raise RuntimeError("fuzz cases fork: run them via run_fresh (OMP_NUM_THREADS=1)")
    doc = {
        **environment(PRESET, timeout),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "formats": {},
    }

    def save(part: dict) -> None:
        doc["formats"][part["format"]] = part
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, indent=1, default=repr))

    for name in formats:
        part = run_format(
            FORMATS[name](),
            cases,
            seed=seed,
            only=only,
            timeout=timeout,
            progress=progress,
            partial=save,
        )
        save(part)
        if progress:
            progress(
                f"{name}: {part['cases']} cases, {part['cases_per_s']}/s, " + _line(part["counts"])
            )
    return doc


def run_fresh(
    formats: list[str],
    cases: int,
    out: Path,
    *,
    seed: int = 0,
    only: int | None = None,
    timeout: float = TIMEOUT_S,
) -> dict:
    """Run the job in a fresh interpreter with one OpenMP thread (see the module docstring),
    its progress on this process's stdout; returns the document it wrote to ``out``."""
    args = {"formats": formats, "cases": cases, "seed": seed, "only": only, "timeout": timeout}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PRIVLEARN, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "privlearn.bench.fuzz", json.dumps(args), str(out)]
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the fuzz job exited with status {proc.returncode}")
    return json.loads(Path(out).read_text())
