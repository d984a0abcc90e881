"""Membership inference: LiRA's statistics on synthetic confidences, and both attacks against
an overfit federated model (global and one client's)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from privlearn.fl.models import logistic_regression
from privlearn.fl.privacy.audit.membership import (
    ATTACKS,
    half_masks,
    lira_scores,
    logit_confidence,
    membership_game,
    write_report,
)
from privlearn.fl.privacy.audit.stats import auc
from privlearn.fl.run import RunConfig


def _pooled(phi, keep, online, fixed):
    s = np.stack([lira_scores(phi, keep, t, online, fixed) for t in range(len(phi))])
    return s[keep], s[~keep]


def test_logit_confidence_is_log_odds_of_the_true_class():
    model = logistic_regression((3,), 4)
    params, buffers = model.init(torch.Generator().manual_seed(0))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    phi, loss, correct = logit_confidence(model, (params, buffers), x, y)
    p = model.apply(params, buffers, x)[0].double().softmax(1)[torch.arange(5), y].numpy()
    np.testing.assert_allclose(phi, np.log(p / (1 - p)), rtol=1e-10)
    np.testing.assert_allclose(loss, -np.log(p), rtol=1e-10)
    logits = model.apply(params, buffers, x)[0]
    np.testing.assert_array_equal(correct, (logits.argmax(1) == y).numpy())


def test_half_masks_hold_half_of_the_rows_and_each_row_about_half_the_time():
    keep = half_masks(64, 1000, np.random.default_rng(0))
    assert (keep.sum(1) == 500).all()
    assert abs(keep.mean(0).mean() - 0.5) < 0.01 and keep.mean(0).min() > 0.2


def test_lira_calibrates_per_example_where_a_global_threshold_cannot():
    # each example has its own difficulty (offset, spread 5); membership adds +1 to phi
    rng = np.random.default_rng(0)
    keep = half_masks(17, 2000, rng)
    phi = rng.normal(0, 5, 2000) + keep * 1.0 + rng.normal(0, 0.3, keep.shape)
    raw = auc(phi[keep], phi[~keep])
    for online, fixed in [(True, True), (True, False), (False, True)]:
        lira = auc(*_pooled(phi, keep, online, fixed))
        assert lira > 0.9 > 0.6 > raw, (online, fixed, lira, raw)


def test_lira_on_scores_that_ignore_membership_is_at_chance():
    # leave-one-out must not leak the target's bit through its shadows' IN counts
    rng = np.random.default_rng(1)
    keep = half_masks(17, 3000, rng)
    phi = rng.normal(0, 1, 3000) + rng.normal(0, 0.5, keep.shape)
    for online, fixed in [(True, True), (True, False), (False, True)]:
        assert auc(*_pooled(phi, keep, online, fixed)) == pytest.approx(0.5, abs=0.02)


def _cfg(**kw) -> RunConfig:
    base = dict(
        dataset="digits",
        partition="homo",
        sampling="all",
        n_clients=3,
        model="mlp",
        hidden=[64],
        rounds=2,
        epochs=15,
        batch_size=16,
        lr=0.2,
        seed=0,
    )
    return RunConfig(**{**base, **kw})


@pytest.mark.parametrize("target", ["global", "client"])
def test_attacks_beat_chance_on_an_overfit_federation(target, tmp_path):
    game = membership_game(_cfg(), target, n_models=9, candidates=240, seed=0)
    meta, attacks = game["meta"], game["attacks"]
    assert meta["acc_members"] > meta["acc_nonmembers"]  # overfit
    assert set(attacks) == set(ATTACKS)
    lira = attacks["lira-online-fixed-var"]
    assert lira["shadows"] == 8 and lira["replay"] is True
    assert lira["auc"] > 0.6 and lira["auc"] > attacks["loss-threshold"]["auc"]
    at = lira["tpr_at_fpr"]["0.01"]
    assert at["n_neg"] == 9 * 120 and at["fpr"] <= 0.01
    assert at["tpr"] > 0.01 and at["tpr_ci"][0] <= at["tpr"] <= at["tpr_ci"][1]
    out = write_report(game, tmp_path, target)
    json.loads((out / "membership.json").read_text())
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_game_input_is_refused_before_training():
    with pytest.raises(ValueError, match="target"):
        membership_game(_cfg(), "server")
    with pytest.raises(ValueError, match="n_models"):
        membership_game(_cfg(), n_models=2)
    with pytest.raises(ValueError, match="sampling"):
        membership_game(_cfg(sampling="uniform", clients_per_round=2))
    with pytest.raises(ValueError, match="candidates"):
        membership_game(_cfg(), "client", candidates=1000)
    with pytest.raises(ValueError, match="n_clients"):
        membership_game(_cfg(n_clients=1), "client")


@pytest.mark.slow
def test_lira_with_16_replayed_shadows_beats_the_loss_threshold_at_low_fpr():
    """The recipe of docs/privacy-membership.md (global target; about a minute)."""
    cfg = _cfg(n_clients=5, hidden=[256], rounds=10, epochs=20)
    attacks = membership_game(cfg, "global", n_models=17, candidates=600, seed=0)["attacks"]
    lira, loss = attacks["lira-online-fixed-var"], attacks["loss-threshold"]
    at, base = lira["tpr_at_fpr"]["0.01"], loss["tpr_at_fpr"]["0.01"]
    assert lira["shadows"] == 16 and at["n_neg"] == 17 * 300
    assert at["tpr_ci"][0] > base["tpr_ci"][1]  # intervals apart
    assert lira["tpr_at_fpr"]["0.001"]["tpr"] > loss["tpr_at_fpr"]["0.001"]["tpr"]
