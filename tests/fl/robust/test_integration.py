"""Attacks and defences on every engine and every algorithm, through the CLI, and resumed."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from privlearn.cli import app
from privlearn.fl import tree as T
from privlearn.fl.algorithms import ALGORITHMS
from privlearn.fl.robust import ATTACKS
from privlearn.fl.run import Experiment, RunConfig, run_experiment
from tests.fl.helpers import max_abs_diff
from tests.fl.robust.helpers import SMALL, final, small_run


def _train(rounds: int = 2, **kw) -> dict:
    exp = Experiment.build(RunConfig(**{**SMALL, "rounds": rounds, **kw}))
    server, bank = exp.init_state()
    for r in range(rounds):
        server, _, _ = exp.round(server, bank, r)
    return server


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attackers_train_in_the_cohort_alike_on_both_engines(attack):
    """Every attack, with a defence, gives the same server on the vectorised engine as on
    the sequential reference, and differs from the clean run (the attack acted). The fields
    attack poisons batch-norm statistics, so it runs on the MLP with batch norm."""
    task = {"clients_per_round": 6, "model": "mlp-bn" if attack == "fields" else "mlp"}
    kw = {"attack": attack, "attackers": 0.3, "defence": "median", **task}
    vec = _train(engine="vectorised", **kw)
    seq = _train(engine="sequential", **kw)
    assert max_abs_diff(vec, seq) < 1e-4
    clean = _train(engine="vectorised", defence="median", **task)
    assert max_abs_diff(vec, clean) > 1e-4


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a != "fedfomo"])
@pytest.mark.parametrize("defence", ["median", "krum"])
def test_every_algorithm_takes_a_defence(algorithm, defence):
    """Both row forms (aggregate, selection) run on every algorithm, batch-norm buffers and
    extras included, and leave a finite server state."""
    if (algorithm, defence) == ("ifca", "krum"):  # clusters of one row: see the next test
        pytest.skip("Krum cannot run on IFCA's small clusters")
    server = _train(
        algorithm=algorithm,
        model="mlp-bn",
        attack="gaussian",
        attackers=0.2,
        attack_params={"sigma": 10.0},
        defence=defence,
    )
    assert all(torch.isfinite(t).all() for t in _tensors(server))


def _tensors(tree):
    return [t for t in T.leaves(tree) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def test_a_cluster_too_small_for_the_defence_is_a_clear_error():
    """IFCA is defended cluster by cluster; a cluster of one row cannot give Krum K >= 3."""
    with pytest.raises(ValueError, match=r"cohort of 1 \(cluster 0\) .* K >= 2f \+ 3"):
        _train(algorithm="ifca", model="mlp-bn", defence="krum", defence_f=0)


def test_fedfomo_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="fedfomo uploads whole models"):
        small_run(tmp_path, algorithm="fedfomo", defence="median")


def test_a_defended_run_resumes_to_the_same_model(tmp_path):
    """The defence's state is in the checkpoint: 3 rounds, then 2 more, equal 5 at once."""
    kw = dict(attack="sign-flip", attackers=0.2, defence="krum")
    whole = small_run(tmp_path, "whole", rounds=5, **kw)
    small_run(tmp_path, "split", rounds=3, **kw)
    cfg = RunConfig(**{**SMALL, "rounds": 5, **kw, "out": str(tmp_path / "split")})
    resumed = run_experiment(cfg, resume=True, progress=False)
    assert final(resumed)["test_acc"] == final(whole)["test_acc"]
    assert [e["excluded"] for e in resumed["rounds"]] == [e["excluded"] for e in whole["rounds"]]


def test_cli_runs_an_attack_against_a_defence(tmp_path):
    out = tmp_path / "cli"
    args = ["fl", "run", "--dataset", "digits", "--model", "mlp", "--hidden", "32"]
    args += ["--rounds", "2", "--epochs", "1", "--threads", "1", "--out", str(out)]
    args += ["--attack", "label-flip", "--attackers", "0.2", "--attack-params", "target=7"]
    args += ["--defence", "krum"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "metrics.json").read_text())
    e = doc["rounds"][-1]
    assert {"attackers", "excluded", "false_positives", "backdoor_acc"} <= set(e)
    bad = CliRunner().invoke(app, ["fl", "run", "--attack", "nope", "--attackers", "0.2"])
    assert bad.exit_code == 2 and "label-flip" in bad.output
