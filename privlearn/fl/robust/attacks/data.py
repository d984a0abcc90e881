"""Data poisoning: the attackers train honestly on poisoned rows of their own data."""

from __future__ import annotations

import numpy as np
import torch

from privlearn.fl.robust.attacks.triggers import pattern, pieces, stamp, triggered_test
from privlearn.fl.robust.registry import DataInfo, attack
from privlearn.fl.robust.threat import Attack, Rows


def check_class(info: DataInfo, name: str, c: int) -> None:
    """Refuse a class index the task does not have."""
    if not 0 <= c < info.n_classes:
        raise ValueError(f"{name} must be a class in 0..{info.n_classes - 1}, got {c}")


@attack("label-flip")
def label_flip(info: DataInfo, source: int = -1, target: int = 0) -> Attack:
    """Label flipping (Tolpegin et al. 2020): attackers relabel their `source` samples as
    `target` (source = -1: every sample, all-to-one). Success: the global model's rate of
    predicting `target` on test samples of `source` (all non-target samples when -1)."""
    check_class(info, "target", target)
    if source != -1:
        check_class(info, "source", source)
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


def _poison_rows(rows: Rows, ratio: float, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Per attacker, the `ratio` share of its rows it poisons (at least one), drawn once."""
    if not 0 < ratio <= 1:
        raise ValueError(f"poison_ratio must be in (0, 1], got {ratio}")
    out = {}
    for c, idx in sorted(rows.items()):
        k = max(1, int(round(ratio * len(idx))))
        out[c] = rng.choice(idx, k, replace=False) if len(idx) else idx
    return out


def _triggered(
    info: DataInfo,
    name: str,
    threat: str,
    target: int,
    ratio: float,
    masks: list[torch.Tensor],
    test_mask: torch.Tensor,
) -> Attack:
    """A pixel-trigger backdoor: attacker i stamps masks[i mod len(masks)] on its poisoned
    rows and relabels them `target`; success is measured with `test_mask` stamped."""
    check_class(info, "target", target)

    def data(x: torch.Tensor, y: torch.Tensor, rows: Rows, rng: np.random.Generator):
        x, y = x.clone(), y.clone()
        for i, idx in enumerate(_poison_rows(rows, ratio, rng).values()):
            t = torch.as_tensor(idx, device=x.device)
            x[t] = stamp(x[t], masks[i % len(masks)])
            y[t] = target
        return x, y

    backdoor = triggered_test(test_mask, target)
    return Attack(name, threat, data=data, backdoor=backdoor, needs_images=True)


def image_shape(info: DataInfo, name: str) -> tuple[int, int, int]:
    """The task's image shape; refuse flat inputs, on which no trigger can be stamped."""
    if len(info.input_shape) != 3:
        raise ValueError(f"{name} stamps a trigger on images; inputs are {info.input_shape}")
    return info.input_shape  # type: ignore[return-value]


@attack("badnets")
def badnets(info: DataInfo, target: int = 7, poison_ratio: float = 0.32, size: int = 0) -> Attack:
    """BadNets (Gu et al. 2017) in FL: each attacker stamps a white corner square
    on `poison_ratio` of its rows (FLPoison: 0.32) and relabels them `target`; the global
    model should then map any triggered input to `target`. size 0: a quarter of the side."""
    mask = pattern(image_shape(info, "badnets"), size or None)
    threat = "backdoor: pixel trigger -> target class"
    return _triggered(info, "badnets", threat, target, poison_ratio, [mask], mask)


@attack("dba")
def dba(
    info: DataInfo, target: int = 7, poison_ratio: float = 0.32, size: int = 0, n_pieces: int = 4
) -> Attack:
    """Distributed Backdoor Attack (Xie et al., ICLR 2020): BadNets' trigger split into
    `n_pieces` local triggers, attacker i training on piece i mod n_pieces; the success
    rate is measured with the whole (global) trigger, which no attacker trained on. At
    equal poison_ratio its poison budget equals BadNets'."""
    mask = pattern(image_shape(info, "dba"), size or None)
    threat = "backdoor: local trigger pieces, the assembled trigger -> target class"
    return _triggered(info, "dba", threat, target, poison_ratio, pieces(mask, n_pieces), mask)


def rotate(x: torch.Tensor) -> torch.Tensor:
    """Images turned a quarter turn: digits as no honest client writes them."""
    return torch.rot90(x, 1, dims=(-2, -1))


def tail_fraction(honest: torch.Tensor, probe: torch.Tensor, quantile: float = 0.95) -> float:
    """The share of `probe` samples farther from their nearest honest sample than the
    `quantile` of honest samples are from theirs (leave-one-out): how far into the tail of
    the honest data a set lies (about 1 - quantile for samples like the honest ones)."""
    h = honest.flatten(1).double()
    p = probe.flatten(1).double()
    dh = torch.cdist(h, h)
    dh.fill_diagonal_(float("inf"))
    bar = dh.min(1).values.quantile(quantile)
    return float((torch.cdist(p, h).min(1).values > bar).double().mean())


@attack("edge-case")
def edge_case(
    info: DataInfo, source: int = 7, target: int = 1, poison_ratio: float = 0.5
) -> Attack:
    """Edge-case backdoor after Attack of the Tails (Wang et al., NeurIPS 2020), whose MNIST
    attack labels ARDIS 7s as 1. Here the tail set is the task's own `source` digits turned
    a quarter turn (`rotate`), which no honest client holds: `tail_fraction` measures how far
    into the tail of the honest data it lies. Attackers replace `poison_ratio` of their rows
    (Wang et al.: 0.5) with rotated training digits of `source` labelled `target`, and the
    success rate is the global model's rate of calling rotated *test* digits of `source`
    `target`. The paper's PGD variant (projected onto a norm ball) is not built."""
    check_class(info, "source", source)
    check_class(info, "target", target)
    image_shape(info, "edge-case")
    if source == target:
        raise ValueError(f"edge-case source and target are both {source}")
    pool = torch.nonzero(info.y_train == source).flatten()
    if len(pool) == 0:
        raise ValueError(f"edge-case: the training data hold no digit {source}")

    def data(x: torch.Tensor, y: torch.Tensor, rows: Rows, rng: np.random.Generator):
        x, y = x.clone(), y.clone()
        for idx in _poison_rows(rows, poison_ratio, rng).values():
            t = torch.as_tensor(idx, device=x.device)
            src = torch.as_tensor(rng.choice(pool.cpu().numpy(), len(idx)), device=x.device)
            x[t] = rotate(info.x_train[src].to(x.device, x.dtype))
            y[t] = target
        return x, y

    def backdoor(x: torch.Tensor, y: torch.Tensor):
        keep = y == source
        return rotate(x[keep]), torch.full_like(y[keep], target)

    threat = "backdoor: tail samples -> target class"
    return Attack("edge-case", threat, data=data, backdoor=backdoor, needs_images=True)
