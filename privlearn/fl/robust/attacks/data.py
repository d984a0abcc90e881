"""Data poisoning: the attackers train honestly on poisoned rows of their own data."""

from __future__ import annotations

import numpy as np
import torch

from privlearn.fl.robust.registry import DataInfo, attack
from privlearn.fl.robust.threat import Attack, Rows


def _check_class(info: DataInfo, name: str, c: int) -> None:
    if not 0 <= c < info.n_classes:
        raise ValueError(f"{name} must be a class in 0..{info.n_classes - 1}, got {c}")


@attack("label-flip")
def label_flip(info: DataInfo, source: int = -1, target: int = 0) -> Attack:
    """Label flipping (Tolpegin et al. 2020): attackers relabel their `source` samples as
    `target` (source = -1: every sample, all-to-one). Success: the global model's rate of
    predicting `target` on test samples of `source` (all non-target samples when -1)."""
    _check_class(info, "target", target)
    if source != -1:
        _check_class(info, "source", source)
        if source == target:
            raise ValueError(f"label-flip source and target are both {source}")

    def victims(y: torch.Tensor) -> torch.Tensor:
        return (y != target) if source == -1 else (y == source)

    def data(x: torch.Tensor, y: torch.Tensor, rows: Rows, rng: np.random.Generator):
        y = y.clone()
        idx = torch.as_tensor(np.concatenate(list(rows.values())), device=y.device)
        flip = idx[victims(y[idx])]
        y[flip] = target
        return x, y

    def backdoor(x: torch.Tensor, y: torch.Tensor):
        keep = victims(y)
        return x[keep], torch.full_like(y[keep], target)

    return Attack(
        "label-flip",
        "data poisoning: attackers train on their samples relabelled as the target class",
        data=data,
        backdoor=backdoor,
    )
