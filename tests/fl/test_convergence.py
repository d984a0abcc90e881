"""Every algorithm reaches a stated accuracy on a stated seeded task within stated rounds.

Tasks (scikit-learn digits, multinomial logistic regression unless noted, 10 clients, all
sampled, 1 local epoch, batch 32, client lr 0.1, seed 0, vectorised engine):
- global algorithms: label Dirichlet(0.5) split, accuracy of the global model on the pooled
  test set after 10 rounds;
- personalised ones: #C=2 label skew, 20 % of each client held out, accuracy of each
  client's personal model on its own held-out rows after 10 rounds;
- IFCA: 8 IID clients of which 4 see labels shifted by 5 (two "clusters" of tasks).
The bars sit a few points under what the run reaches; a broken update rule misses them.
"""

from __future__ import annotations

import pytest
import torch

from privlearn.fl.run import Experiment, RunConfig

GLOBAL = {  # algorithm: (hyper-parameters, accuracy bar)
    "fedavg": ({}, 0.80),
    "fedprox": ({"mu": 0.01}, 0.80),
    "scaffold": ({}, 0.78),
    "fednova": ({}, 0.79),
    "feddyn": ({"alpha": 0.01}, 0.87),
    "fedavgm": ({"server_momentum": 0.5}, 0.84),
    "fedadam": ({"server_lr": 0.03}, 0.83),
    "fedyogi": ({"server_lr": 0.03}, 0.83),
    "fedadagrad": ({"server_lr": 0.1}, 0.86),
}
PERSONAL = {
    "ditto": ({}, "mclr", 0.95),
    "pfedme": ({"personal_lr": 0.05}, "mclr", 0.92),
    "perfedavg": ({"alpha": 0.1}, "mclr", 0.70),
    "fedfomo": ({}, "mclr", 0.95),
    "fedbn": ({}, "mlp-bn", 0.78),
}


def _train(rounds=10, prepare=None, **kw) -> dict:
    cfg = RunConfig(
        **{
            "dataset": "digits",
            "partition": "label-dirichlet",
            "n_clients": 10,
            "clients_per_round": 10,
            "rounds": rounds,
            "epochs": 1,
            "batch_size": 32,
            "lr": 0.1,
            "model": "mclr",
            "hidden": [32],
            **kw,
        }
    )
    exp = Experiment.build(cfg)
    if prepare:
        prepare(exp.data)
    server, bank = exp.init_state()
    for r in range(rounds):
        server, _, _ = exp.round(server, bank, r)
    return exp.evaluate(server, bank)


@pytest.mark.parametrize("name", GLOBAL)
def test_global_model_accuracy(name):
    hp, bar = GLOBAL[name]
    assert _train(algorithm=name, algo_params=hp)["test_acc"] >= bar


@pytest.mark.parametrize("name", PERSONAL)
def test_personal_model_accuracy(name):
    hp, model, bar = PERSONAL[name]
    out = _train(
        algorithm=name,
        algo_params=hp,
        model=model,
        partition="label-quantity",
        classes_per_client=2,
    )
    assert out["personal_acc"] >= bar


def _two_tasks(ds):
    """Clients 4-7 see every label shifted by 5: one model cannot fit both groups."""
    for i in range(4, 8):
        rows = torch.as_tensor(ds.clients[i])
        ds.y_train[rows] = (ds.y_train[rows] + 5) % 10
        test = torch.as_tensor(ds.local_tests[i])
        ds.y_local[test] = (ds.y_local[test] + 5) % 10


def test_ifca_separates_two_tasks_that_fedavg_cannot_fit():
    common = {
        "partition": "homo",
        "n_clients": 8,
        "clients_per_round": 8,
        "local_test_fraction": 0.2,
        "prepare": _two_tasks,
    }
    ifca = _train(algorithm="ifca", algo_params={"n_clusters": 2}, **common)
    fedavg = _train(algorithm="fedavg", **common)
    assert ifca["personal_acc"] >= 0.75
    assert fedavg["test_acc"] <= 0.5  # the single model averages two contradicting tasks
