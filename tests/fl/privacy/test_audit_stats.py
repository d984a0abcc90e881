"""TPR at low FPR, Clopper–Pearson, AUC and the ROC curve on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from privlearn.fl.privacy.audit.stats import (
    auc,
    clopper_pearson,
    plot_roc,
    roc_curve,
    summary,
    tpr_at_fpr,
)


def test_clopper_pearson_zero_of_n_is_the_closed_form():
    # 0 of n: the upper end solves (1 - p)^n = alpha / 2; 0 of 10 -> 0.3085 (textbook tables)
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-12)
    assert hi == pytest.approx(0.3085, abs=1e-4)
    lo, hi = clopper_pearson(10, 10)
    assert (lo, hi) == (pytest.approx(0.025 ** (1 / 10), abs=1e-12), 1.0)


@pytest.mark.parametrize("k,n", [(3, 10), (1, 1000), (59, 1000), (500, 1000), (7, 7)])
def test_clopper_pearson_matches_scipy_binomtest(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-10)


def test_clopper_pearson_refuses_bad_counts():
    with pytest.raises(ValueError, match="k, n"):
        clopper_pearson(5, 4)
    with pytest.raises(ValueError, match="alpha"):
        clopper_pearson(1, 4, alpha=1.0)


def test_perfectly_separated_scores_give_tpr_one_at_any_fpr():
    pos, neg = np.arange(100, 200), np.arange(100)
    for f in (0.0, 0.001, 0.01):
        r = tpr_at_fpr(pos, neg, f)
        assert (r.tpr, r.n_neg) == (1.0, 100)
        assert r.false_positives == int(f * 100)  # 1 % of 100 negatives: one is allowed
    assert auc(pos, neg) == 1.0


def test_threshold_by_hand():
    # negatives 0..9; FPR <= 20 % allows 2 false positives: threshold = 7 (8, 9 above it)
    neg = np.arange(10.0)
    r = tpr_at_fpr([7.0, 7.5, 8.5, 10.0], neg, 0.2)
    assert r.threshold == 7.0 and r.false_positives == 2 and r.fpr == 0.2
    assert r.true_positives == 3  # 7.0 ties the threshold and is called a non-member
    # FPR 0.1 % on 10 negatives allows none: only members above the largest negative count
    r = tpr_at_fpr([7.0, 9.0, 9.5, 10.0], neg, 0.001)
    assert (r.threshold, r.true_positives, r.false_positives) == (9.0, 2, 0)


def test_ties_never_push_the_fpr_above_the_target():
    neg = np.zeros(1000)  # every negative ties
    r = tpr_at_fpr(np.zeros(10), neg, 0.01)
    assert r.fpr == 0.0 and r.tpr == 0.0


def test_identical_distributions_give_tpr_near_fpr():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(size=200_000), rng.normal(size=200_000)
    for f in (0.001, 0.01):
        r = tpr_at_fpr(pos, neg, f)
        assert r.fpr <= f
        assert r.tpr_ci[0] <= f <= r.tpr_ci[1] or abs(r.tpr - f) < 0.2 * f
    assert auc(pos, neg) == pytest.approx(0.5, abs=0.005)


def test_auc_counts_ties_as_half():
    assert auc([1.0, 2.0], [1.0, 0.0]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)


def test_roc_curve_runs_from_origin_to_one_and_is_monotone():
    fpr, tpr = roc_curve([3.0, 2.0, 2.0], [2.0, 1.0])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    # thresholds inf, 3, 2, 1, -inf: strictly above each
    np.testing.assert_allclose(tpr, [0, 0, 1 / 3, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.5, 1])


def test_summary_is_json_able_and_plot_writes_png(tmp_path):
    import json

    rng = np.random.default_rng(1)
    pos, neg = rng.normal(1, 1, 300), rng.normal(0, 1, 3000)
    s = summary(pos, neg)
    json.dumps(s)
    assert s["tpr_at_fpr"]["0.01"]["n_neg"] == 3000
    path = plot_roc({"shifted": (pos, neg)}, tmp_path / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="neg"):
        tpr_at_fpr([1.0], [], 0.01)
    with pytest.raises(ValueError, match="pos"):
        auc([np.nan], [1.0])
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr([1.0], [0.0], 1.5)
