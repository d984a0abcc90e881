"""Trust-weighted defences: FLTrust (root-set reference update) and RFFL (reputation)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from privlearn.fl.algorithms.base import ClientUpdate, LocalSGD, loss_grad
from privlearn.fl.models import logistic_regression
from privlearn.fl.robust import build_defence
from privlearn.fl.robust.defences.trust import server_update, trust_scores
from privlearn.fl.robust.threat import DefenceContext
from privlearn.fl.run import RunConfig, run_experiment
from tests.fl.robust.helpers import SMALL, final, small_run

CLEAN_ACC = 0.9166  # the small task without attack or defence (measured: 0.917)


def _update(rows: list[list[float]], buffers: list[list[float]] | None = None) -> ClientUpdate:
    k = len(rows)
    return ClientUpdate(
        delta={"w": torch.tensor(rows, dtype=torch.float64)},
        weight=torch.ones(k, dtype=torch.float64),
        loss=torch.zeros(k, dtype=torch.float64),
        steps=torch.ones(k, dtype=torch.float64),
        buffers={} if buffers is None else {"bn": torch.tensor(buffers, dtype=torch.float64)},
        extras={},
    )


def _ctx(k: int, r: int = 0, **kw) -> DefenceContext:
    return DefenceContext(
        round=r,
        params=kw.pop("params", {}),
        buffers=kw.pop("buffers", {}),
        clients=kw.pop("clients", torch.arange(k)),
        f=kw.pop("f", 0),
        rng=torch.Generator().manual_seed(0),
        n_clients=k,
        **kw,
    )


def test_fltrust_rule_by_hand():
    """g0 = (3, 4): rows of cosine 1, -1, 0.8 and 0 get scores 1, 0, 0.8, 0; rescaled to
    norm 5 the kept rows are (3, 4) and (0, 5), and their mix (3, 8) / 1.8."""
    m = torch.tensor([[6.0, 8.0], [-3.0, -4.0], [0.0, 2.0], [4.0, -3.0]], dtype=torch.float64)
    scores, rescaled = trust_scores(m, torch.tensor([3.0, 4.0], dtype=torch.float64))
    assert torch.allclose(scores, torch.tensor([1.0, 0.0, 0.8, 0.0], dtype=torch.float64))
    assert torch.allclose(rescaled[0], torch.tensor([3.0, 4.0], dtype=torch.float64))
    assert torch.allclose(rescaled[2], torch.tensor([0.0, 5.0], dtype=torch.float64))
    agg = (scores / scores.sum()) @ rescaled
    assert torch.allclose(agg, torch.tensor([3 / 1.8, 8 / 1.8], dtype=torch.float64))


def _root_ctx(k: int, lr: float = 0.5) -> tuple[DefenceContext, dict]:
    model = logistic_regression((3,), 2)
    params, buffers = model.init(torch.Generator().manual_seed(1))
    params = {n: p.to(torch.float64) for n, p in params.items()}
    x = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    ctx = _ctx(k, params=params, buffers=buffers, model=model, local=LocalSGD(lr), root=(x, y))
    return ctx, params


def test_fltrust_server_update_is_local_sgd_on_the_root_set():
    """One step with a batch of the whole root set is -lr times the full-batch gradient."""
    ctx, params = _root_ctx(3)
    g0 = server_update(ctx, steps=1, batch_size=4)
    x, y = ctx.root
    batch = {"x": x, "y": y, "mask": torch.ones(4, dtype=torch.float64)}
    grads, _, _ = loss_grad(ctx.model, params, {}, batch)
    for name in params:
        assert torch.allclose(g0[name], -0.5 * grads[name])


def test_fltrust_keeps_rows_aligned_with_the_root_update():
    """Client rows g0, -g0 and 3 g0: scores 1, 0, 1, every row becomes g0 (the kept rows
    rescaled to ||g0||); if every row points away, the round keeps the global model."""
    ctx, params = _root_ctx(3)
    g0 = server_update(ctx, steps=1, batch_size=32)  # steps 1 = the clients' median here
    flat = torch.cat([g0[n].reshape(-1) for n in params])
    rows = torch.stack([flat, -flat, 3 * flat])
    u = dataclasses.replace(_update([[0.0]] * 3), delta=_split(rows, params))
    fl = build_defence("fltrust")
    out, _, factor = fl.apply(u, (), ctx)
    assert factor.tolist() == pytest.approx([1.0, 0.0, 1.0], abs=1e-12)
    for n in params:
        assert torch.allclose(out.delta[n], g0[n].expand_as(out.delta[n]))
    away = dataclasses.replace(u, delta=_split(-rows.abs() * flat.sign(), params))
    out, _, factor = fl.apply(away, (), ctx)
    assert factor.tolist() == [0.0, 0.0, 0.0]
    assert all(bool((v == 0).all()) for v in out.delta.values())


def _split(rows: torch.Tensor, params: dict) -> dict:
    out, at = {}, 0
    for n, p in params.items():
        out[n] = rows[:, at : at + p.numel()].reshape((rows.shape[0],) + tuple(p.shape))
        at += p.numel()
    return out


def test_fltrust_stops_sign_flipping(tmp_path):
    """30 % sign-flippers: 0.653 without a defence; FLTrust 0.904 (clean 0.917)."""
    doc = small_run(
        tmp_path,
        attack="sign-flip",
        attackers=0.3,
        defence="fltrust",
        defence_params={"batch_size": 16},
    )
    e = final(doc)
    assert e["test_acc"] >= CLEAN_ACC - 0.03
    assert e["excluded"] == e["attackers"]


def test_fltrust_stops_label_flipping(tmp_path):
    """30 % all-to-7 label flippers: backdoor 0.398, accuracy 0.603 without a defence;
    FLTrust cuts the three: backdoor 0.025, accuracy 0.900."""
    doc = small_run(
        tmp_path,
        attack="label-flip",
        attackers=0.3,
        attack_params={"target": 7},
        defence="fltrust",
        defence_params={"batch_size": 16},
    )
    e = final(doc)
    assert e["backdoor_acc"] <= 0.10
    assert e["test_acc"] >= CLEAN_ACC - 0.03


@pytest.mark.xfail(strict=True, reason="badnets 30 %: backdoor 0.746 under FLTrust (0.907 without)")
def test_fltrust_stops_badnets(tmp_path):
    """BadNets poisons only 32 % of an attacker's rows: its updates stay aligned with the
    root update (positive trust), and the rescaling only neutralises boosted (scaled)
    backdoors, which is the paper's Scaling attack, not this one."""
    doc = small_run(
        tmp_path,
        attack="badnets",
        attackers=0.3,
        defence="fltrust",
        defence_params={"batch_size": 16},
    )
    assert final(doc)["backdoor_acc"] <= 0.10


def test_fltrust_trains_against_each_ifca_cluster_model(tmp_path):
    doc = small_run(tmp_path, rounds=2, algorithm="ifca", defence="fltrust")
    assert final(doc)["personal_acc"] > 0.5  # 0.62 after 2 rounds


def test_rffl_reputation_by_hand():
    """Round 0, uniform aggregate (1/3, 0): cosines 1, 1, -1; reputations 0.05 phi,
    normalised to 1, 1, -1; -1 < (1/3)/3 cuts client 2, the others share 1/2 each and the
    rows become (1, 0). Round 1: the aggregate of the two left is (1/2, 1/2), both cosines
    1/sqrt(2), reputations stay 1/2: the rows become (1/2, 1/2), client 2 stays out."""
    rf = build_defence("rffl")
    state = rf.init(3)
    out, state, factor = rf.apply(_update([[1, 0], [1, 0], [-1, 0]]), state, _ctx(3))
    assert factor.tolist() == [1.0, 1.0, 0.0]
    assert torch.allclose(out.delta["w"], torch.tensor([[1.0, 0.0]] * 3, dtype=torch.float64))
    assert state["reputation"].tolist() == [0.5, 0.5, 0.0]
    assert state["active"].tolist() == [True, True, False]
    out, state, factor = rf.apply(_update([[1, 0], [0, 1], [5, 5]]), state, _ctx(3, r=1))
    assert factor.tolist() == [1.0, 1.0, 0.0]
    assert torch.allclose(out.delta["w"], torch.tensor([[0.5, 0.5]] * 3, dtype=torch.float64))
    assert torch.allclose(state["reputation"], torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))


def test_rffl_moving_average_by_hand():
    """Round 0: two equal rows, reputations 1/2 each. Round 1, unclipped rows (2, 0) and
    (0, 0): aggregate (1, 0), cosines 1 and 0, reputations 0.95/2 + 0.05 = 0.525 and 0.475
    (sum 1), both above (1/3)/2; the rows become 0.525 (2, 0) = (1.05, 0)."""
    rf = build_defence("rffl", clip=False)
    state = rf.init(2)
    _, state, _ = rf.apply(_update([[1, 0], [1, 0]]), state, _ctx(2))
    assert state["reputation"].tolist() == [0.5, 0.5]
    out, state, factor = rf.apply(_update([[2, 0], [0, 0]]), state, _ctx(2, r=1))
    assert torch.allclose(state["reputation"], torch.tensor([0.525, 0.475], dtype=torch.float64))
    assert torch.allclose(factor, torch.tensor([1.0, 0.475 / 0.525], dtype=torch.float64))
    assert torch.allclose(out.delta["w"], torch.tensor([[1.05, 0.0]] * 2, dtype=torch.float64))


def test_rffl_newcomer_starts_from_the_mean_share():
    """Partial participation, 3 clients. Round 0 samples 0 and 1 (equal rows: 1/2 each).
    Round 1 samples 1 and newcomer 2, whose prior is the mean share 1/2: aggregate
    (1/2, 1/2) of rows (1, 0) and (0, 1), both cosines 1/sqrt(2), both reputations
    c = 0.95/2 + 0.05/sqrt(2); client 0 keeps 1/2; all normalised over the three seen."""
    rf = build_defence("rffl")
    state = rf.init(3)
    two = torch.tensor([0, 1])
    _, state, _ = rf.apply(_update([[1, 0], [1, 0]]), state, _ctx(2, clients=two))
    out, state, factor = rf.apply(
        _update([[1, 0], [0, 1]]), state, _ctx(2, r=1, clients=torch.tensor([1, 2]))
    )
    c = 0.95 / 2 + 0.05 / math.sqrt(2)
    want = torch.tensor([0.5, c, c], dtype=torch.float64) / (0.5 + 2 * c)
    assert torch.allclose(state["reputation"], want)
    assert state["seen"].tolist() == [True] * 3 and state["active"].tolist() == [True] * 3
    assert factor.tolist() == [1.0, 1.0]
    assert torch.allclose(out.delta["w"], torch.tensor([[0.5, 0.5]] * 2, dtype=torch.float64))


def test_rffl_excludes_label_flippers(tmp_path):
    """30 % all-to-7 label flippers: backdoor 0.398, accuracy 0.603 without a defence; under
    RFFL the three are cut (backdoor 0.019, accuracy 0.906)."""
    doc = small_run(
        tmp_path, attack="label-flip", attackers=0.3, attack_params={"target": 7}, defence="rffl"
    )
    e = final(doc)
    assert e["backdoor_acc"] <= 0.10
    assert e["test_acc"] >= CLEAN_ACC - 0.03
    assert e["excluded"] == e["attackers"] and e["false_positives"] == 0


def test_rffl_clipping_stops_gaussian_noise(tmp_path):
    """30 % Gaussian uploads (sigma 1): accuracy 0.41 without a defence; RFFL with rows
    clipped to the median norm cuts the three (0.914); unclipped, the noise is the
    aggregate and the honest clients are cut instead."""
    doc = small_run(tmp_path, attack="gaussian", attackers=0.3, defence="rffl")
    e = final(doc)
    assert e["test_acc"] >= CLEAN_ACC - 0.03
    assert e["excluded"] == e["attackers"]


def test_an_rffl_run_resumes_with_its_reputations(tmp_path):
    """The reputations and exclusions are in the checkpoint: 3 rounds, then 2 more, equal
    5 at once."""
    kw = dict(attack="label-flip", attackers=0.3, attack_params={"target": 7}, defence="rffl")
    whole = small_run(tmp_path, "whole", rounds=5, **kw)
    small_run(tmp_path, "split", rounds=3, **kw)
    cfg = RunConfig(**{**SMALL, "rounds": 5, **kw, "out": str(tmp_path / "split")})
    resumed = run_experiment(cfg, resume=True, progress=False)
    assert final(resumed)["test_acc"] == final(whole)["test_acc"]
    assert [e["downweighted"] for e in resumed["rounds"]] == [
        e["downweighted"] for e in whole["rounds"]
    ]
