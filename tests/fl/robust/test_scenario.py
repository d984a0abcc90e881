"""The threat-model plumbing: attackers by seed, config errors, metrics, every field defended."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.robust import build_attack, build_defence, choose_attackers
from privlearn.fl.robust.registry import DataInfo
from privlearn.fl.robust.threat import aggregate_rows, mix_rows, select_rows
from privlearn.fl.run import RunConfig
from tests.fl.robust.helpers import final, small_run


def test_attackers_are_fixed_by_seed():
    a = choose_attackers(50, 0.2, seed=3)
    assert len(a) == 10 and np.array_equal(a, choose_attackers(50, 0.2, seed=3))
    assert not np.array_equal(a, choose_attackers(50, 0.2, seed=4))
    with pytest.raises(ValueError, match="rounds to no attacker"):
        choose_attackers(10, 0.01, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        choose_attackers(10, 1.0, seed=0)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"attack": "nope", "attackers": 0.2}, "known attacks|must be one of"),
        ({"defence": "nope"}, "must be one of"),
        ({"attack": "label-flip"}, "go together"),
        ({"attackers": 0.2}, "go together"),
        ({"attack": "label-flip", "attackers": 1.5}, r"\[0, 1\)"),
        ({"attack": "label-flip", "attackers": 0.2, "attack_window": [3, 1]}, "a <= b"),
    ],
)
def test_bad_threat_config_is_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**kw)


def _info():
    x = torch.rand(20, 1, 8, 8)
    y = torch.arange(20) % 10
    return DataInfo(10, (1, 8, 8), x, y, [np.arange(10), np.arange(10, 20)], 0)


def test_unknown_parameters_list_the_known_ones():
    with pytest.raises(ValueError, match="it takes: source=-1, target=0"):
        build_attack("label-flip", _info(), colour=3)
    with pytest.raises(ValueError, match="must be a number"):
        build_attack("label-flip", _info(), target="seven")
    with pytest.raises(ValueError, match="known defences: .*krum.*median"):
        build_defence("median-of-means")


def test_an_attack_without_the_data_it_needs_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="stamps a trigger on images"):
        small_run(tmp_path, dataset="wine", model="mlp", attack="badnets", attackers=0.2)
    with pytest.raises(ValueError, match="root_size must be in"):
        small_run(tmp_path, "r", defence="fltrust", root_size=10_000)


def test_krum_needs_2f_plus_3_before_training(tmp_path):
    with pytest.raises(ValueError, match="2f \\+ 3"):
        small_run(tmp_path, attack="sign-flip", attackers=0.4, defence="krum")


def _update(k=5, p=3):
    g = torch.Generator().manual_seed(0)
    return ClientUpdate(
        delta={"w": torch.randn(k, p, generator=g)},
        weight=torch.arange(1.0, k + 1),
        loss=torch.zeros(k),
        steps=torch.ones(k),
        buffers={"bn": torch.randn(k, 2, generator=g)},
        extras={"dc": {"w": torch.randn(k, p, generator=g)}, "onehot": torch.ones(k, 2).long()},
    )


def test_row_forms_act_on_every_floating_field():
    u = _update()
    med = aggregate_rows(u, lambda m, w: m.median(0).values)
    for got, src in [
        (med.delta["w"], u.delta["w"]),
        (med.buffers["bn"], u.buffers["bn"]),
        (med.extras["dc"]["w"], u.extras["dc"]["w"]),
    ]:
        assert torch.equal(got, src.median(0).values.expand_as(src))
    assert torch.equal(med.extras["onehot"], u.extras["onehot"])  # integers are not averaged
    alpha = torch.tensor([0.0, 1.0, 1.0, 0.0, 2.0])
    mix = mix_rows(u, alpha)
    want = (alpha / 4) @ u.buffers["bn"]
    assert torch.allclose(mix.buffers["bn"][3], want)
    sel = select_rows(u, torch.tensor([True, False, True, False, False]))
    assert sel.weight.tolist() == [1.0, 3.0] and sel.extras["dc"]["w"].shape == (2, 3)


def test_metrics_name_attackers_exclusions_and_attack_success(tmp_path):
    doc = small_run(
        tmp_path,
        rounds=3,
        attack="label-flip",
        attackers=0.2,
        attack_params={"target": 7},
        defence="krum",
    )
    e = final(doc)
    assert e["attackers"] == choose_attackers(10, 0.2, 0).tolist()
    assert len(e["excluded"]) == 9  # Krum keeps one row
    assert e["false_positives"] + (2 - e["false_negatives"]) == 9
    assert 0.0 <= e["backdoor_acc"] <= 1.0


def test_label_flip_without_defence_succeeds(tmp_path):
    """All-to-one flipping by 40 % of clients: most non-7 test digits become 7."""
    doc = small_run(tmp_path, attack="label-flip", attackers=0.4, attack_params={"target": 7})
    assert final(doc)["backdoor_acc"] >= 0.5


def test_a_per_cluster_server_is_defended_cluster_by_cluster():
    """IFCA's rows are split by their cluster choice: each cluster's rows get the median of
    that cluster alone, against that cluster's model, and keep their choice."""
    from privlearn.fl.robust.scenario import Scenario

    onehot = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    u = ClientUpdate(
        delta={"w": torch.tensor([[1.0], [10.0], [2.0], [20.0], [30.0]])},
        weight=torch.ones(5),
        loss=torch.zeros(5),
        steps=torch.ones(5),
        buffers={},
        extras={"onehot": onehot},
    )
    sc = Scenario(
        None, np.array([], dtype=np.int64), build_defence("median"), [np.arange(2)] * 5, 0
    )
    server = {"params": {"w": torch.zeros(2, 1)}, "buffers": {}}
    out, _ = sc.defend(u, torch.arange(5), server, 0)
    by_cluster = {}
    for row, choice in zip(
        out.delta["w"].flatten().tolist(), out.extras["onehot"].argmax(1).tolist(), strict=True
    ):
        by_cluster.setdefault(choice, set()).add(row)
    assert by_cluster == {0: {2.0}, 1: {10.0}}  # medians of (1, 2, 30) and (10, 20)
