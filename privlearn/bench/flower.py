"""A real Flower deployment on loopback against privlearn's own engine: `privlearn fl serve`
and one `privlearn fl join` per client, run as separate processes exactly as a user would
start them on separate machines, then the same config on the sequential engine.

Reports each run's final test accuracy, seconds per round (Flower: the server's wall time
from sending a round's messages to its model update, which includes Flower's per-message
`flwr-clientapp` process start and the SuperNodes' polling; engine: `run_round`'s), the
bytes on the wire per round (Flower's serialised message content, both ways) and the
largest difference between the two final models. With `compress`, both hosts run the same
compressed uploads, and each also reports its exact payload bytes per round (compress's count).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from privlearn.bench import machine, save_json
from privlearn.cli.fields import flag
from privlearn.fl import flower_deploy as D
from privlearn.fl import tree as T
from privlearn.fl.flower import SERVER_STATE, refuse
from privlearn.fl.run import Experiment, RunConfig


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "privlearn", *args]


def deploy(cfg: RunConfig, work: Path, timeout: float) -> dict:
    """`fl serve` + `fl join` x n_clients on loopback; the server's metrics document."""
    fleet, control, appio = (f"127.0.0.1:{_port()}" for _ in range(3))
    flags = ["--insecure", "--fleet-address", fleet, "--control-address", control]
    flags += ["--serverappio-address", appio]
    given = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}
    for k, v in given.items():
        if isinstance(v, bool):
            flags.append(flag(k) if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, list):
            flags += [flag(k), ",".join(map(str, v))]
        elif not isinstance(v, dict):
            flags += [flag(k), str(v)]
    work.mkdir(parents=True, exist_ok=True)
    env = D.env(work / "home")
    procs = []
    try:
        with open(work / "serve.log", "wb") as log:
            serve = subprocess.Popen(
                _cli("fl", "serve", *flags),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(serve)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                D.reachable(fleet, "SuperLink", timeout=1)
                break
            except ValueError:
                if serve.poll() is not None:
                    raise RuntimeError((work / "serve.log").read_text()[-1500:]) from None
                time.sleep(0.5)
        for i in range(cfg.n_clients):
            node = ["fl", "join", "--superlink", fleet, "--partition-id", str(i)]
            node += ["--num-partitions", str(cfg.n_clients), "--insecure"]
            node += ["--clientappio-address", f"127.0.0.1:{_port()}"]
            node += ["--home", str(work / f"node{i}")]
            with open(work / f"node{i}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        _cli(*node),
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        serve.wait(timeout=timeout)
        if serve.returncode != 0:
            raise RuntimeError((work / "serve.log").read_text()[-1500:])
    finally:
        for p in procs:  # each stops the Flower processes it started (SIGTERM unwinds them)
            D.stop(p, grace=30)
    return json.loads((Path(cfg.out) / "metrics.json").read_text())


def _payload_per_round(uploads: list[dict | None]) -> float | None:
    """Mean payload bytes per round (None without compression)."""
    if not uploads or uploads[0] is None:
        return None
    return sum(u["bytes"] for u in uploads) / len(uploads)


def run(
    rounds: int,
    n_clients: int,
    algorithm: str,
    out: Path,
    work: Path,
    timeout: float,
    model: str = "mclr",
    compress: dict | None = None,
) -> dict:
    """The deployment and the engine on the same config; the results document (also `out`).
    `compress`: RunConfig's compression fields (compress, compress_ratio, ...)."""
    cfg = RunConfig(
        dataset="digits",
        n_clients=n_clients,
        sampling="all",
        rounds=rounds,
        epochs=1,
        batch_size=32,
        model=model,
        algorithm=algorithm,
        engine="sequential",
        threads=1,
        out=str(work / "run"),
        **(compress or {}),
    )
    refuse(cfg)  # before any process starts
    t0 = time.perf_counter()
    doc = deploy(cfg, work, timeout)
    flower_wall = time.perf_counter() - t0
    exp = Experiment.build(cfg)
    server, bank = exp.init_state()
    seconds, uploads = [], []
    for r in range(rounds):
        server, stats, _ = exp.round(server, bank, r)
        seconds.append(stats.seconds)
        uploads.append(stats.upload)
    engine_acc = exp.evaluate(server, bank)["test_acc"]
    flower_server = torch.load(Path(cfg.out) / SERVER_STATE, weights_only=True)
    pairs = zip(T.leaves(server), T.leaves(flower_server), strict=True)
    rows = doc["rounds"]
    result = {
        "config": dataclasses.asdict(cfg),
        "machine": machine(),
        "flower": {
            "test_acc": rows[-1]["test_acc"],
            "seconds_per_round": sum(r["seconds"] for r in rows) / len(rows),
            "bytes_down_per_round": sum(r["bytes_down"] for r in rows) / len(rows),
            "bytes_up_per_round": sum(r["bytes_up"] for r in rows) / len(rows),
            "payload_bytes_per_round": _payload_per_round([r.get("upload") for r in rows]),
            "wall_seconds": flower_wall,
            "rounds": rows,
        },
        "engine": {
            "test_acc": engine_acc,
            "seconds_per_round": sum(seconds) / len(seconds),
            "payload_bytes_per_round": _payload_per_round(uploads),
        },
        "max_model_difference": max(float((a - b).abs().max()) for a, b in pairs),
    }
    save_json(result, out)
    return result


def print_table(doc: dict, console) -> None:
    from rich.table import Table

    f, e = doc["flower"], doc["engine"]
    cfg, m = doc["config"], doc["machine"]
    zip_ = cfg.get("compress")
    if zip_ is not None:
        zip_ = ", ".join(
            str(v)
            for v in (zip_, cfg.get("compress_ratio"), cfg.get("error_feedback"))
            if v is not None
        )
    t = Table(
        title=f"{cfg['algorithm']} ({cfg['model']}) on {cfg['dataset']}, {cfg['n_clients']} "
        f"SuperNodes on loopback, {cfg['rounds']} rounds, uploads "
        f"{zip_ or 'uncompressed'} ({m['host_cpus']} CPUs, load {m['loadavg_1m']})"
    )
    cols = ("host", "test acc", "s / round", "bytes down / round", "bytes up / round")
    for col in (*cols, "payload bytes / round"):
        t.add_column(col, justify="right")
    payload = lambda x: "-" if x is None else f"{x:.0f}"  # noqa: E731
    t.add_row(
        "Flower deployment",
        f"{f['test_acc']:.4f}",
        f"{f['seconds_per_round']:.2f}",
        f"{f['bytes_down_per_round']:.0f}",
        f"{f['bytes_up_per_round']:.0f}",
        payload(f.get("payload_bytes_per_round")),
    )
    t.add_row(
        "sequential engine",
        f"{e['test_acc']:.4f}",
        f"{e['seconds_per_round']:.4f}",
        "-",
        "-",
        payload(e.get("payload_bytes_per_round")),
    )
    console.print(t)
    console.print(f"largest difference between the final models: {doc['max_model_difference']:.3g}")
