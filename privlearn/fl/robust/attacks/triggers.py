"""Backdoor triggers: pixel patterns stamped on images, whole or in pieces (DBA)."""

from __future__ import annotations

import torch


def pattern(shape: tuple[int, ...], size: int | None = None) -> torch.Tensor:
    """BadNets' trigger as a 0/1 mask over one image: a white square of side `size` (default
    a quarter of the side, at least 4 pixels so that DBA can split it in four) in the
    bottom-right corner, one pixel from the edge."""
    c, h, w = shape
    s = size or max(4, min(h, w) // 4)
    if not 1 <= s <= min(h, w) - 1:
        raise ValueError(f"trigger size must be in 1..{min(h, w) - 1} for {h}x{w} images, got {s}")
    mask = torch.zeros(shape)
    mask[:, h - 1 - s : h - 1, w - 1 - s : w - 1] = 1.0
    return mask


def pieces(mask: torch.Tensor, n: int) -> list[torch.Tensor]:
    """DBA's local triggers: the trigger's pixels split into `n` vertical bands of columns."""
    cols = torch.nonzero(mask.sum((0, 1))).flatten()
    if n < 1 or n > len(cols):
        raise ValueError(f"a trigger {len(cols)} columns wide splits into 1..{len(cols)} pieces")
    out = []
    for band in torch.tensor_split(cols, n):
        piece = torch.zeros_like(mask)
        piece[..., band] = mask[..., band]
        out.append(piece)
    return out


def stamp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Images with the trigger's pixels set to the brightest value of the data (1.0 for
    inputs scaled to [0, 1])."""
    m = mask.to(x.device, x.dtype)
    return x * (1 - m) + m * x.amax().clamp_min(1.0)


def triggered_test(mask: torch.Tensor, target: int):
    """The attack-success map of a trigger backdoor: test inputs not of `target`, stamped,
    against the label `target`."""

    def backdoor(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = y != target
        return stamp(x[keep], mask), torch.full_like(y[keep], target)

    return backdoor
