"""Closed-form gradients (mclr's, algorithms/base.py `linear_loss_grad`) equal autograd's, in
every algorithm they reach through `loss_grad`, and are refused where they do not apply."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

from privlearn.fl.algorithms import ALGORITHMS, LocalSGD, build_algorithm
from privlearn.fl.algorithms.base import loss_grad
from privlearn.fl.engine import make_engine
from privlearn.fl.models import build_model, with_closed_form
from privlearn.fl.run import Experiment, RunConfig

from .helpers import LocalWork, Sampling, max_abs_diff, run
from .test_equivalence import HP

WORK = LocalWork(
    epochs=2, batch_size=16, epochs_range=(1, 2), stragglers=0.34, straggler_policy="partial"
)


def test_linear_gradient_equals_autograd_on_padded_batches():
    """Per client, under vmap: padded rows and an all-padding batch included (float64)."""
    model = build_model("mclr", (3, 4), 5)
    g = torch.Generator().manual_seed(0)
    params, _ = model.init(g)
    k, b = 4, 7
    stacked = {
        n: p.expand(k, *p.shape) + torch.randn(k, *p.shape, generator=g) for n, p in params.items()
    }
    stacked = {n: p.double() for n, p in stacked.items()}
    batch = {
        "x": torch.randn(k, b, 3, 4, generator=g, dtype=torch.float64),
        "y": torch.randint(0, 5, (k, b), generator=g),
        "mask": (torch.rand(k, b, generator=g) > 0.4).double(),
    }
    batch["mask"][-1] = 0.0
    grads = lambda m: vmap(lambda p, bt: loss_grad(m, p, {}, bt))(stacked, batch)  # noqa: E731
    auto, closed = grads(model), grads(with_closed_form(model))
    assert max_abs_diff(auto[0], closed[0]) < 1e-12
    assert max_abs_diff(auto[1], closed[1]) < 1e-12
    assert float(closed[0]["fc.weight"][-1].abs().max()) == 0.0


@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n != "fedbn"])
def test_every_algorithm_trains_the_same_with_closed_form_gradients(name, digits_dir):
    """One round on the vectorised engine, float64: the same server and client states."""
    out = []
    for closed in (False, True):
        model = build_model("mclr", digits_dir.input_shape, digits_dir.n_classes)
        model = with_closed_form(model) if closed else model
        algo = build_algorithm(
            name,
            model,
            LocalSGD(0.05, 0.5, 1e-3),
            n_clients=digits_dir.n_clients,
            batch_size=16,
            **HP.get(name, {}),
        )
        server, bank, _ = run(
            algo,
            model,
            digits_dir,
            make_engine("vectorised"),
            1,
            Sampling("uniform", 4),
            WORK,
            dtype=torch.float64,
        )
        out.append((server, bank))
    assert max_abs_diff(out[0][0], out[1][0]) < 1e-10
    assert max_abs_diff(out[0][1], out[1][1]) < 1e-10


def test_fedbn_has_no_closed_form():
    """FedBN's models carry batch norm: no written-out gradient, said so."""
    with pytest.raises(ValueError, match="mclr .one linear layer. only, not 'mlp-bn'"):
        with_closed_form(build_model("mlp-bn", (64,), 10))


def test_config_refuses_closed_form_where_it_does_not_apply():
    with pytest.raises(ValueError, match="config key closed_form: closed-form .* not 'cnn'"):
        Experiment.build(RunConfig(dataset="digits", model="cnn", closed_form=True, n_clients=4))
    with pytest.raises(ValueError, match="config key closed_form: --dp local"):
        RunConfig(dp="local", target_epsilon=8.0, closed_form=True)
