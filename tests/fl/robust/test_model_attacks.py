"""Model-poisoning attacks do what their papers say on a small seeded task.

The omniscient attacks (ALIE, IPM, Min-Max, Min-Sum, Fang) come from distributed SGD, where
each client sends one gradient per step; on FedAvg with epochs of local training over IID
digits the honest deltas agree so closely that their spread leaves them no room. So their
tests run the task FedSGD-like (one full-batch step per client per round) on Dirichlet(0.5)
labels, the regime of the papers."""

from __future__ import annotations

import pytest
import torch

from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.robust import build_attack
from privlearn.fl.robust.attacks.model import alie_z
from privlearn.fl.robust.threat import AttackContext
from tests.fl.robust.helpers import final, small_run
from tests.fl.robust.test_scenario import _info

# one full-batch step per client per round (clients hold ~180 rows), non-IID labels
FEDSGD = dict(epochs=1, batch_size=200, lr=0.5, rounds=30, partition="label-dirichlet", beta=0.5)


def _acc(tmp_path, name, **kw) -> float:
    return final(small_run(tmp_path, name, **kw))["test_acc"]


@pytest.mark.parametrize(
    "attack, params, defence, drop",
    [
        ("alie", {}, "median", 0.15),  # seen 0.728 -> 0.547
        ("min-max", {}, "median", 0.20),  # 0.728 -> 0.364
        ("min-sum", {}, "krum", 0.20),  # 0.531 -> 0.108
        ("fang", {"target": "median"}, "median", 0.20),  # 0.728 -> 0.242
    ],
)
def test_omniscient_attacks_defeat_the_robust_rule_they_target(
    tmp_path, attack, params, defence, drop
):
    clean = _acc(tmp_path, "clean", defence=defence, **FEDSGD)
    hit = _acc(
        tmp_path,
        "hit",
        attack=attack,
        attackers=0.3,
        attack_params=params,
        defence=defence,
        **FEDSGD,
    )
    assert hit <= clean - drop, (clean, hit)


def test_fang_breaks_krum_and_ipm_breaks_the_mean(tmp_path):
    iid = {**FEDSGD, "partition": "homo"}
    clean_krum = _acc(tmp_path, "ck", defence="krum", **iid)  # seen 0.894
    fang = _acc(
        tmp_path,
        "fk",
        attack="fang",
        attackers=0.3,
        attack_params={"target": "krum"},
        defence="krum",
        **iid,
    )  # seen 0.356
    assert fang <= clean_krum - 0.3
    clean = _acc(tmp_path, "c", **iid)  # 0.906
    ipm = _acc(tmp_path, "i", attack="ipm", attackers=0.3, attack_params={"epsilon": 3.0}, **iid)
    assert ipm <= clean - 0.5  # 0.097


@pytest.mark.parametrize("attack", ["gaussian", "sign-flip"])
def test_noise_and_sign_flips_lower_the_mean(tmp_path, attack):
    clean = _acc(tmp_path, "c")
    hit = _acc(
        tmp_path,
        "h",
        attack=attack,
        attackers=0.3,
        attack_params={"scale": 4.0} if attack == "sign-flip" else {"sigma": 1.0},
    )
    assert hit <= clean - 0.2, (clean, hit)


def test_model_replacement_plants_its_backdoor_in_one_boosted_round(tmp_path):
    doc = small_run(tmp_path, attack="model-replacement", attackers=0.1, attack_window=[10, 10])
    e = final(doc)
    assert e["backdoor_acc"] >= 0.8 and e["test_acc"] >= 0.8, e


def _cohort(k=6, p=4, bad=(0, 1)):
    g = torch.Generator().manual_seed(1)
    u = ClientUpdate(
        delta={"w": torch.randn(k, p, generator=g) + 1.0},
        weight=torch.full((k,), 10.0),
        loss=torch.zeros(k),
        steps=torch.ones(k),
        buffers={"bn": torch.ones(k, 2)},
        extras={"dc": {"w": torch.zeros(k, p)}},
    )
    attacker = torch.zeros(k, dtype=torch.bool)
    attacker[list(bad)] = True
    ctx = AttackContext(0, attacker, {"w": torch.zeros(p)}, torch.Generator().manual_seed(0))
    return u, ctx


def test_alie_uploads_mean_minus_z_std_of_the_honest_rows():
    u, ctx = _cohort()
    out = build_attack("alie", _info()).updates(u, ctx)
    honest = u.delta["w"][2:].double()
    z = alie_z(6, 2)  # s = floor(6/2 + 1) - 2 = 2, z = Phi^-1(4/6) = 0.4307
    assert z == pytest.approx(0.430727, abs=1e-6)
    want = honest.mean(0) - z * honest.std(0, correction=0)
    assert torch.allclose(out.delta["w"][0].double(), want, atol=1e-6)
    assert torch.equal(out.delta["w"][2:], u.delta["w"][2:])


def test_min_max_stays_within_the_largest_honest_distance():
    u, ctx = _cohort()
    forged = build_attack("min-max", _info()).updates(u, ctx).delta["w"][0].double()
    honest = u.delta["w"][2:].double()
    reach = (honest - forged).norm(dim=1).max()
    spread = torch.cdist(honest, honest).max()
    assert reach <= spread + 1e-9 and reach >= spread * 0.999  # the largest such gamma


def test_fields_attack_poisons_buffers_control_variates_and_n():
    u, ctx = _cohort()
    out = build_attack("fields", _info(), value=7.0, claim=1e9).updates(u, ctx)
    assert (out.buffers["bn"][:2] == 7).all() and (out.buffers["bn"][2:] == 1).all()
    assert (out.extras["dc"]["w"][:2] == 7).all() and (out.extras["dc"]["w"][2:] == 0).all()
    assert out.weight[:2].tolist() == [1e9, 1e9] and torch.equal(out.delta["w"], u.delta["w"])
