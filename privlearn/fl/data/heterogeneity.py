"""How non-IID a partition is: per-client label distributions, their distance to the pooled
distribution (Hellinger and Jensen-Shannon), size skew, and a heat-map to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def label_counts(labels: np.ndarray, clients: list[np.ndarray], n_classes: int) -> np.ndarray:
    """Client x class matrix of sample counts."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[idx], minlength=n_classes) for idx in clients])


def _normalise(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def hellinger(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hellinger distance in [0, 1] between distributions along the last axis."""
    return np.sqrt(0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(axis=-1))


def js_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (square root of the divergence, base 2) in [0, 1]."""
    p, q = np.broadcast_arrays(p, q)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ratio = np.divide(a, b, out=np.ones_like(a), where=(a > 0) & (b > 0))
        return (a * np.log2(ratio)).sum(axis=-1)

    return np.sqrt(np.clip(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0, 1.0))


def summary(counts: np.ndarray) -> dict:
    """Per-client distances to the pooled label distribution and size statistics."""
    per_client = _normalise(counts)
    pooled = _normalise(counts.sum(axis=0))
    h = hellinger(per_client, pooled[None])
    js = js_distance(per_client, pooled[None])
    sizes = counts.sum(axis=1)
    return {
        "n_clients": int(len(counts)),
        "sizes": sizes.tolist(),
        "size_cv": float(sizes.std() / sizes.mean()) if sizes.mean() > 0 else 0.0,
        "classes_per_client": (counts > 0).sum(axis=1).tolist(),
        "hellinger": h.round(4).tolist(),
        "hellinger_mean": float(h.mean()),
        "js_distance": js.round(4).tolist(),
        "js_distance_mean": float(js.mean()),
    }


def plot_heatmap(counts: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Write a client x class heat-map of label shares (cell text: sample counts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = _normalise(counts)
    n_clients, n_classes = counts.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * n_classes, 1.0 + 0.32 * min(n_clients, 60)))
    shown = slice(0, min(n_clients, 60))  # more rows are unreadable; the JSON has them all
    im = ax.imshow(share[shown], aspect="auto", cmap="viridis", vmin=0, vmax=1)
    if n_clients <= 30 and n_classes <= 20:
        for i in range(min(n_clients, 60)):
            for j in range(n_classes):
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="w" if share[i, j] < 0.5 else "k",
                )
    ax.set_xlabel("class")
    ax.set_ylabel("client" + (" (first 60)" if n_clients > 60 else ""))
    ax.set_title(title or "label share per client")
    fig.colorbar(im, ax=ax, label="share of client's samples")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
