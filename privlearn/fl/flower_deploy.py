"""Flower's own commands as processes: a SuperLink, SuperNodes, and `flwr run` of privlearn's
app (flwr 1.30). `privlearn fl serve` / `fl join` and the deployment tests use these.

Why an app folder: `flwr run` submits a Flower App Bundle built from a folder with a
pyproject.toml, and the SuperLink and each SuperNode load its components by import path.
`write_app` writes one whose components are `privlearn.fl.flower:server_app` / `client_app`
and whose run config carries the `RunConfig` as JSON, so no project code is copied and every
machine runs the privlearn it has installed. Each process gets a `FLWR_HOME` (Flower's
state: installed apps, the SuperLink connections `flwr run` reads), the venv's bin folder
on PATH (the SuperLink starts `flower-superexec` by name) and PYTHONPATH pointing at this
privlearn, so that the apps import the same code as the process that started them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import privlearn
from privlearn.fl.flower import CONFIG_KEY, refuse
from privlearn.fl.run import RunConfig

CONNECTION = "privlearn"  # the SuperLink connection's name in FLWR_HOME/config.toml


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: install Flower beside privlearn (pip install 'privlearn[fl]')"
        )
    return str(path)


def env(home: Path) -> dict:
    """The environment of every Flower process started here (see the module docstring)."""
    here = str(Path(privlearn.__file__).resolve().parent.parent)
    e = dict(os.environ)
    e["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), e.get("PATH", "")])
    e["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [e.get("PYTHONPATH")])])
    e["FLWR_HOME"] = str(home)
    return e


@dataclass(frozen=True)
class Tls:
    """TLS material as Flower takes it: the SuperLink's certificate and key (and CA), the
    root certificate that SuperNodes and `flwr run` verify it with."""

    certfile: str | None = None
    keyfile: str | None = None
    ca_certfile: str | None = None
    root_certificates: str | None = None

    def server_args(self) -> list[str]:
        if not (self.certfile and self.keyfile):
            return ["--insecure"]
        args = ["--ssl-certfile", self.certfile, "--ssl-keyfile", self.keyfile]
        return args + (["--ssl-ca-certfile", self.ca_certfile] if self.ca_certfile else [])

    def client_args(self) -> list[str]:
        if not self.root_certificates:
            return ["--insecure"]
        return ["--root-certificates", self.root_certificates]


def superlink_command(
    fleet: str, control: str, serverappio: str, tls: Tls, node_auth: bool = False
) -> list[str]:
    """`flower-superlink` listening on the three addresses (Fleet API for SuperNodes, Control
    API for `flwr run`, ServerAppIo for its own ServerApp process)."""
    return [
        _tool("flower-superlink"),
        *tls.server_args(),
        "--fleet-api-address",
        fleet,
        "--control-api-address",
        control,
        "--serverappio-api-address",
        serverappio,
        *(["--enable-supernode-auth"] if node_auth else []),
    ]


def supernode_command(
    superlink: str,
    clientappio: str,
    partition: int,
    partitions: int,
    tls: Tls,
    auth_key: str | None = None,
) -> list[str]:
    """`flower-supernode` for one data partition, its ClientAppIo API on `clientappio`."""
    return [
        _tool("flower-supernode"),
        *tls.client_args(),
        "--superlink",
        superlink,
        "--clientappio-api-address",
        clientappio,
        "--node-config",
        f"partition-id={partition} num-partitions={partitions}",
        *(["--auth-supernode-private-key", auth_key] if auth_key else []),
    ]


def start(command: list[str], home: Path, log: Path | None) -> subprocess.Popen:
    """A Flower process in its own process group (so `stop` ends its children too), its
    output in `log` (None: this terminal)."""
    home.mkdir(parents=True, exist_ok=True)
    if log is None:
        return subprocess.Popen(command, env=env(home), start_new_session=True)
    with open(log, "ab") as fh:
        return subprocess.Popen(
            command, env=env(home), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End a process started by `start` and its children: SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            if sig == signal.SIGTERM:  # the leader is gone; its children may not be
                os.killpg(proc.pid, signal.SIGKILL)
            break
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM raises SystemExit while the block runs, so its `finally` stops the Flower
    processes it started (they run in their own sessions and would outlive it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r}: expected HOST:PORT (e.g. 192.0.2.7:9092)")
    return host.strip("[]") or "127.0.0.1", int(port)


def reachable(address: str, what: str, timeout: float = 5.0) -> None:
    """Raise one clear error naming `address` when nothing accepts connections there."""
    try:
        socket.create_connection(_split(address), timeout=timeout).close()
    except OSError as e:
        raise ValueError(
            f"cannot reach the {what} at {address} ({e.strerror or e}): check the address and "
            "that the SuperLink runs (privlearn fl serve) and that its port is open"
        ) from None


def wait_listening(address: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait until `proc` accepts connections on `address`; fail with its log if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise RuntimeError(f"{Path(proc.args[0]).name} exited ({proc.returncode}): {tail}")
        try:
            socket.create_connection(_split(address), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {address} after {timeout:g} s (log: {log})")


def write_app(folder: Path, cfg: RunConfig) -> Path:
    """The Flower app folder that runs `cfg` (see the module docstring)."""
    refuse(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    config = json.dumps(asdict(cfg))
    (folder / "pyproject.toml").write_text(
        "\n".join(
            [
                "[build-system]",
                'requires = ["hatchling"]',
                'build-backend = "hatchling.build"',
                "[project]",
                'name = "privlearn-run"',
                f'version = "{privlearn.__version__}"',
                'description = "a privlearn federated run"',
                'license = "Apache-2.0"',
                "dependencies = []",
                "[tool.flwr.app]",
                'publisher = "privlearn"',
                "[tool.flwr.app.components]",
                'serverapp = "privlearn.fl.flower:server_app"',
                'clientapp = "privlearn.fl.flower:client_app"',
                "[tool.flwr.app.config]",
                f"{CONFIG_KEY} = {json.dumps(config)}",
                "",
            ]
        )
    )
    return folder


def write_connection(home: Path, control: str, tls: Tls) -> None:
    """The SuperLink connection `flwr run` uses, in FLWR_HOME/config.toml."""
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', f"[superlink.{CONNECTION}]"]
    lines.append(f'address = "{control}"')
    if tls.root_certificates:
        lines.append(f"root-certificates = {json.dumps(str(tls.root_certificates))}")
    elif not tls.certfile:  # with a certificate but no CA file: the system's roots verify it
        lines.append("insecure = true")
    (home / "config.toml").write_text("\n".join(lines) + "\n")


def submit(app: Path, home: Path, log: Path, timeout: float | None = None) -> None:
    """`flwr run` the app on the connection in `home`, streaming the run's log into `log`
    until the run ends (or `timeout` seconds pass)."""
    with open(log, "ab") as fh:
        try:
            done = subprocess.run(
                [_tool("flwr"), "run", str(app), CONNECTION, "--stream"],
                env=env(home),
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"the Flower run did not end within {timeout:g} s (log: {log})"
            ) from None
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-800:]
        raise RuntimeError(f"flwr run failed ({done.returncode}): {tail}")


def local(address: str) -> str:
    """Where this machine connects to a server bound at `address` (0.0.0.0 means loopback)."""
    host, port = _split(address)
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "::", "") else address


def serve(
    cfg: RunConfig,
    home: Path,
    fleet: str,
    control: str,
    serverappio: str,
    tls: Tls,
    node_auth: bool = False,
) -> dict:
    """Start a SuperLink, run `cfg` on the federation that joins it (the ServerApp waits
    `flower_timeout` for one SuperNode per client), stop the SuperLink; the run's metrics."""
    metrics = Path(cfg.out) / "metrics.json"
    if metrics.exists():
        raise FileExistsError(f"{cfg.out} already holds a run's metrics; choose another --out")
    write_app(home / "app", cfg)  # refuses what the Flower host does not run, before starting
    with _sigterm_unwinds():
        _run_on_superlink(home, fleet, control, serverappio, tls, node_auth)
    doc = json.loads(metrics.read_text()) if metrics.exists() else {"status": "not started"}
    if doc["status"] != "complete":
        tail = (home / "run.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"the Flower run ended {doc['status']} (log {home / 'run.log'}): {tail}")
    return doc


def _run_on_superlink(home, fleet, control, serverappio, tls, node_auth) -> None:
    log = home / "superlink.log"
    link = start(superlink_command(fleet, control, serverappio, tls, node_auth), home, log)
    try:
        wait_listening(local(control), link, log, timeout=60)
        write_connection(home, local(control), tls)
        submit(home / "app", home, home / "run.log")
    finally:
        stop(link)


def join(
    superlink: str,
    partition: int,
    partitions: int,
    clientappio: str,
    tls: Tls,
    home: Path,
    auth_key: str | None = None,
) -> int:
    """Run a SuperNode for one partition in this terminal until it ends (Ctrl-C stops it)."""
    if not 0 <= partition < partitions:
        raise ValueError(f"--partition-id {partition} must be in 0..{partitions - 1}")
    reachable(superlink, "SuperLink")
    with _sigterm_unwinds():
        command = supernode_command(superlink, clientappio, partition, partitions, tls, auth_key)
        node = start(command, home, None)
        try:
            return node.wait()
        finally:
            stop(node)
