"""How close a reconstruction is to the image it came from: PSNR, SSIM, the pairing of a
batch's reconstructions with its originals, and a PNG grid to look at.

A batch inversion returns its images in no particular order, so each reconstruction is scored
against the original it matches best (one-to-one, the pairing that maximises total PSNR).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(range^2 / MSE); inf for identical images."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def _window(side: int) -> tuple[int, float]:
    """Wang et al. (2004)'s 11x11 Gaussian window (sigma 1.5) when the image holds it; for
    smaller images (8x8 digits) a 5x5 window, sigma 0.75, which leaves 4x4 positions."""
    return (11, 1.5) if side >= 11 else (5, 0.75)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean structural similarity of two (C, H, W) images (channels averaged), Gaussian
    window over valid positions as in Wang et al.'s reference code; 1.0 for identical
    images. The window is 11x11 (sigma 1.5) for sides >= 11, else 5x5 (sigma 0.75)."""
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"ssim: needs two (C, H, W) images of one shape, got {a.shape}, {b.shape}")
    size, sigma = _window(min(a.shape[-2:]))
    if min(a.shape[-2:]) < size:
        raise ValueError(f"ssim: images of {tuple(a.shape[-2:])} are smaller than {size}x{size}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    w = torch.outer(g, g)
    w = (w / w.sum())[None, None]
    x, y = a.double()[:, None], b.double()[:, None]  # channels as a batch of 1-channel images

    def blur(t):
        return F.conv2d(t, w)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def match(
    originals: torch.Tensor, reconstructions: torch.Tensor, data_range: float = 1.0
) -> list[dict]:
    """Pair each reconstruction with one original (Hungarian assignment maximising total
    PSNR, since an inversion's order is arbitrary) and score the pairs.

    Returns, per original in order, {"index": reconstruction index, "psnr", "ssim"}."""
    from scipy.optimize import linear_sum_assignment

    if originals.shape != reconstructions.shape:
        raise ValueError(
            f"match: originals {tuple(originals.shape)} and reconstructions"
            f" {tuple(reconstructions.shape)} differ in shape"
        )
    n = originals.shape[0]
    table = np.array(
        [[psnr(originals[i], reconstructions[j], data_range) for j in range(n)] for i in range(n)]
    )
    rows, cols = linear_sum_assignment(np.nan_to_num(table, posinf=1e6), maximize=True)
    return [
        {
            "index": int(j),
            "psnr": float(table[i, j]),
            "ssim": ssim(originals[i], reconstructions[j], data_range),
        }
        for i, j in zip(rows, cols, strict=True)
    ]


def save_grid(
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    path: str | Path,
    title: str = "",
    scores: list[dict] | None = None,
) -> Path:
    """Save a PNG: originals on the top row, their matched reconstructions below (with
    PSNR/SSIM when `scores`, as `match` returns them, are given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = originals.shape[0]
    order = [s["index"] for s in scores] if scores is not None else list(range(n))
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n + 0.4, 3.2), squeeze=False)
    for i in range(n):
        for row, img in ((0, originals[i]), (1, reconstructions[order[i]])):
            ax = axes[row][i]
            im = img.detach().cpu().float().numpy()
            ax.imshow(
                im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1
            )
            ax.set_xticks([])
            ax.set_yticks([])
        if scores is not None:
            axes[1][i].set_xlabel(
                f"{scores[i]['psnr']:.1f} dB\n{scores[i]['ssim']:.2f}", fontsize=7
            )
    axes[0][0].set_ylabel("original", fontsize=8)
    axes[1][0].set_ylabel("inverted", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
