"""Runs from a config: outputs, resume after a stop or Ctrl-C, bad input handling."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from privlearn.cli import app
from privlearn.fl import tree as T
from privlearn.fl.algorithms import build_algorithm
from privlearn.fl.run import RunConfig, _atomic_save, load_checkpoint, run_experiment

from .helpers import LocalWork, Sampling, make, run

REPO = Path(__file__).resolve().parents[2]
SMALL = {
    "dataset": "digits",
    "n_clients": 6,
    "clients_per_round": 4,
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.1,
    "model": "mclr",
    "algorithm": "scaffold",
}


def _params(out) -> dict:
    return load_checkpoint(Path(out) / "checkpoint.pt")["server"]


def _strip(rounds):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rounds]


def test_run_writes_metrics_plots_and_checkpoint(tmp_path):
    doc = run_experiment(RunConfig(**SMALL, rounds=3, out=str(tmp_path)), progress=False)
    assert doc["status"] == "complete" and len(doc["rounds"]) == 3
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["rounds"][-1]["test_acc"] == doc["rounds"][-1]["test_acc"] > 0.3
    assert saved["dataset"]["heterogeneity"]["n_clients"] == 6
    for png in ("metrics.png", "partition.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileExistsError, match="--resume"):
        run_experiment(RunConfig(**SMALL, rounds=3, out=str(tmp_path)), progress=False)


def test_resume_continues_exactly(tmp_path):
    straight = run_experiment(RunConfig(**SMALL, rounds=4, out=str(tmp_path / "a")), progress=False)
    run_experiment(RunConfig(**SMALL, rounds=2, out=str(tmp_path / "b")), progress=False)
    resumed = run_experiment(
        RunConfig(**SMALL, rounds=4, out=str(tmp_path / "b")), resume=True, progress=False
    )
    assert _strip(resumed["rounds"]) == _strip(straight["rounds"])
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(T.leaves(a), T.leaves(b), strict=True))
    with pytest.raises(ValueError, match="lr: checkpoint 0.1 vs now 0.2"):
        run_experiment(
            RunConfig(**{**SMALL, "lr": 0.2}, rounds=5, out=str(tmp_path / "b")),
            resume=True,
            progress=False,
        )


def test_ctrl_c_leaves_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "privlearn",
        "fl",
        "run",
        "--dataset",
        "digits",
        "--n-clients",
        "6",
        "--clients-per-round",
        "4",
        "--model",
        "mclr",
        "--algorithm",
        "scaffold",
        "--lr",
        "0.1",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--rounds",
        "100000",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # a test run started in the background (`make test &`) inherits SIGINT ignored, and a
    # Python started so never raises KeyboardInterrupt: the child gets Ctrl-C's default back
    proc = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        text = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:  # never leave the 100,000-round run behind
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, text
    assert "privlearn fl run --resume" in text
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["status"] == "interrupted"
    done = load_checkpoint(out / "checkpoint.pt")["round"]
    assert done >= 1 and len(doc["rounds"]) == done
    started_with = load_checkpoint(out / "checkpoint.pt")["threads"]
    # resume for two more rounds through the CLI, from a process at another thread count: the
    # checkpoint's count is re-applied. Compare with an uninterrupted run at that count.
    torch.set_num_threads(started_with + 1)
    result = CliRunner().invoke(app, ["fl", "run", "--resume", str(out), "--rounds", str(done + 2)])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == started_with
    straight = run_experiment(
        RunConfig(**SMALL, rounds=done + 2, out=str(tmp_path / "s"), threads=started_with),
        progress=False,
    )
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["status"] == "complete"
    assert _strip(resumed["rounds"]) == _strip(straight["rounds"])


def _faulty(algo, nan_client: int, shape_client: int | None = None):
    """An algorithm whose `nan_client` uploads NaN and `shape_client` a mis-shaped bias."""
    from dataclasses import replace

    def client_init(s, cs, info):
        return {**algo.client_init(s, cs, info), "who": info["id"]}

    def client_final(s, lo):
        up, cs = algo.client_final(s, lo)
        bad = lo["who"] == nan_client
        delta = {
            k: torch.where(bad, torch.full_like(v, float("nan")), v) for k, v in up.delta.items()
        }
        if shape_client is not None and int(lo["who"]) == shape_client:  # sequential only
            delta["fc.bias"] = torch.zeros(3)
        return replace(up, delta=delta), cs

    return replace(algo, client_init=client_init, client_final=client_final)


@pytest.mark.parametrize("engine", ["sequential", "vectorised"])
def test_bad_updates_are_rejected_by_name_and_the_round_goes_on(engine, digits_dir):
    from privlearn.fl.engine import make_engine

    model, algo = make("scaffold", digits_dir)
    shape_client = 1 if engine == "sequential" else None
    bad = _faulty(algo, nan_client=4, shape_client=shape_client)
    sampling, work = Sampling("all"), LocalWork(1, 16)
    server, bank, stats = run(bad, model, digits_dir, make_engine(engine), 1, sampling, work)
    rejected = {r.client: r.reason for r in stats[0].rejected}
    assert "non-finite" in rejected[4] and "delta" in rejected[4]
    if shape_client is not None:
        assert rejected[1] == ("malformed update: delta['fc.bias'] has shape (3,), expected (10,)")
    assert all(torch.isfinite(t).all() for t in T.leaves(server))
    assert (bank["c"]["fc.weight"][4] == 0).all()  # a rejected client's state is not updated
    assert (bank["c"]["fc.weight"][0] != 0).any()  # the others' are
    # the round went on without the rejected clients: the model moved, but not as it would
    # have with them
    init = algo.server_init(*model.init(torch.Generator().manual_seed(0)), torch.Generator())
    clean, _, _ = run(algo, model, digits_dir, make_engine(engine), 1, sampling, work)
    for other in (init, clean):
        assert not torch.equal(other["params"]["fc.weight"], server["params"]["fc.weight"])


def test_partition_with_empty_clients_stops_before_training(tmp_path):
    cfg = RunConfig(
        dataset="breast_cancer",
        partition="label-quantity",
        classes_per_client=1,
        n_clients=400,
        rounds=1,
        out=str(tmp_path / "x"),
    )
    with pytest.raises(ValueError, match=r"clients without training data \(clients "):
        run_experiment(cfg, progress=False)
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_config_errors_are_specific(tmp_path):
    (tmp_path / "c.yaml").write_text("dataset: digits\nrounds: 2\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown config keys \\['learning_rate'\\]"):
        RunConfig.from_yaml(tmp_path / "c.yaml")
    from privlearn.fl.models import build_model

    m = build_model("mclr", (4,), 2)
    from privlearn.fl.algorithms import LocalSGD

    with pytest.raises(ValueError, match="fedprox has no hyper-parameter nu; it takes: mu=0.01"):
        build_algorithm("fedprox", m, LocalSGD(), n_clients=2, batch_size=4, nu=1)
    with pytest.raises(ValueError, match="FedBN needs a model with batch norm"):
        build_algorithm("fedbn", m, LocalSGD(), n_clients=2, batch_size=4)


def test_cli_runs_from_yaml_with_flag_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "dataset: digits\nn_clients: 4\nclients_per_round: 4\n"
        "model: mclr\nrounds: 5\nalgorithm: fedprox\n"
        "algo_params: {mu: 0.5}\n"
    )
    result = CliRunner().invoke(
        app,
        [
            "fl",
            "run",
            "--config",
            str(tmp_path / "c.yaml"),
            "--rounds",
            "2",
            "--algo-params",
            "mu=0.1",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert doc["config"]["rounds"] == 2 and doc["config"]["algo_params"] == {"mu": 0.1}
    bad = CliRunner().invoke(
        app, ["fl", "run", "--algorithm", "fedsgd", "--out", str(tmp_path / "p")]
    )
    assert bad.exit_code == 2 and "unknown algorithm 'fedsgd'" in bad.output


def test_poisson_round_can_be_empty_and_changes_nothing(digits_dir):
    from privlearn.fl.engine import make_engine

    model, algo = make("fedavg", digits_dir)
    server, bank, stats = run(
        algo,
        model,
        digits_dir,
        make_engine("vectorised"),
        3,
        Sampling("poisson", rate=1e-9),
        LocalWork(1, 16),
    )
    assert all(s.clients == [] for s in stats)
    init = algo.server_init(*model.init(torch.Generator().manual_seed(0)), torch.Generator())
    assert torch.equal(server["params"]["fc.weight"], init["params"]["fc.weight"])


class _Payload:
    """Unpickling this would create a file: the shape of a code-execution checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_checkpoint_is_refused_without_running_code(tmp_path):
    out = tmp_path / "run"
    run_experiment(RunConfig(**SMALL, rounds=1, out=str(out)), progress=False)
    marker = tmp_path / "pwned"
    ckpt = load_checkpoint(out / "checkpoint.pt")
    ckpt["rounds"].append(_Payload(marker))
    _atomic_save(ckpt, out / "checkpoint.pt")  # a valid checksum: what an attacker can write
    with pytest.raises(ValueError, match="not a privlearn checkpoint of plain tensors"):
        run_experiment(RunConfig(**SMALL, rounds=2, out=str(out)), resume=True, progress=False)
    torch.save(ckpt, out / "checkpoint.pt")  # a bare pickle
    with pytest.raises(ValueError, match="not a privlearn checkpoint"):
        load_checkpoint(out / "checkpoint.pt")
    assert not marker.exists()


def test_corrupt_or_inconsistent_checkpoints_are_refused(tmp_path):
    """28 of 40 single bit flips once resumed silently to another model; round 0 or 99 and a
    bank of the wrong size were accepted."""
    out = tmp_path / "run"
    run_experiment(RunConfig(**SMALL, rounds=2, out=str(out)), progress=False)
    path = out / "checkpoint.pt"
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    for _ in range(20):
        bad = bytearray(good)
        bad[int(rng.integers(0, len(bad)))] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(bad))
        with pytest.raises(ValueError, match="SHA-256|not a privlearn checkpoint"):
            load_checkpoint(path)
    edits = {
        "round 0": lambda c: c.update(round=0),
        "round 99": lambda c: c.update(round=99),
        "history": lambda c: c["rounds"].pop(),
        "bank": lambda c: c.update(bank=T.tree_map(lambda t: torch.cat([t, t[:1]]), c["bank"])),
    }
    for what, edit in edits.items():
        path.write_bytes(good)
        c = load_checkpoint(path)
        edit(c)
        _atomic_save(c, path)
        with pytest.raises(ValueError, match="inconsistent"):
            load_checkpoint(path)
            pytest.fail(f"a checkpoint with a changed {what} was accepted")
    path.write_bytes(good)
    assert load_checkpoint(path)["round"] == 2


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    """A finished 2-round run's checkpoint (bytes) and its loaded form."""
    out = tmp_path_factory.mktemp("two") / "run"
    run_experiment(RunConfig(**SMALL, rounds=2, out=str(out)), progress=False)
    return (out / "checkpoint.pt").read_bytes(), load_checkpoint(out / "checkpoint.pt")


def _scaled(tree, k):
    return T.tree_map(lambda t: t * k, tree)


CHECKPOINT_EDITS = {  # what `privlearn bench fuzz` re-signed into checkpoints
    "config key deleted": lambda c: c["config"].pop("root_size"),
    "config device empty": lambda c: c["config"].update(device=""),
    "config rounds a bool": lambda c: c["config"].update(rounds=True),
    "server buffers an int": lambda c: c["server"].update(buffers=-1),
    "server param a float": lambda c: c["server"]["params"].update({"fc.weight": 0.5}),
    "server wrapped in a list": lambda c: c.update(server=[c["server"]]),
    "server field added": lambda c: c["server"].update(extra=torch.zeros(1)),
    "server param deleted": lambda c: c["server"]["params"].pop("fc.bias"),
    "server control float64": lambda c: c["server"]["c"].update(
        {"fc.weight": c["server"]["c"]["fc.weight"].double()}
    ),
    "server param empty": lambda c: c["server"]["params"].update({"fc.bias": torch.empty(0)}),
    "server params NaN": lambda c: c["server"]["params"]["fc.bias"].fill_(float("nan")),
    "server params 1e30": lambda c: c["server"].update(params=_scaled(c["server"]["params"], 1e30)),
    "bank a bool": lambda c: c["bank"].update(c=False),
    "bank int64": lambda c: c["bank"]["c"].update({"fc.bias": c["bank"]["c"]["fc.bias"].long()}),
    "history entry a bool": lambda c: c["rounds"].__setitem__(1, True),
    "history loss a mapping": lambda c: c["rounds"][1].update(train_loss={"a": 1}),
    "history round renumbered": lambda c: c["rounds"][1].update(round=-3),
    "history evaluation cut": lambda c: c["rounds"][0].pop("test_acc"),
    "history accuracy negative": lambda c: c["rounds"][0].update(test_acc=-0.25),
}


@pytest.mark.parametrize("edit", list(CHECKPOINT_EDITS))
def test_resuming_a_resigned_checkpoint_that_disagrees_with_its_config_is_refused(
    two_rounds, tmp_path, edit
):
    """Re-signed fields once resumed silently to another history or ended in tracebacks
    (KeyError, TypeError, RuntimeError) deep in an algorithm."""
    good, ckpt = two_rounds
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(good)
    c = load_checkpoint(out / "checkpoint.pt")
    CHECKPOINT_EDITS[edit](c)
    _atomic_save(c, out / "checkpoint.pt")
    with pytest.raises(ValueError, match="is inconsistent: "):
        cfg = RunConfig(**{**ckpt["config"], "rounds": 3, "out": str(out)})
        run_experiment(cfg, resume=True, progress=False)


def test_a_resigned_payload_torch_cannot_read_is_refused_in_one_line(two_rounds, tmp_path):
    from privlearn.fl.run import CHECKPOINT_MAGIC

    good, _ = two_rounds
    head = len(CHECKPOINT_MAGIC) + 32
    path = tmp_path / "checkpoint.pt"
    for cut in (good[head : head + 374] + good[head + 378 :], good[head : len(good) // 2]):
        path.write_bytes(CHECKPOINT_MAGIC + hashlib.sha256(cut).digest() + cut)
        with pytest.raises(ValueError, match="is not a (readable|privlearn) checkpoint"):
            load_checkpoint(path)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lr", float("nan")),
        ("lr", float("inf")),
        ("lr", 0.0),
        ("epochs", 0),
        ("eval_every", 0),
        ("weight_decay", float("nan")),
        ("momentum", 1.0),
        ("sample_rate", 0.0),
        ("stragglers", 0.99),  # of 10 clients a round, none would stay
        ("epochs_range", [3, 1]),
        ("epochs_range", []),  # once read as "unset"
        ("sample_rate", 5.0),  # checked whatever the sampling
        # types, checked for Python callers and flags as for YAML
        ("batch_size", True),
        ("rounds", True),
        ("eval_every", 1.5),
        ("eval_every", float("nan")),
        ("epochs", 2.5),
        ("weight_decay", float("inf")),
        ("lr", "0.1"),
        ("lr", [0.1]),
        ("synthetic_iid", 1),
        ("algo_params", {"mu": float("inf")}),
        ("defence_params", {"beta": [float("nan")]}),
        # sizes that were clamped silently, overflowed or never finished planning
        ("clients_per_round", 10**12),
        ("epochs", 10**20),
        ("hidden", [10**12]),
        ("beta", 10**400),
        ("beta", 10**30),  # no float is 10^30 exactly
        ("seed", 10**30),
        ("device", ""),
        ("data_root", ""),
    ],
)
def test_config_values_out_of_range_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"config key {key}:"):
        RunConfig(**{key: value})


def test_an_unset_clients_per_round_is_ten_or_every_client():
    assert RunConfig(n_clients=5).sampling_spec().clients_per_round == 5
    assert RunConfig(n_clients=50).sampling_spec().clients_per_round == 10
    assert RunConfig(lr=1).lr == 1.0 and isinstance(RunConfig(lr=1).lr, float)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("batch_size: true\n", "config key batch_size: expected int, got True"),
        ("rounds: [1\n", "line 2, column 1: not valid YAML"),
        ("hidden: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
        ("beta: 1" + "0" * 400 + "\n", "config key beta: "),
        ("1: 2\nbogus: 3\n", "unknown config keys ['1', 'bogus']"),
        (
            "algo_params:\n  a0: &a0 [x, x, x, x, x, x, x, x]\n"  # a billion laughs
            + "".join(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 8)}]\n" for i in range(1, 8))
            + "hidden: *a7\n",
            "config key hidden: expected a list of int, got [[[[...], ",
        ),
    ],
    ids=["bool", "syntax", "deep", "huge", "int-key", "laughs"],
)
def test_bad_yaml_configs_end_in_one_line_through_the_cli(tmp_path, text, says):
    """145 of 435 fuzzed configs once ended in tracebacks."""
    (tmp_path / "c.yaml").write_text(text)
    out = CliRunner().invoke(
        app, ["fl", "run", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")]
    )
    assert out.exit_code == 2 and out.stderr.strip().count("\n") == 0, out.output
    assert says in out.stderr and len(out.stderr) < 1000  # a YAML bomb is not echoed


def test_cli_refuses_a_nan_learning_rate_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from privlearn.cli import app

    out = CliRunner().invoke(app, ["fl", "run", "--lr", "nan", "--out", str(tmp_path / "r")])
    assert out.exit_code == 2 and out.stderr.strip().count("\n") == 0
    assert "config key lr" in out.stderr


@pytest.mark.parametrize("engine", ["sequential", "vectorised"])
@pytest.mark.parametrize("weight", [0.0, -3.0, 1e12])
def test_weights_outside_what_the_server_knows_are_rejected(engine, weight, digits_dir):
    """All-zero weights made the mean 0/0 (a NaN model); a weight is a sample count, so it
    must lie in (0, n] for the client's n."""
    from dataclasses import replace

    from privlearn.fl.engine import make_engine

    model, algo = make("fedavg", digits_dir)

    def client_final(s, lo):
        up, cs = algo.client_final(s, lo)
        return replace(up, weight=torch.full_like(up.weight, weight)), cs

    liar = replace(algo, client_final=client_final)
    server, _, stats = run(
        liar, model, digits_dir, make_engine(engine), 1, Sampling("all"), LocalWork(1, 16)
    )
    assert len(stats[0].rejected) == len(stats[0].clients)
    assert all("weight" in r.reason and "outside (0," in r.reason for r in stats[0].rejected)
    assert all(torch.isfinite(t).all() for t in T.leaves(server)) and stats[0].train_loss is None
    assert stats[0].skipped == "no valid update: all 6 were rejected"


def _every_client(algo, edit):
    """`algo` whose every client uploads `edit(update)`."""
    from dataclasses import replace

    def client_final(s, lo):
        up, cs = algo.client_final(s, lo)
        return edit(up), cs

    return replace(algo, client_final=client_final)


@pytest.mark.parametrize("engine", ["sequential", "vectorised"])
@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (
            lambda d: d.double(),
            "delta['fc.weight'] has dtype torch.float64, expected torch.float32",
        ),
        (lambda d: d.long(), "delta['fc.weight'] has dtype torch.int64, expected torch.float32"),
        (lambda d: torch.full_like(d, 1e30), "values beyond ±1.8e+19"),
    ],
    ids=["float64", "int64", "1e30"],
)
def test_every_client_sending_a_bad_delta_skips_the_round_by_name(engine, edit, reason, digits_dir):
    """A float64 delta from the whole cohort crashed the next round, an int64 one was
    truncated silently, finite 1e30 deltas made FedAdam's model Inf; each is now rejected
    (the server computes in the model's precision, and squares of values beyond sqrt(max)
    overflow) and a round with nothing left says so and leaves the model as it was."""
    from dataclasses import replace

    from privlearn.fl.engine import make_engine

    model, algo = make("fedadam", digits_dir)
    bad = _every_client(algo, lambda up: replace(up, delta=T.tree_map(edit, up.delta)))
    server, _, stats = run(
        bad, model, digits_dir, make_engine(engine), 2, Sampling("all"), LocalWork(1, 16)
    )
    init = algo.server_init(*model.init(torch.Generator().manual_seed(0)), torch.Generator())
    assert all(len(s.rejected) == 6 and reason in s.rejected[0].reason for s in stats)
    assert [s.skipped for s in stats] == ["no valid update: all 6 were rejected"] * 2
    assert T.leaves(server) and all(map(torch.equal, T.leaves(server), T.leaves(init)))


def test_a_server_step_that_overflows_is_discarded_not_applied(digits_dir):
    """Screened inputs can still overflow in the server's step (here a server learning rate
    of 1e39): the round is skipped by name and neither the model nor any client state moves."""
    from privlearn.fl.aggregate import chain, sgd, weighted_mean
    from privlearn.fl.engine import make_engine

    model, algo = make("scaffold", digits_dir, server=chain(weighted_mean(), sgd(1e39)))
    server, bank, stats = run(
        algo, model, digits_dir, make_engine("vectorised"), 1, Sampling("all"), LocalWork(1, 16)
    )
    assert stats[0].rejected == [] and stats[0].skipped.startswith("the aggregate is not finite")
    assert all(torch.isfinite(t).all() for t in T.leaves(server))
    assert (bank["c"]["fc.weight"] == 0).all()  # no client's control variate was written


def test_a_1e30_attacker_is_rejected_and_the_run_still_learns(tmp_path):
    """Finite 1e30 updates once set the test loss to 2.6e29 in a run that "completed"."""
    cfg = RunConfig(
        **{**SMALL, "algorithm": "fedavg", "clients_per_round": 6},
        attack="sign-flip",
        attackers=0.34,
        attack_params={"scale": 1e30},
        rounds=2,
        out=str(tmp_path),
    )
    doc = run_experiment(cfg, progress=False)
    for e in doc["rounds"]:
        assert len(e["rejected"]) == 2 and all("beyond ±1.8e+19" in r for r in e["rejected"])
    assert doc["rounds"][-1]["test_loss"] < 3 and doc["rounds"][-1]["skipped"] is None


def test_rounds_that_apply_no_update_are_recorded_and_reported(tmp_path, monkeypatch, capsys):
    import privlearn.fl.run as fl_run
    from privlearn.fl.rounds import RoundStats

    def nothing_valid(algo, engine, server, bank, plan, *a):
        return server, RoundStats(
            plan.clients.tolist(), skipped="no valid update: all 4 were rejected"
        )

    monkeypatch.setattr(fl_run, "run_round", nothing_valid)
    doc = run_experiment(RunConfig(**SMALL, rounds=2, out=str(tmp_path)), progress=False)
    assert [e["skipped"] for e in doc["rounds"]] == ["no valid update: all 4 were rejected"] * 2
    assert "2 of 2 rounds applied no update" in capsys.readouterr().out


def test_an_update_of_another_dtype_is_malformed(digits_dir):
    from dataclasses import replace

    from privlearn.fl.engine import make_engine

    model, algo = make("fedavg", digits_dir)

    def client_final(s, lo):
        up, cs = algo.client_final(s, lo)
        if int(lo["who"]) == 2:
            up = replace(up, delta={k: v.double() for k, v in up.delta.items()})
        return up, cs

    def client_init(s, cs, info):
        return {**algo.client_init(s, cs, info), "who": info["id"]}

    odd = replace(algo, client_init=client_init, client_final=client_final)
    _, _, stats = run(
        odd, model, digits_dir, make_engine("sequential"), 1, Sampling("all"), LocalWork(1, 16)
    )
    (r,) = stats[0].rejected
    assert r.client == 2 and "dtype torch.float64, expected torch.float32" in r.reason


def test_an_interrupt_before_a_rounds_checkpoint_leaves_metrics_that_agree(tmp_path, monkeypatch):
    """Ctrl-C between a round's metrics entry and its checkpoint: the metrics must not claim
    the unsaved round (the Ctrl-C test hit this window now and then)."""
    import privlearn.fl.run as fl_run

    real, calls = fl_run._atomic_save, []

    def save_then_interrupt(obj, path):
        calls.append(obj["round"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(obj, path)

    monkeypatch.setattr(fl_run, "_atomic_save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(RunConfig(**SMALL, rounds=3, out=str(tmp_path)), progress=False)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert load_checkpoint(tmp_path / "checkpoint.pt")["round"] == 1
    assert [e["round"] for e in doc["rounds"]] == [1] and doc["status"] == "interrupted"


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path):
    """Two runs on one --out both exited 0 and the last writer won; now the second is told."""
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # what a running `fl run` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FileExistsError, match="in use by another privlearn run"):
            run_experiment(RunConfig(**SMALL, rounds=1, out=str(out)), progress=False)
    assert not (out / "checkpoint.pt").exists()
    run_experiment(RunConfig(**SMALL, rounds=1, out=str(out)), progress=False)  # released
