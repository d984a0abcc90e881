"""Local DP-SGD: per-sample clipping against Opacus and by hand, the noise's scale, the
Poisson record sampler, engine equality with noise on, exact resume, and the accounting."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from privlearn.fl import tree as T
from privlearn.fl.algorithms import LocalSGD, build_algorithm
from privlearn.fl.data import DataSpec, build_federated
from privlearn.fl.engine import make_engine
from privlearn.fl.evaluate import accuracy
from privlearn.fl.models import build_model
from privlearn.fl.plan import LocalWork, Sampling, client_poisson, plan_round
from privlearn.fl.privacy.accountant import Participation, epsilon
from privlearn.fl.privacy.local import (
    LocalDP,
    client_epsilon,
    clipped_sum,
    private,
    private_grad,
    sampling_rates,
    worst_epsilon,
)

from ..helpers import max_abs_diff, run

POISSON = LocalWork(epochs=1, batch_size=16, sampler="poisson")


def _private(name, ds, dp, work=POISSON, model="mclr", lr=0.1, **hp):
    m = build_model(model, ds.input_shape, ds.n_classes, (32,))
    algo = build_algorithm(
        name, m, LocalSGD(lr), n_clients=ds.n_clients, batch_size=work.batch_size, **hp
    )
    return m, private(algo, m, dp, work)


def _module(name: str, params: dict) -> nn.Module:
    """An nn.Module holding `params` of privlearn's mclr or mlp (hidden 32)."""
    if name == "mclr":
        mod = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        names = {"1.weight": "fc.weight", "1.bias": "fc.bias"}
    else:
        mod = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        names = {"1.weight": "fc1.weight", "1.bias": "fc1.bias"}
        names |= {"3.weight": "out.weight", "3.bias": "out.bias"}
    with torch.no_grad():
        for k, p in mod.named_parameters():
            p.copy_(params[names[k]])
    return mod, names


# Opacus's hooks fire on module outputs when the inputs need no gradient: its business
@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.parametrize("name", ["mclr", "mlp"])
def test_clipped_sum_equals_opacus(name):
    """Our clipped per-sample gradient sum equals Opacus's (GradSampleModule + DPOptimizer's
    flat clipping) on the same batch and weights; some samples are clipped, some not."""
    model = build_model(name, (64,), 10, (32,))
    params, buffers = model.init(torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 64, generator=g) * torch.linspace(0.05, 3, 12)[:, None]
    y = torch.randint(0, 10, (12,), generator=g)
    mod, names = _module(name, params)
    gsm = GradSampleModule(mod, loss_reduction="sum")
    nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
    norms = torch.stack([p.grad_sample.flatten(1).norm(dim=1) for p in gsm.parameters()])
    clip = float(norms.norm(dim=0).median())  # half the samples clipped
    opt = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=12,
        loss_reduction="sum",
    )
    opt.clip_and_accumulate()
    theirs = {names[k.removeprefix("_module.")]: p.summed_grad for k, p in gsm.named_parameters()}
    ours, _ = clipped_sum(model, params, buffers, {"x": x, "y": y, "mask": torch.ones(12)}, clip)
    assert max_abs_diff(ours, theirs) < 1e-6


def test_clipping_by_hand_and_padding_contributes_nothing():
    """Zero weights on 2 features, 2 classes: softmax (1/2, 1/2), so a sample's gradient is
    dW = (p - e_y) x^T, db = p - e_y. x=(3, 4), y=0: ||g||^2 = 2(2.25 + 4) + 0.5 = 13, clipped
    to C = 1 by 1/sqrt(13); x=(0, 0.2), y=1: ||g||^2 = 0.52 < 1, kept. A padding row (mask 0,
    huge features) adds nothing."""
    model = build_model("mclr", (2,), 2)
    params = {"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}
    x = torch.tensor([[3.0, 4.0], [0.0, 0.2], [1e3, -1e3]])
    batch = {"x": x, "y": torch.tensor([0, 1, 1]), "mask": torch.tensor([1.0, 1.0, 0.0])}
    ours, loss = clipped_sum(model, params, {}, batch, 1.0)
    s = 1 / (math.sqrt(13) + 1e-6)
    w = s * torch.tensor([[-1.5, -2.0], [1.5, 2.0]]) + torch.tensor([[0.0, 0.1], [0.0, -0.1]])
    b = s * torch.tensor([-0.5, 0.5]) + torch.tensor([0.5, -0.5])
    assert torch.allclose(ours["fc.weight"], w, atol=1e-6)
    assert torch.allclose(ours["fc.bias"], b, atol=1e-6)
    assert loss == pytest.approx(math.log(2), abs=1e-6)
    unpadded = {k: v[:2] for k, v in batch.items()}
    assert max_abs_diff(clipped_sum(model, params, {}, unpadded, 1.0)[0], ours) < 1e-7


def test_noise_std_is_z_clip_over_expected_batch():
    """On a batch with no real sample, the DP gradient is pure noise of std z C / (q n):
    z = 2, C = 0.5, n = 100, B = 10 (q n = 10) give 0.1. 400 steps of 650 coordinates:
    the sample std's relative error is about 1/sqrt(2 * 260000) = 0.14 %; tolerance 1 %."""
    ds = build_federated(DataSpec("digits", 2, "homo"), seed=0)
    work = LocalWork(batch_size=10, sampler="poisson")
    model, algo = _private("fedavg", ds, LocalDP(0.5, 2.0, seed=3), work)
    server = algo.server_init(*model.init(torch.Generator().manual_seed(0)), None)
    info = {"id": torch.tensor(0), "n": torch.tensor(100.0)}
    lo = algo.client_init(server, algo.client_state_init(server), info)
    empty = {"x": ds.x_train[:1], "y": ds.y_train[:1], "mask": torch.zeros(1)}
    draws = []
    for _ in range(400):
        lo, empty["noise"] = algo.step_noise(lo, False)
        g, _, _ = private_grad(model, lo["params"], lo["buffers"], empty, lo["dp"])
        draws.append(torch.cat([v.flatten() for v in g.values()]))
    d = torch.stack(draws).double()
    assert d.std().item() == pytest.approx(0.1, rel=0.01)
    assert abs(d.mean().item()) < 4 * 0.1 / math.sqrt(d.numel())


def test_poisson_inclusion_rate_and_repeatability(digits_dir):
    """Each record enters a step with probability q = B / n (4-sigma band over 2000 steps);
    the plan repeats from (seed, round); its padded batches hold exactly the drawn rows."""
    idx = np.arange(50)
    batches = client_poisson(idx, 0.2, 2000, 0, 0, 3)
    rate = sum(len(b) for b in batches) / (2000 * 50)
    assert abs(rate - 0.2) < 4 * math.sqrt(0.2 * 0.8 / (2000 * 50))
    a = plan_round(digits_dir.clients, Sampling("all"), POISSON, 7, 2)
    b = plan_round(digits_dir.clients, Sampling("all"), POISSON, 7, 2)
    c = plan_round(digits_dir.clients, Sampling("all"), POISSON, 7, 3)
    assert torch.equal(a.drawn, b.drawn) and torch.equal(a.drawn_len, b.drawn_len)
    assert not torch.equal(a.drawn_len, c.drawn_len)
    assert a.batch_size == int(a.drawn_len.max())  # padded to the largest draw, never cut
    rows = torch.arange(len(a))
    for t in range(int(a.steps.max())):
        ids, mask = a.batch_rows(rows, t)
        for r in range(len(a)):
            got = ids[r][mask[r]] if t < a.steps[r] else ids[r][:0]
            want = a.client_batch(r, t) if t < a.steps[r] else got
            assert torch.equal(got, want)
            assert set(got.tolist()) <= set(digits_dir.clients[int(a.clients[r])].tolist())
    assert torch.equal(a.steps, torch.as_tensor([-(-len(c) // 16) for c in digits_dir.clients]))


@pytest.mark.parametrize(
    "name, work",
    [("fedavg", POISSON), ("fedprox", POISSON), ("feddyn", POISSON), ("fedadam", POISSON)]
    + [("fedavg", LocalWork(epochs=2, batch_size=16))],
)
def test_engines_agree_with_noise_on(digits_dir, name, work):
    """Each client draws its noise from its own generator, so both engines draw the same
    numbers for the same client and step: models and client states equal to float32
    rounding, noise states and step counts exactly (both samplers)."""
    dp = LocalDP(1.0, 1.0, seed=5)
    model, algo = _private(name, digits_dir, dp, work, model="mlp")
    out = [
        run(algo, model, digits_dir, make_engine(e), 2, Sampling("uniform", 4), work)
        for e in ("sequential", "vectorised")
    ]
    (s1, b1, _), (s2, b2, _) = out
    assert max_abs_diff(s1["params"], s2["params"]) < 1e-5
    assert max_abs_diff(b1, b2) < 1e-5
    dp1, dp2 = T.leaves(b1["dp"]), T.leaves(b2["dp"])
    assert all(torch.equal(u, v) for u, v in zip(dp1, dp2, strict=True))
    assert b1["dp"]["steps"].sum() > 0


def test_resume_is_exact_with_secret_noise(digits_dir):
    """OS-entropy noise (no seed): a run checkpointed after round 1 (torch.save of server and
    bank) and resumed equals the uninterrupted run bit for bit; a second run differs."""
    model, algo = _private("fedavg", digits_dir, LocalDP(1.0, 1.0))
    engine, sampling = make_engine("vectorised"), Sampling("all")
    from privlearn.fl.engine import TrainData
    from privlearn.fl.rounds import init_federation, run_round, server_rng

    data = TrainData(digits_dir.x_train, digits_dir.y_train)

    def rounds(server, bank, rs):
        for r in rs:
            plan = plan_round(digits_dir.clients, sampling, POISSON, 0, r)
            server, _ = run_round(algo, engine, server, bank, plan, data, server_rng(0, r))
        return server, bank

    server, bank = rounds(*init_federation(algo, model, digits_dir.n_clients, 0), [0])
    buf = io.BytesIO()
    torch.save((server, bank), buf)
    buf.seek(0)
    resumed = rounds(*torch.load(buf), [1])
    straight = rounds(server, copy.deepcopy(bank), [1])
    assert max_abs_diff(resumed, straight) == 0.0
    other = rounds(*rounds(*init_federation(algo, model, digits_dir.n_clients, 0), [0]), [1])
    assert max_abs_diff(other[0]["params"], straight[0]["params"]) > 0


def test_client_epsilon_is_the_accountants(digits_dir):
    """Client state counts DP steps (2 rounds of ceil(n / B) steps) and the rate B / n;
    client_epsilon is accountant.epsilon of those, Poisson for the Poisson sampler and one
    unamplified step per epoch for the shuffle sampler."""
    dp = LocalDP(1.0, 1.2, seed=0)
    shuffle = LocalWork(epochs=2, batch_size=16)
    for work in (POISSON, shuffle):
        model, algo = _private("fedavg", digits_dir, dp, work)
        _, bank, _ = run(
            algo, model, digits_dir, make_engine("vectorised"), 2, Sampling("all"), work
        )
        n = np.array([len(c) for c in digits_dir.clients])
        steps = 2 * work.epochs * -(-n // 16)
        assert bank["dp"]["steps"].tolist() == steps.tolist()
        assert bank["dp"]["epochs"].tolist() == [2 * work.epochs] * len(n)
        assert sampling_rates(bank, work) == (16 / n).tolist()
        eps = client_epsilon(bank, dp, work, 1e-5)
        for i in (0, 3):
            p = Participation("poisson", 16 / n[i]) if work is POISSON else Participation("every")
            s = int(steps[i]) if work is POISSON else 2 * work.epochs
            assert eps[i] == epsilon(1.2, s, 1e-5, p)
        assert worst_epsilon(bank, dp, work, 1e-5) == (max(eps), int(np.argmax(eps)))


def test_dp_sgd_still_learns_at_small_noise():
    """digits over 10 clients (iid), mlp, z = 0.5, C = 1, 8 rounds of one Poisson epoch:
    test accuracy >= 0.8 (0.825 measured with noise seed 0; 0.85 and 0.83 with seeds 1 and 2;
    non-private fedavg on the same run: 0.92)."""
    ds = build_federated(DataSpec("digits", 10, "homo"), seed=0)
    model, algo = _private("fedavg", ds, LocalDP(1.0, 0.5, seed=0), model="mlp", lr=0.5)
    server, _, _ = run(algo, model, ds, make_engine("vectorised"), 8, Sampling("all"), POISSON)
    acc, _ = accuracy(model, *algo.global_model(server), ds.x_test, ds.y_test)
    assert acc >= 0.8


def test_refusals(digits_dir):
    dp = LocalDP(1.0, 1.0)
    with pytest.raises(ValueError, match="batch norm"):
        _private("fedavg", digits_dir, dp, model="mlp-bn")
    with pytest.raises(ValueError, match="does not support scaffold"):
        _private("scaffold", digits_dir, dp)
    with pytest.raises(ValueError, match="does not support ditto"):
        _private("ditto", digits_dir, dp)
    model, algo = _private("fedavg", digits_dir, dp)
    plan = plan_round(digits_dir.clients, Sampling("all"), POISSON, 0, 0)
    engine = make_engine("vectorised", compile=True)
    with pytest.raises(ValueError, match="compile off"):
        engine.run_clients(algo, {}, None, plan, None)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"clip": 0.0, "noise_multiplier": 1.0}, "clip"),
        ({"clip": -1.0, "noise_multiplier": 1.0}, "clip"),
        ({"clip": float("nan"), "noise_multiplier": 1.0}, "clip"),
        ({"clip": 1.0, "noise_multiplier": -0.1}, "noise multiplier"),
        ({"clip": 1.0, "noise_multiplier": float("inf")}, "noise multiplier"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocalDP(**kwargs)


def test_bad_sampler():
    with pytest.raises(ValueError, match="sampler"):
        LocalWork(sampler="bernoulli")
    with pytest.raises(ValueError, match="drop_last"):
        LocalWork(sampler="poisson", drop_last=True)


def test_rejected_update_still_spends_noise_and_steps(digits_dir):
    """A client whose update screening rejects (here: a NaN delta) has still sent it: its
    noise state and DP step count advance, so its noise is never reused."""
    from privlearn.fl.engine import TrainData
    from privlearn.fl.rounds import init_federation, run_round, server_rng

    model, algo = _private("fedavg", digits_dir, LocalDP(1.0, 1.0, seed=0))
    inner = make_engine("vectorised")

    class Breaks:
        name = "breaks"

        def run_clients(self, *args):
            out = inner.run_clients(*args)
            out.updates.delta["fc.bias"][0] = float("nan")
            return out

    server, bank = init_federation(algo, model, digits_dir.n_clients, 0)
    before = copy.deepcopy(bank["dp"])
    plan = plan_round(digits_dir.clients, Sampling("all"), POISSON, 0, 0)
    data = TrainData(digits_dir.x_train, digits_dir.y_train)
    _, stats = run_round(algo, Breaks(), server, bank, plan, data, server_rng(0, 0))
    first = int(plan.clients[0])
    assert [r.client for r in stats.rejected] == [first]
    assert bank["dp"]["steps"][first] == plan.steps[0] > before["steps"][first]
    assert not torch.equal(bank["dp"]["noise"][first], before["noise"][first])
