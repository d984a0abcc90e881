"""The Ray engine computes what the single-process vectorised engine computes (same seeds,
same plan) on a local cluster of 2 workers; a worker lost mid-round is retried or its
clients are reported as rejected and the round completes; a bad address fails at once.

One local cluster serves the module (starting Ray and its workers is the slow part);
workloads are tiny."""

from __future__ import annotations

import dataclasses
import os
import socket
import time

import pytest
import ray
import torch

from privlearn.fl import run as run_module
from privlearn.fl.engine import TrainData, VectorisedEngine, make_engine
from privlearn.fl.engine.ray import RayEngine
from privlearn.fl.plan import plan_round
from privlearn.fl.rounds import init_federation, run_round, server_rng
from privlearn.fl.run import Experiment, RunConfig, run_experiment

from .helpers import LocalWork, Sampling, make, max_abs_diff, run

pytestmark = pytest.mark.filterwarnings("ignore:Tip. In future versions of Ray:FutureWarning")

# unequal work: heterogeneous epochs and partial stragglers, so shards differ in steps
WORK = LocalWork(
    epochs=1, batch_size=16, epochs_range=(1, 2), stragglers=0.34, straggler_policy="partial"
)
SAMPLING = Sampling("all")
TOL = 1e-6  # float32 parameters of order one: a few ulps, as between vectorised runs


@pytest.fixture(scope="module")
def cluster():
    """One local cluster on loopback for the module, with room for two 2-worker engines."""
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def engine(cluster):
    """A 2-worker engine on the module's cluster (which it leaves running when closed)."""
    e = RayEngine(workers=2)
    try:
        yield e
    finally:
        e.close()
    assert ray.is_initialized()


def _crash_once(algo, tokens):
    """`algo` whose workers die (os._exit) in client_init while a token file is left in
    `tokens`, one token per death: a process crash mid-round, not a Python error."""

    def client_init(server, cs, info):
        for name in sorted(os.listdir(tokens)):
            try:
                os.remove(tokens / name)
            except FileNotFoundError:
                continue
            os._exit(1)
        return algo.client_init(server, cs, info)

    return dataclasses.replace(algo, client_init=client_init)


def _tokens(tmp_path, n):
    for i in range(n):
        (tmp_path / f"token{i}").touch()
    return tmp_path


@pytest.mark.parametrize("name", ["fedavg", "scaffold"])
def test_same_model_as_vectorised(engine, digits_dir, name):
    """Server and every client's state (SCAFFOLD's control variates) after 2 rounds."""
    model, algo = make(name, digits_dir, momentum=0.5, batch_size=WORK.batch_size)
    vec = run(algo, model, digits_dir, make_engine("vectorised"), 2, SAMPLING, WORK)
    ray_ = run(algo, model, digits_dir, engine, 2, SAMPLING, WORK)
    assert max_abs_diff(vec[0], ray_[0]) < TOL
    assert max_abs_diff(vec[1], ray_[1]) < TOL
    for a, b in zip(vec[2], ray_[2], strict=True):
        assert a.clients == b.clients and a.rejected == b.rejected == []
        assert a.train_loss == pytest.approx(b.train_loss, abs=TOL)
    assert len(engine.shard_seconds) == 2  # both workers had a shard


def test_poisson_batches_match(engine, digits_dir):
    work = LocalWork(epochs=1, batch_size=16, sampler="poisson")
    model, algo = make("fedavg", digits_dir, batch_size=16)
    vec = run(algo, model, digits_dir, make_engine("vectorised"), 1, SAMPLING, work)
    ray_ = run(algo, model, digits_dir, engine, 1, SAMPLING, work)
    assert max_abs_diff(vec[0], ray_[0]) < TOL


def test_data_is_placed_once_per_worker(engine, digits_dir):
    """Three rounds on new data and a new algorithm: each worker fetched each once."""
    model, algo = make("fedavg", digits_dir)
    ds = dataclasses.replace(digits_dir, x_train=digits_dir.x_train.clone())
    fetched = lambda: [s["fetched"] for s in ray.get([a.status.remote() for a in engine.actors])]  # noqa: E731
    before = fetched()
    run(algo, model, ds, engine, 3, SAMPLING, WORK)
    after = fetched()
    assert [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)] == [
        {"algo": 1, "data": 1}
    ] * 2


def _one_round(algo, model, ds, engine, rows=None):
    """Round 0 from the initial state; `rows`: only those rows of its plan."""
    server, bank = init_federation(algo, model, ds.n_clients, 0)
    plan = plan_round(ds.clients, SAMPLING, WORK, 0, 0, algo.batches_per_step)
    plan = plan if rows is None else plan.take(rows)
    data = TrainData(ds.x_train, ds.y_train)
    server, stats = run_round(algo, engine, server, bank, plan, data, server_rng(0, 0))
    return server, bank, stats, plan


def test_worker_death_is_retried(engine, digits_dir, tmp_path):
    """One worker dies mid-round; its shard reruns on a fresh worker: nothing is lost and
    the model is the one a round without the crash gives."""
    model, algo = make("fedavg", digits_dir)
    want = _one_round(algo, model, digits_dir, make_engine("vectorised"))
    got = _one_round(_crash_once(algo, _tokens(tmp_path, 1)), model, digits_dir, engine)
    assert not os.listdir(tmp_path)  # the crash happened
    assert got[2].rejected == [] and got[2].skipped is None
    assert max_abs_diff(want[0], got[0]) < TOL


def test_killed_worker_is_replaced(engine, digits_dir):
    """An actor killed between rounds: the next round's shard goes to its replacement."""
    model, algo = make("fedavg", digits_dir)
    ray.kill(engine.actors[0])
    want = _one_round(algo, model, digits_dir, make_engine("vectorised"))
    got = _one_round(algo, model, digits_dir, engine)
    assert got[2].rejected == [] and max_abs_diff(want[0], got[0]) < TOL


def test_lost_shard_is_reported_and_round_completes(engine, digits_dir, tmp_path):
    """No retries: the dead worker's clients are rejected with the reason, the others'
    updates make the round, which equals a round of those clients alone."""
    model, algo = make("fedavg", digits_dir)
    engine.retries = 0
    try:
        server, bank, stats, plan = _one_round(
            _crash_once(algo, _tokens(tmp_path, 1)), model, digits_dir, engine
        )
    finally:
        engine.retries = 1
    shards = [set(plan.clients[rows].tolist()) for rows in engine._shards(plan)]
    lost = {r.client for r in stats.rejected}
    assert lost in shards and all("worker lost" in r.reason for r in stats.rejected)
    assert stats.skipped is None and stats.train_loss is not None
    kept = torch.tensor([i for i, c in enumerate(plan.clients.tolist()) if c not in lost])
    want = _one_round(algo, model, digits_dir, make_engine("vectorised"), rows=kept)
    assert max_abs_diff(want[0], server) < TOL


def test_unreachable_address_is_a_quick_clear_error():
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=f"'127.0.0.1:{port}': cannot reach"):
        RayEngine(address=f"127.0.0.1:{port}", connect_timeout=2.0)
    with pytest.raises(ValueError, match="expected host:port"):
        RayEngine(address="no-port-here")
    assert time.perf_counter() - t0 < 5


def _small_run(tmp_path, **kw):
    return RunConfig(
        dataset="digits",
        model="mclr",
        n_clients=6,
        clients_per_round=4,
        rounds=1,
        batch_size=16,
        out=str(tmp_path / kw.get("engine", "vectorised")),
        **kw,
    )


@pytest.mark.slow  # ~30 s: two more workers start (torch imports) and two runs
def test_fl_run_on_ray_matches_vectorised(engine, tmp_path):
    """`privlearn fl run --engine ray`'s path: the vectorised engine's losses and accuracy,
    and the run's workers stopped afterwards (the module's cluster stays up)."""
    vec = run_experiment(_small_run(tmp_path), progress=False)
    got = run_experiment(_small_run(tmp_path, engine="ray", ray_workers=2), progress=False)
    for a, b in zip(vec["rounds"], got["rounds"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=TOL)
        assert a["test_acc"] == b["test_acc"]
    # the run's two workers gave their CPUs back; the module engine's two still hold theirs
    deadline = time.perf_counter() + 10
    while ray.available_resources().get("CPU", 0) < 2 and time.perf_counter() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


def test_run_closes_its_engine_when_done_or_failed(tmp_path, monkeypatch):
    """run_experiment closes the engine (what stops Ray's workers) after a run, and after
    a run that failed mid-way."""
    closed = []

    class Closing(VectorisedEngine):
        def close(self):
            closed.append(True)

    monkeypatch.setattr(run_module, "make_engine", lambda *a, **k: Closing())
    run_experiment(_small_run(tmp_path), progress=False)
    assert closed == [True]

    def fail(*args):
        raise RuntimeError("a round failed")

    monkeypatch.setattr(Experiment, "round", fail)
    with pytest.raises(RuntimeError, match="a round failed"):
        run_experiment(_small_run(tmp_path / "failed"), progress=False)
    assert closed == [True, True]


def test_ray_fields_need_the_ray_engine():
    with pytest.raises(ValueError, match="ray_workers apply to --engine ray only"):
        RunConfig(ray_workers=2)
    with pytest.raises(ValueError, match="ray_workers: must be >= 1"):
        RunConfig(engine="ray", ray_workers=0)
    with pytest.raises(ValueError, match="device: the ray engine's workers compute on CPU"):
        RunConfig(engine="ray", device="cuda")
