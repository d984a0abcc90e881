"""privlearn on a real Flower deployment: a `flower-superlink` and three `flower-supernode`
processes on loopback (one federation for the module, killed in teardown), runs submitted
with `flwr run`. Flower starts a `flwr-clientapp` process per message, so a round costs a few
seconds even for a tiny model; the default tests run SCAFFOLD for 2 rounds, the longer ones
(sampled FedAvg, a SuperNode killed mid-round) are slow.

Stated tolerance: the Flower run and privlearn's sequential engine run the same functions on
the same batches in the same order, so their final models must agree to 1e-6 (float32) and
their test accuracies to 1e-9."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ConfigRecord, Message, RecordDict

from privlearn.fl import flower_deploy as D
from privlearn.fl import tree as T
from privlearn.fl.flower import SERVER_STATE, from_record, to_record, wire_bytes
from privlearn.fl.run import Experiment, RunConfig

N = 3
TINY = dict(
    dataset="digits",
    n_clients=N,
    sampling="all",
    epochs=1,
    batch_size=32,
    model="mclr",
    threads=1,
    engine="sequential",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Federation:
    root: Path
    control: str
    nodes: list  # Popen per partition
    logs: list[Path]

    def run(self, cfg: RunConfig, name: str, timeout: float = 300) -> dict:
        app = D.write_app(self.root / f"app-{name}", cfg)
        D.submit(app, self.root / "home", self.root / f"run-{name}.log", timeout)
        doc = json.loads((Path(cfg.out) / "metrics.json").read_text())
        assert doc["status"] == "complete", doc
        return doc


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("flower")
    fleet, control, appio = (f"127.0.0.1:{_free_port()}" for _ in range(3))
    tls = D.Tls()
    procs = []
    try:
        link = D.start(
            D.superlink_command(fleet, control, appio, tls), root / "home", root / "l.log"
        )
        procs.append(link)
        D.wait_listening(control, link, root / "l.log", timeout=60)
        D.wait_listening(fleet, link, root / "l.log", timeout=60)
        logs = [root / f"node{i}.log" for i in range(N)]
        for i in range(N):
            cmd = D.supernode_command(fleet, f"127.0.0.1:{_free_port()}", i, N, tls)
            procs.append(D.start(cmd, root / f"node{i}", logs[i]))
        D.write_connection(root / "home", control, tls)
        yield Federation(root, control, procs[1:], logs)
    finally:
        for p in procs:  # all at once: each takes seconds to shut down
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            D.stop(p)
    assert all(p.poll() is not None for p in procs)


def _engine_run(cfg: RunConfig) -> tuple[dict, list[dict]]:
    """The same config on privlearn's own (sequential) engine: final server, per-round stats."""
    exp = Experiment.build(cfg)
    server, bank = exp.init_state()
    rounds = []
    for r in range(cfg.rounds):
        server, stats, _ = exp.round(server, bank, r)
        rounds.append(
            {"clients": len(stats.clients), "train_loss": stats.train_loss}
            | exp.evaluate(server, bank)
        )
    return server, rounds


def _check_equivalent(cfg: RunConfig, doc: dict) -> None:
    server, rounds = _engine_run(cfg)
    flower = torch.load(Path(cfg.out) / SERVER_STATE, weights_only=True)
    pairs = zip(T.leaves(server), T.leaves(flower), strict=True)
    gap = max(float((a - b).abs().max()) for a, b in pairs)
    assert gap <= 1e-6, f"Flower's model differs from the engine's by {gap}"
    for ours, theirs in zip(rounds, doc["rounds"], strict=True):
        assert theirs["rejected"] == [] and theirs["clients"] == ours["clients"]
        assert abs(ours["test_acc"] - theirs["test_acc"]) <= 1e-9
        assert abs(ours["train_loss"] - theirs["train_loss"]) <= 1e-6
        assert theirs["bytes_down"] > 0 and theirs["bytes_up"] > 0


@pytest.fixture(scope="module")
def scaffold_run(federation):
    """SCAFFOLD, whose control variates c_i must persist on the nodes between rounds."""
    cfg = RunConfig(**TINY, algorithm="scaffold", rounds=2, out=str(federation.root / "scaffold"))
    return cfg, federation.run(cfg, "scaffold")


def test_scaffold_on_flower_matches_the_engine(scaffold_run):
    cfg, doc = scaffold_run
    _check_equivalent(cfg, doc)
    # the server state (params + c) down, the update (delta, dc, weight, loss, steps) up
    n_params = 64 * 10 + 10
    for r in doc["rounds"]:
        assert r["bytes_down"] >= N * 2 * n_params * 4
        assert r["bytes_up"] >= N * 2 * n_params * 4


@pytest.mark.slow
def test_fedavg_with_sampling_on_flower_matches_the_engine(federation):
    cfg = RunConfig(
        **{**TINY, "sampling": "uniform"},
        clients_per_round=2,
        algorithm="fedavg",
        rounds=3,
        out=str(federation.root / "fedavg"),
    )
    doc = federation.run(cfg, "fedavg")
    _check_equivalent(cfg, doc)


@pytest.mark.slow
def test_compressed_fedavg_on_flower_matches_the_engine(federation):
    """Top-k (5%) with EF21: payload bytes up, the server's g bank and the nodes' g_i."""
    cfg = RunConfig(
        **TINY,
        algorithm="fedavg",
        rounds=2,
        compress="topk",
        compress_ratio=0.05,
        error_feedback="ef21",
        out=str(federation.root / "topk"),
    )
    doc = federation.run(cfg, "topk")
    _check_equivalent(cfg, doc)
    for r in doc["rounds"]:
        assert r["upload"]["clients"] == N and 0 < r["upload"]["bytes"] <= r["bytes_up"]


def _count(log: Path, text: str) -> int:
    return log.read_text(errors="replace").count(text) if log.exists() else 0


@pytest.mark.slow  # its round waits flower_timeout (or Flower's heartbeat) for the lost node
def test_a_supernode_killed_mid_round_is_left_out(federation, scaffold_run):
    """SIGKILL one SuperNode once it has received its train message: the round completes,
    after flower_timeout, with the other two clients, naming the lost one. (Last: the
    module's federation has one node fewer afterwards.)"""
    slowest = max(r["seconds"] for r in scaffold_run[1]["rounds"])
    cfg = RunConfig(
        **TINY,
        algorithm="fedavg",
        rounds=1,
        flower_timeout=max(15.0, 1.5 * slowest),
        out=str(federation.root / "killed"),
    )
    victim, log = federation.nodes[2], federation.logs[2]
    seen = _count(log, "Receiving: train message")
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(doc=federation.run(cfg, "killed")))
    runner.start()
    deadline = time.monotonic() + 120
    while _count(log, "Receiving: train message") == seen and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _count(log, "Receiving: train message") > seen, "node 2 never got its train message"
    os.killpg(victim.pid, signal.SIGKILL)
    runner.join(timeout=cfg.flower_timeout + 120)
    assert not runner.is_alive()
    doc = result["doc"]
    (entry,) = doc["rounds"]
    node = doc["nodes"]["2"]
    assert entry["skipped"] is None and entry["test_acc"] is not None
    # no reply by the timeout, or (if Flower's heartbeat noticed first) its error reply
    (lost,) = entry["rejected"]
    assert lost.startswith(f"client 2: SuperNode {node}: ")


def test_an_unreachable_superlink_is_named():
    port = _free_port()
    with pytest.raises(ValueError, match=f"cannot reach the SuperLink at 127.0.0.1:{port}"):
        D.reachable(f"127.0.0.1:{port}", "SuperLink", timeout=2)


def test_wire_format_round_trips_and_names_a_wrong_shape():
    cfg = RunConfig(**TINY, algorithm="scaffold", rounds=1, out="unused")
    exp = Experiment.build(cfg)
    server, _ = exp.init_state()
    back = from_record(to_record(server), server)
    assert all(torch.equal(a, b) for a, b in zip(T.leaves(back), T.leaves(server), strict=True))
    record = to_record(server)
    assert wire_bytes(RecordDict({"s": record})) > sum(t.numel() * 4 for t in T.leaves(server))
    record["['params']['fc.bias']"] = Array(np.zeros(7, dtype=np.float32))
    with pytest.raises(ValueError, match=r"fc.bias.*shape \(7,\), expected \(10,\)"):
        from_record(record, server)
    record.pop("['params']['fc.bias']")
    with pytest.raises(ValueError, match="fields missing"):
        from_record(record, server)
    with pytest.raises(ValueError, match="expected an ArrayRecord"):
        from_record(ConfigRecord({"x": 1}), server)


def test_a_malformed_reply_is_named_and_excluded():
    """A node replying with a wrong-shaped update loses its row, named with its node id,
    and the round goes on with the others (the strategy, fed replies as nodes would send)."""
    from privlearn.fl.engine.base import TrainData
    from privlearn.fl.flower import AlgorithmStrategy, Fleet

    cfg = RunConfig(**TINY, algorithm="fedavg", rounds=1, out="unused")
    exp = Experiment.build(cfg)
    strategy = AlgorithmStrategy(
        Fleet(exp, {0: 10, 1: 11, 2: 12}, [len(c) for c in exp.data.clients])
    )
    server, bank = exp.init_state()
    sent = strategy.configure_train(1, None, None, None)
    for i, m in enumerate(sent):  # as Flower's grid sets it when pushing
        m.metadata.__dict__["_message_id"] = f"m{i}"
    plan = strategy.fleet.plan(0)
    data = TrainData(exp.data.x_train, exp.data.y_train)
    honest = exp.engine.run_clients(exp.algo, server, T.rows(bank, plan.clients), plan, data)
    replies = []
    for row, m in enumerate(sent):
        rec = to_record(T.rows(honest.updates, row))
        if m.metadata.dst_node_id == 11:
            rec[".delta['fc.weight']"] = Array(np.zeros((3, 3), dtype=np.float32))
        replies.append(Message(RecordDict({"update": rec}), reply_to=m))
    arrays, metrics = strategy.aggregate_train(1, reversed(replies))  # any order
    (entry,) = strategy.rounds
    assert entry["rejected"] == [
        "client 1: SuperNode 11: delta['fc.weight'] has shape (3, 3), expected (10, 64)"
    ]
    assert entry["skipped"] is None and metrics["clients"] == 3
    assert not torch.equal(strategy.server["params"]["fc.weight"], server["params"]["fc.weight"])
    assert torch.equal(
        arrays.to_torch_state_dict()["fc.weight"], strategy.server["params"]["fc.weight"]
    )


def test_join_names_an_unreachable_superlink(tmp_path):
    from typer.testing import CliRunner

    from privlearn.cli import app

    port = _free_port()
    args = ["fl", "join", "--superlink", f"127.0.0.1:{port}", "--partition-id", "0"]
    args += ["--num-partitions", "3", "--insecure", "--home", str(tmp_path / "node")]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2
    assert f"cannot reach the SuperLink at 127.0.0.1:{port}" in done.output
    assert not (tmp_path / "node").exists()  # refused before anything started


def test_a_node_commits_its_state_only_once_the_server_kept_that_update():
    """SCAFFOLD's c_i on one node: round 0's new state stays pending; the round-1 message
    says whether round 0's update was kept (kept=0) or not (kept=-1), and only then is it
    the state the node trains from."""
    from flwr.app import Context, MessageType

    from privlearn.fl.flower import _PENDING, _STATE, CONFIG_KEY, _train
    from privlearn.fl.rounds import init_federation

    cfg = RunConfig(**TINY, algorithm="scaffold", rounds=2, out="unused")
    exp = Experiment.build(cfg)
    server, bank = init_federation(exp.algo, exp.model, 1, cfg.seed)
    n = len(exp.data.clients[1])
    nb = -(-n // cfg.batch_size)

    def train(context, r, kept):
        job = {"round": r, "client": 1, "n": n, "nb": nb, "steps": nb, "batch": 32, "kept": kept}
        content = RecordDict({"server": to_record(server), "plan": ConfigRecord(job)})
        _train(Message(content, dst_node_id=1, message_type=MessageType.TRAIN), context)

    for kept, committed in ((-1, False), (0, True)):
        context = Context(
            run_id=1,
            node_id=1,
            node_config={"partition-id": 1, "num-partitions": N},
            state=RecordDict(),
            run_config={CONFIG_KEY: json.dumps(dataclasses.asdict(cfg))},
        )
        train(context, 0, -1)
        assert _STATE not in context.state
        after_round_0 = from_record(context.state[_PENDING], T.rows(bank, 0))
        assert any(bool(t.abs().sum() > 0) for t in T.leaves(after_round_0))  # c_i moved
        train(context, 1, kept)
        assert (_STATE in context.state) == committed
        if committed:
            state = from_record(context.state[_STATE], T.rows(bank, 0))
            assert all(
                torch.equal(a, b)
                for a, b in zip(T.leaves(state), T.leaves(after_round_0), strict=True)
            )


@pytest.mark.parametrize(
    "args, words",
    [
        (["--dp", "central"], "the Flower deployment runs plain algorithms"),
        ([], "give either the TLS certificate flags or --insecure"),
    ],
    ids=["dp", "no-tls-choice"],
)
def test_serve_refuses_before_starting_anything(tmp_path, args, words):
    from typer.testing import CliRunner

    from privlearn.cli import app

    out = tmp_path / "run"
    insecure = ["--insecure"] if args else []
    done = CliRunner().invoke(app, ["fl", "serve", *insecure, *args, "--out", str(out)])
    assert done.exit_code == 2 and words in done.output, done.output
    assert not (out / "flower" / "superlink.log").exists()


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (what docs/flower.md makes with openssl)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("privlearn test CA"))
        .issuer_name(name("privlearn test CA"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.crt", folder / "server.crt", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.mark.slow
def test_a_run_over_tls(tmp_path):
    """The SuperLink with a certificate, SuperNodes and `flwr run` verifying it: one round."""
    ca, cert, key = _certificates(tmp_path)
    server_tls = D.Tls(certfile=str(cert), keyfile=str(key), ca_certfile=str(ca))
    client_tls = D.Tls(root_certificates=str(ca))
    fleet, control, appio = (f"127.0.0.1:{_free_port()}" for _ in range(3))
    procs = []
    try:
        log = tmp_path / "l.log"
        procs.append(D.start(D.superlink_command(fleet, control, appio, server_tls), tmp_path, log))
        D.wait_listening(control, procs[0], log, timeout=60)
        for i in range(2):
            cmd = D.supernode_command(fleet, f"127.0.0.1:{_free_port()}", i, 2, client_tls)
            procs.append(D.start(cmd, tmp_path / f"node{i}", tmp_path / f"node{i}.log"))
        D.write_connection(tmp_path, control, client_tls)
        cfg = RunConfig(**{**TINY, "n_clients": 2}, rounds=1, out=str(tmp_path / "run"))
        D.submit(D.write_app(tmp_path / "app", cfg), tmp_path, tmp_path / "run.log", timeout=300)
        doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert doc["status"] == "complete" and doc["rounds"][0]["rejected"] == []
    finally:
        for p in procs:
            D.stop(p)


@pytest.mark.parametrize("sampler", ["shuffle", "poisson"])
def test_a_node_draws_the_batches_the_pooled_plan_gives_it(sampler):
    """plan.client_plan over a node's local rows 0..n-1 picks, step by step, the rows that
    plan_round picks for that client from the pooled data."""
    from privlearn.fl.plan import LocalWork, Sampling, client_plan, plan_round

    rng = np.random.default_rng(0)
    clients = [np.sort(rng.choice(500, size=k, replace=False)) for k in (23, 40, 7)]
    work = LocalWork(epochs=2, batch_size=8, sampler=sampler)
    plan = plan_round(clients, Sampling("all"), work, seed=3, round_idx=4)
    for row, c in enumerate(plan.clients.tolist()):
        n, nb, steps = int(plan.n[row]), int(plan.nb[row]), int(plan.steps[row])
        mine = client_plan(n, c, steps, nb, work.batch_size, work, seed=3, round_idx=4)
        for t in range(steps):
            pooled = plan.client_batch(row, t)
            local = torch.as_tensor(clients[c])[mine.client_batch(0, t)]
            assert torch.equal(local, pooled), (c, t)
