"""FLAME, FoolsGold and DeepSight: their rules on hand-worked rows, and the attacks they
stop on the small seeded task (digits, MLP[64], 10 clients, 30 % attackers, 10 rounds)."""

from __future__ import annotations

import math

import pytest
import torch

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.models import logistic_regression
from privlearn.fl.robust import build_defence
from privlearn.fl.robust.defences.clustering import (
    accepted_clusters,
    cosine_distances,
    foolsgold_weights,
    neups,
    same_cluster_dists,
    suspicious,
    threshold_exceedings,
)
from privlearn.fl.robust.threat import DefenceContext
from privlearn.fl.run import Experiment, RunConfig, run_experiment
from tests.fl.robust.helpers import SMALL, final, small_run


def _update(delta: dict, buffers: dict | None = None) -> ClientUpdate:
    first = next(iter(delta.values()))
    k, dev = first.shape[0], first.device
    return ClientUpdate(
        delta=delta,
        weight=torch.arange(1.0, k + 1, device=dev),
        loss=torch.zeros(k, device=dev),
        steps=torch.ones(k, device=dev),
        buffers=buffers or {},
        extras={},
    )


def _ctx(k: int, clients=None, seed: int = 0, n_clients: int | None = None, **kw):
    clients = torch.arange(k) if clients is None else torch.as_tensor(clients)
    return DefenceContext(
        round=0,
        params=kw.pop("params", {}),
        buffers=kw.pop("buffers", {}),
        clients=clients,
        f=kw.pop("f", 0),
        rng=torch.Generator().manual_seed(seed),
        n_clients=n_clients if n_clients is not None else k,
        **kw,
    )


# --- hand-worked rules -----------------------------------------------------------------------


def test_cosine_distances_by_hand():
    m = torch.tensor([[3.0, 4.0], [-4.0, 3.0], [4.0, -3.0], [0.6, 0.8]])
    d = cosine_distances(m)
    want = torch.tensor(
        [[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 2.0, 1.0], [1.0, 2.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]],
        dtype=torch.float64,
    )
    assert torch.allclose(d, want, atol=1e-12)


ROWS = torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.6, 0.8], [-4.0, 3.0], [4.0, -3.0]])


def test_flame_keeps_the_majority_direction_and_clips_to_the_median_norm():
    """Norms 5, 10, 1, 5, 5 (median 5). Rows 0-2 point one way (cosine distance 0), rows 3
    and 4 at right angles to them and opposite each other: HDBSCAN with min_cluster_size
    3 keeps rows 0-2, clipped to norm 5: (3, 4), (3, 4), (0.6, 0.8)."""
    u = _update({"w": ROWS.clone()}, buffers={"bn": torch.arange(5.0)[:, None]})
    out, _, factor = build_defence("flame", lam=0.0).apply(u, (), _ctx(5))
    assert factor.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    want = torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.6, 0.8]])
    assert torch.allclose(out.delta["w"], want, atol=1e-6)
    assert out.weight.tolist() == [1.0, 2.0, 3.0]  # every field of a dropped row goes
    assert out.buffers["bn"].flatten().tolist() == [0.0, 1.0, 2.0]


def test_flame_adds_one_noise_vector_of_std_lambda_times_the_median_norm():
    u = _update({"w": ROWS.clone()})
    out, _, _ = build_defence("flame", lam=0.5).apply(u, (), _ctx(5, seed=3))
    noise = torch.randn(2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    noise = noise * 0.5 * 5.0  # lambda * S, S = 5
    clipped = torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.6, 0.8]], dtype=torch.float64)
    assert torch.allclose(out.delta["w"].double(), clipped + noise, atol=1e-5)


def test_flame_refuses_a_malicious_majority():
    assert build_defence("flame").check(10, 5) is not None
    assert build_defence("flame").check(10, 4) is None
    with pytest.raises(ValueError, match="lam"):
        build_defence("flame", lam=-1.0)


def test_foolsgold_weights_by_hand():
    """Rows a=(1,0), b=(0.6,0.8), c=(0,1), d=(-1,0). Off-diagonal cosines: ab 0.6, bc 0.8,
    ac 0, ad -1, bd -0.6, cd 0 (the diagonal counts 0), so v = (0.6, 0.8, 0.8, 0).
    Pardoning (v_i < v_j: cs_ij *= v_i / v_j): cs_ab = 0.6 * 0.6 / 0.8 = 0.45, d's row
    becomes 0. 1 - max: (0.55, 0.2, 0.2, 1), max already 1; logit: a ln(0.55/0.45) + 0.5
    = 0.7007, b and c ln(0.25) + 0.5 < 0 -> 0, d 0.99 -> 5.1 -> 1."""
    h = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    w = foolsgold_weights(h)
    wa = math.log(0.55 / 0.45) + 0.5
    assert torch.allclose(w, torch.tensor([wa, 0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-9)
    # two identical sybils get nothing; the lone honest row everything
    w = foolsgold_weights(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert w.tolist() == [0.0, 0.0, 1.0]


def test_foolsgold_accumulates_histories_by_client_id_and_mixes_rows():
    rows = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    d = build_defence("foolsgold")
    state = d.init(8)
    ids = [5, 2, 7, 0]
    wa = math.log(0.55 / 0.45) + 0.5
    for r in (1, 2):  # the same uploads twice: histories double, cosines (weights) stay
        out, state, factor = d.apply(_update({"w": rows.clone()}), state, _ctx(4, ids, n_clients=8))
        assert torch.allclose(state["history"][ids], r * rows.double())
        assert state["history"][[1, 3, 4, 6]].abs().sum() == 0
        assert torch.allclose(factor, torch.tensor([wa, 0.0, 0.0, 1.0], dtype=torch.float64))
    want = (wa * rows[0] + rows[3]) / (wa + 1.0)  # = (-0.176, 0)
    assert torch.allclose(out.delta["w"], want.expand(4, 2), atol=1e-6)


def test_foolsgold_keeps_the_global_model_when_every_weight_is_zero():
    rows = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    u = _update({"w": rows}, buffers={"bn": torch.tensor([[5.0], [7.0]])})
    ctx = _ctx(2, buffers={"bn": torch.tensor([1.0])})
    out, _, factor = build_defence("foolsgold").apply(u, build_defence("foolsgold").init(2), ctx)
    assert factor.tolist() == [0.0, 0.0]
    assert out.delta["w"].abs().sum() == 0 and out.buffers["bn"].flatten().tolist() == [1.0, 1.0]


def test_neups_and_threshold_exceedings_by_hand():
    """Energies e_c = |db_c| + sum_j |dw_cj|: row 0 (1, 1, 1, 1), row 1 (2, 0.1, 0, 0),
    row 2 (1, 1, 0.4, 0). NEUPs e^2 / sum e^2; threshold 1/4 of the row's largest: TE 4,
    1 (0.01 / 4.01 < 1 / 4.01), 2 (0.16 / 2.16 < 0.25 / 2.16). Median 2, boundary 1: only
    row 1 is suspicious."""
    dw = torch.tensor([[[0.0], [0.0], [0.0], [0.0]], [[1.0], [0.1], [0.0], [0.0]], [[0.0]] * 4])
    db = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.4, 0.0]])
    n = neups(dw, db)
    assert torch.allclose(n[0], torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.allclose(n[1], torch.tensor([4.0, 0.01, 0.0, 0.0], dtype=torch.float64) / 4.01)
    assert torch.allclose(n[2], torch.tensor([1.0, 1.0, 0.16, 0.0], dtype=torch.float64) / 2.16)
    te = threshold_exceedings(n)
    assert te.tolist() == [4, 1, 2]
    assert suspicious(te).tolist() == [False, True, False]


def test_deepsight_cluster_acceptance_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 1, -1, -1])
    bad = torch.tensor([True, False, False, True, True, False, True])
    # cluster 0: 1/3 suspicious (not < 1/3), cluster 1: all; noise rows alone
    assert accepted_clusters(labels, bad, 1 / 3).tolist() == [0, 0, 0, 0, 0, 1, 0]
    assert accepted_clusters(labels, bad, 0.5).tolist() == [1, 1, 1, 0, 0, 1, 0]
    d = same_cluster_dists(torch.tensor([0, 0, -1, -1]))
    assert d.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]]


def _one_label_case():
    """A 4-class logistic regression on 2 features and six output-layer updates: rows 0-3
    move every class's bias and weights about equally, rows 4 and 5 push class 0 only."""
    model = logistic_regression((2,), 4)
    params, _ = model.init(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    honest_b = torch.tensor([0.2, -0.1, 0.15, -0.25]) + 0.02 * torch.randn(4, 4, generator=g)
    honest_w = 0.1 * torch.randn(4, 4, 2, generator=g)
    bad_b = torch.tensor([[1.0, -0.01, -0.01, -0.01], [0.9, -0.02, 0.0, -0.01]])
    bad_w = torch.zeros(2, 4, 2)
    bad_w[:, 0] = torch.tensor([[0.8, 0.7], [0.75, 0.8]])
    delta = {"fc.weight": torch.cat([honest_w, bad_w]), "fc.bias": torch.cat([honest_b, bad_b])}
    return model, params, delta


def test_deepsight_drops_rows_whose_output_update_sits_on_one_label():
    """Rows 0-3 have TE 4, rows 4 and 5 TE 1 <= median 4 / 2, and the three clusterings put
    4 and 5 together: rows 0-3 are kept, clipped to the median norm of all six rows."""
    model, params, delta = _one_label_case()
    u = _update({k: v.clone() for k, v in delta.items()})
    ctx = _ctx(6, params=params, model=model)
    out, _, factor = build_defence("deepsight").apply(u, (), ctx)
    assert factor.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    flat = torch.cat([delta["fc.weight"].flatten(1), delta["fc.bias"]], 1).double()
    s = flat.norm(dim=1).sort().values[2:4].mean()  # K = 6: the two middle norms
    want = flat[:4] * (s / flat[:4].norm(dim=1)).clamp(max=1.0)[:, None]
    got = torch.cat([out.delta["fc.weight"].flatten(1), out.delta["fc.bias"]], 1).double()
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_clustering_defences_run_on_cuda_tensors():
    """Each defence decides the same on CUDA tensors as on the CPU, on the inputs' device."""
    model, params, delta = _one_label_case()
    for name in ("flame", "foolsgold", "deepsight"):
        d = build_defence(name)
        runs = []
        for dev in ("cpu", "cuda"):
            u = _update({k: v.to(dev) for k, v in delta.items()})
            p = {k: v.to(dev) for k, v in params.items()}
            ctx = _ctx(6, clients=torch.arange(6, device=dev), params=p, model=model)
            out, state, factor = d.apply(u, d.init(6), ctx)
            assert out.delta["fc.bias"].device.type == dev
            runs.append((out.delta["fc.bias"].cpu(), factor.cpu()))
        assert torch.equal(runs[0][1], runs[1][1]), name
        assert torch.allclose(runs[0][0], runs[1][0], atol=1e-5), name


# --- the seeded small task ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_acc(tmp_path_factory):
    return final(small_run(tmp_path_factory.mktemp("clean")))["test_acc"]


def _attacked(tmp_path, defence: str | None, attack: str, **params) -> dict:
    kw = {"defence": defence} if defence else {}
    name = defence or "undefended"
    return final(small_run(tmp_path, name, attack=attack, attackers=0.3, **kw, **params))


def _stops(tmp_path, clean_acc, defence: str, attack: str, **params) -> None:
    """The attack succeeds undefended (backdoor >= 0.3), and the defence holds it to 0.10
    at no more than 0.03 of clean accuracy."""
    assert _attacked(tmp_path, None, attack, **params)["backdoor_acc"] >= 0.3
    e = _attacked(tmp_path, defence, attack, **params)
    assert e["backdoor_acc"] <= 0.10
    assert e["test_acc"] >= clean_acc - 0.03


def test_flame_stops_badnets(tmp_path, clean_acc):
    _stops(tmp_path, clean_acc, "flame", "badnets")


def test_foolsgold_stops_label_flipping_sybils(tmp_path, clean_acc):
    """All-to-7 label flipping by 3 of the 10 clients."""
    _stops(tmp_path, clean_acc, "foolsgold", "label-flip", attack_params={"target": 7})


@pytest.mark.xfail(
    strict=True,
    reason="backdoor 0.83: on IID clients honest histories are alike too (pairs of honest "
    "clients get 0.2-0.96) and the attackers regain weight 0.1-0.7 from round 4",
)
def test_foolsgold_stops_badnets(tmp_path, clean_acc):
    _stops(tmp_path, clean_acc, "foolsgold", "badnets")


@pytest.mark.parametrize("attack", ["edge-case", "dba"])
def test_deepsight_stops_edge_case_and_dba_backdoors(tmp_path, clean_acc, attack):
    _stops(tmp_path, clean_acc, "deepsight", attack)


@pytest.mark.xfail(
    strict=True,
    reason="backdoor 0.84: from round 4 the attackers' threshold exceedings (6-10 of 10) "
    "are above median / 2 = 5, so no row is labelled suspicious and every cluster is kept",
)
def test_deepsight_stops_badnets(tmp_path, clean_acc):
    _stops(tmp_path, clean_acc, "deepsight", "badnets")


@pytest.mark.parametrize("algorithm", ["scaffold", "fednova", "fedbn", "ifca"])
@pytest.mark.parametrize("defence", ["flame", "foolsgold", "deepsight"])
def test_every_field_of_the_uploads_goes_through(algorithm, defence):
    """Control variates (SCAFFOLD), normalisers (FedNova), deltas without the batch-norm
    entries (FedBN) and one model per cluster (IFCA), with batch-norm buffers: two rounds
    against large noise leave a finite server state."""
    exp = Experiment.build(
        RunConfig(
            **{**SMALL, "rounds": 2, "model": "mlp-bn", "algorithm": algorithm},
            attack="gaussian",
            attackers=0.2,
            attack_params={"sigma": 10.0},
            defence=defence,
        )
    )
    server, bank = exp.init_state()
    for r in range(2):
        server, _, _ = exp.round(server, bank, r)
    leaves = [t for t in T.leaves(server) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    assert leaves and all(torch.isfinite(t).all() for t in leaves)


def test_a_foolsgold_run_resumes_with_its_histories(tmp_path):
    """FoolsGold's per-client histories are in the checkpoint: 3 rounds then 2 more give
    the weights and the model of 5 rounds at once."""
    kw = dict(attack="label-flip", attackers=0.3, attack_params={"target": 7})
    kw.update(defence="foolsgold", rounds=5)
    whole = small_run(tmp_path, "whole", **kw)
    small_run(tmp_path, "split", **{**kw, "rounds": 3})
    cfg = RunConfig(**{**SMALL, **kw, "out": str(tmp_path / "split")})
    resumed = run_experiment(cfg, resume=True, progress=False)
    assert final(resumed)["test_acc"] == final(whole)["test_acc"]
    weights = [(e["excluded"], e.get("downweighted")) for e in whole["rounds"]]
    assert [(e["excluded"], e.get("downweighted")) for e in resumed["rounds"]] == weights
