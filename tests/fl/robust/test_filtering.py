"""Filtering defences: Divide-and-Conquer (spectral outlier scores) and SignGuard (norm and
sign-statistics filters)."""

from __future__ import annotations

import math

import pytest
import torch

from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.robust import build_defence
from privlearn.fl.robust.defences.filtering import dnc_outlier_scores, sign_statistics
from privlearn.fl.robust.threat import DefenceContext
from tests.fl.robust.helpers import final, small_run

CLEAN_ACC = 0.9166  # the small task without attack or defence (measured: 0.917)


def _update(rows: list[list[float]]) -> ClientUpdate:
    k = len(rows)
    g = torch.Generator().manual_seed(0)
    return ClientUpdate(
        delta={"w": torch.tensor(rows, dtype=torch.float64)},
        weight=torch.ones(k, dtype=torch.float64),
        loss=torch.zeros(k, dtype=torch.float64),
        steps=torch.ones(k, dtype=torch.float64),
        buffers={"bn": torch.randn(k, 2, generator=g, dtype=torch.float64)},
        extras={},
    )


def _ctx(k: int, f: int) -> DefenceContext:
    return DefenceContext(
        round=0,
        params={},
        buffers={},
        clients=torch.arange(10, 10 + k),
        f=f,
        rng=torch.Generator().manual_seed(0),
        n_clients=20,
    )


ROWS = [[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [10.0, 0.0]]


def test_dnc_outlier_scores_by_hand():
    """Mean (2.5, 0); centred first coordinates -2.5, -1.5, -3.5, 7.5; the top singular
    vector is (1, 0), so the scores are their squares."""
    s = dnc_outlier_scores(torch.tensor(ROWS, dtype=torch.float64))
    assert torch.allclose(s, torch.tensor([6.25, 2.25, 12.25, 56.25], dtype=torch.float64))


def test_dnc_drops_the_c_f_highest_scores():
    d = build_defence("dnc")
    u = _update(ROWS)
    out, _, factor = d.apply(u, (), _ctx(4, f=1))
    assert factor.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert torch.equal(out.delta["w"], u.delta["w"][:3])
    assert torch.equal(out.buffers["bn"], u.buffers["bn"][:3])  # every field of the kept rows
    _, _, factor = d.apply(u, (), _ctx(4, f=2))
    assert factor.tolist() == [1.0, 1.0, 0.0, 0.0]
    _, _, factor = build_defence("dnc", c=0.5).apply(u, (), _ctx(4, f=2))
    assert factor.tolist() == [1.0, 1.0, 1.0, 0.0]
    _, _, factor = d.apply(u, (), _ctx(4, f=0))
    assert factor.tolist() == [1.0] * 4
    assert "c f = 3 rows of 3" in d.check(3, 3)
    assert d.check(4, 1) is None


def test_dnc_keeps_the_rows_unfinished_least_often():
    """Subsampling one coordinate of (0, 0), (1, 0), (-1, 0), (10, 0), (0, 9) per
    iteration: each iteration flags the outlier on its coordinate, the intersection keeps
    the three rows near the origin."""
    rows = [*ROWS, [0.0, 9.0]]
    d = build_defence("dnc", niters=8, b=1)
    _, _, factor = d.apply(_update(rows), (), _ctx(5, f=1))
    assert factor.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_dnc_stops_sign_flipping(tmp_path):
    """30 % sign-flippers: 0.653 without a defence; DnC cuts the three (0.914)."""
    doc = small_run(tmp_path, attack="sign-flip", attackers=0.3, defence="dnc")
    e = final(doc)
    assert e["test_acc"] >= CLEAN_ACC - 0.03
    assert e["excluded"] == e["attackers"] and e["false_positives"] == 0


def test_dnc_stops_badnets(tmp_path):
    """30 % BadNets: backdoor 0.907 without a defence; DnC 0.031, accuracy 0.914."""
    doc = small_run(tmp_path, attack="badnets", attackers=0.3, defence="dnc")
    e = final(doc)
    assert e["backdoor_acc"] <= 0.10
    assert e["test_acc"] >= CLEAN_ACC - 0.03


def test_sign_statistics_by_hand():
    m = torch.tensor([[1.0, 0.0, -2.0, 3.0], [0.0, 0.0, 0.0, -1.0]])
    assert sign_statistics(m).tolist() == [[0.5, 0.25, 0.25], [0.0, 0.75, 0.25]]


def test_signguard_by_hand():
    """Norms sqrt 12, sqrt 7, sqrt 7, 2, 20: median sqrt 7; row 4 (ratio 7.6 > 3) fails the
    norm filter; row 3 (a quarter of its coordinates positive, the others three quarters)
    is alone in its sign cluster. Rows 0-2 are kept, row 0 clipped to norm sqrt 7."""
    rows = [
        [3.0, 1.0, 1.0, -1.0],
        [2.0, 1.0, 1.0, -1.0],
        [1.0, 2.0, 1.0, -1.0],
        [-1.0, -1.0, -1.0, 1.0],
        [10.0, 10.0, 10.0, -10.0],
    ]
    u = _update(rows)
    out, _, factor = build_defence("signguard", coords=1.0).apply(u, (), _ctx(5, f=2))
    assert factor.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    want = torch.tensor(rows[:3], dtype=torch.float64)
    want[0] *= math.sqrt(7 / 12)
    assert torch.allclose(out.delta["w"], want)
    assert torch.equal(out.buffers["bn"], u.buffers["bn"][:3])


def test_signguard_parameters_are_checked():
    with pytest.raises(ValueError, match="lower <= 1 <= upper"):
        build_defence("signguard", lower=2.0)


def test_signguard_stops_gaussian_noise(tmp_path):
    """30 % Gaussian uploads (sigma 1): accuracy 0.411 without a defence; SignGuard's norm
    filter cuts the three (0.914)."""
    doc = small_run(tmp_path, attack="gaussian", attackers=0.3, defence="signguard")
    e = final(doc)
    assert e["test_acc"] >= CLEAN_ACC - 0.03
    assert e["excluded"] == e["attackers"] and e["false_positives"] == 0


def test_signguard_holds_sign_flipping_with_false_positives(tmp_path):
    """30 % sign-flippers: 0.653 without a defence; SignGuard 0.894. Honest deltas here have
    about as many positive as negative coordinates, so a flipped row's sign statistics
    stay close to theirs: in the last round two honest rows go and two attackers stay."""
    e = final(small_run(tmp_path, attack="sign-flip", attackers=0.3, defence="signguard"))
    assert e["test_acc"] >= CLEAN_ACC - 0.03


def test_signguard_does_not_hurt_a_clean_run(tmp_path):
    """No attack: SignGuard keeps every client (accuracy 0.911, clean 0.917)."""
    e = final(small_run(tmp_path, defence="signguard"))
    assert e["test_acc"] >= CLEAN_ACC - 0.03
    assert e["excluded"] == []
