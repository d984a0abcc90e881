"""How well an attack's scores separate members from non-members, at the low false-positive
rates that matter (LiRA, Carlini et al. 2022: an attack is only a threat if it is confident on
some examples, which an average such as AUC hides).

Convention: a higher score means "more likely a member". An example is called a member when
its score is strictly above a threshold; the threshold is chosen on the negatives alone so
that at most floor(fpr * n_neg) negatives lie strictly above it. Ties at the threshold are
therefore all called non-members (no randomised tie-breaking), which never lets the achieved
FPR exceed the target. With n_neg negatives the smallest FPR that can be resolved is
1 / n_neg: below it the rule allows no false positive at all, and the result reads "TPR at
FPR 0", which is why every result carries n_neg.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import beta as beta_dist
from scipy.stats import rankdata

LOW_FPRS = (0.001, 0.01)  # the rates LiRA's paper reports


def _scores(name: str, s) -> np.ndarray:
    a = np.asarray(s, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name}: need at least one score")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: scores must be finite")
    return a


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The exact (Clopper–Pearson) two-sided 1 - alpha interval for a binomial proportion
    k / n: Beta quantiles, with the closed ends 0 (k = 0) and 1 (k = n)."""
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"k, n: need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha}")
    lo = 0.0 if k == 0 else float(beta_dist.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta_dist.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


@dataclass(frozen=True)
class TprAtFpr:
    fpr_target: float
    threshold: float  # members are scores strictly above it
    tpr: float
    tpr_ci: tuple[float, float]  # Clopper–Pearson, 95 %
    true_positives: int
    n_pos: int
    fpr: float  # achieved, <= fpr_target
    false_positives: int
    n_neg: int


def tpr_at_fpr(pos, neg, fpr: float, alpha: float = 0.05) -> TprAtFpr:
    """TPR at the threshold that keeps the FPR on `neg` at or below `fpr` (module docstring)."""
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr: must be in [0, 1), got {fpr}")
    p, n = _scores("pos", pos), _scores("neg", neg)
    allowed = int(np.floor(fpr * n.size + 1e-9))  # false positives the target permits
    desc = np.sort(n)[::-1]
    # the (allowed+1)-th largest negative: at most `allowed` lie strictly above it
    threshold = float(desc[allowed]) if allowed < n.size else -np.inf
    tp, fp = int((p > threshold).sum()), int((n > threshold).sum())
    return TprAtFpr(
        fpr,
        threshold,
        tp / p.size,
        clopper_pearson(tp, p.size, alpha),
        tp,
        p.size,
        fp / n.size,
        fp,
        n.size,
    )


def auc(pos, neg) -> float:
    """Area under the ROC curve: P(score of a member > score of a non-member), ties 1/2
    (the Mann–Whitney statistic)."""
    p, n = _scores("pos", pos), _scores("neg", neg)
    ranks = rankdata(np.concatenate([p, n]))
    return float((ranks[: p.size].sum() - p.size * (p.size + 1) / 2) / (p.size * n.size))


def roc_curve(pos, neg) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1), with the strict rule."""
    p, n = _scores("pos", pos), _scores("neg", neg)
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([p, n]))[::-1], [-np.inf]])
    ps, ns = np.sort(p), np.sort(n)
    tpr = (p.size - np.searchsorted(ps, thresholds, side="right")) / p.size
    fpr = (n.size - np.searchsorted(ns, thresholds, side="right")) / n.size
    return fpr, tpr


def summary(pos, neg, fprs=LOW_FPRS) -> dict:
    """A JSON-able summary: AUC, balanced accuracy of the best threshold, TPR at each FPR."""
    fpr, tpr = roc_curve(pos, neg)
    return {
        "auc": auc(pos, neg),
        "best_accuracy": float(np.max(1 - (fpr + (1 - tpr)) / 2)),
        "n_members": int(np.size(pos)),
        "n_nonmembers": int(np.size(neg)),
        "tpr_at_fpr": {str(f): asdict(tpr_at_fpr(pos, neg, f)) for f in fprs},
    }


def plot_roc(curves: dict[str, tuple], path: str | Path, title: str = "") -> Path:
    """ROC curves on log-log axes (as LiRA's paper plots them), chance as the diagonal.
    `curves` maps a label to (member scores, non-member scores)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    floor = 1.0
    for label, (pos, neg) in curves.items():
        fpr, tpr = roc_curve(pos, neg)
        floor = min(floor, 1 / np.size(neg), 1 / np.size(pos))
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc(pos, neg):.3f})")
    ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1))
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
