"""The threat model of `privlearn fl run`: a Scenario from the config, and what each round
reports about it (which attackers were sampled, whom the defence excluded or down-weighted,
false positives and negatives, attack success)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from privlearn.fl.algorithms.base import LocalSGD
from privlearn.fl.evaluate import accuracy
from privlearn.fl.robust.registry import DataInfo, build_attack, build_defence
from privlearn.fl.robust.scenario import Scenario
from privlearn.fl.robust.threat import choose_attackers

NO_DEFENCE = ("fedfomo",)  # uploads whole models into per-client banks: nothing to reduce


def build_scenario(cfg: Any, data: Any, model: Any, algo: Any) -> tuple[Any, Scenario | None]:
    """(data, scenario) for a RunConfig; the data lose their root set's test rows when the
    defence keeps one. Every check runs here, before any training."""
    if cfg.attack is None and cfg.defence is None:
        return data, None
    if cfg.algorithm in NO_DEFENCE:
        raise ValueError(
            f"{cfg.algorithm} uploads whole models into per-client banks; attacks and "
            "defences need an algorithm that uploads model deltas"
        )
    attack = None
    if cfg.attack is not None:
        info = DataInfo(
            data.n_classes,
            tuple(data.input_shape),
            data.x_train,
            data.y_train,
            data.clients,
            cfg.seed,
        )
        attack = build_attack(cfg.attack, info, **cfg.attack_params)
        if attack.needs_images and len(data.input_shape) != 3:
            raise ValueError(
                f"attack {cfg.attack} puts a trigger on images; {cfg.dataset} has "
                f"{tuple(data.input_shape)}-shaped rows"
            )
    defence = None if cfg.defence is None else build_defence(cfg.defence, **cfg.defence_params)
    root = None
    if defence is not None and defence.needs_root:
        data, root = _split_root(data, cfg.root_size, cfg.seed)
    attackers = choose_attackers(cfg.n_clients, cfg.attackers, cfg.seed)
    window = tuple(cfg.attack_window) if cfg.attack_window else None
    if window is not None and window[0] > cfg.rounds:
        raise ValueError(f"attack_window {list(window)} starts after the last round {cfg.rounds}")
    scenario = Scenario(
        attack,
        attackers,
        defence,
        data.clients,
        cfg.seed,
        f=cfg.defence_f,
        window=window,
        model=model,
        local=LocalSGD(cfg.lr, cfg.momentum, cfg.weight_decay),
        root=root,
    )
    if defence is not None and cfg.sampling != "poisson":
        k = cfg.n_clients if cfg.sampling == "all" else cfg.cohort_size
        k = int(round(k * (1 - cfg.stragglers))) if cfg.straggler_policy == "drop" else k
        scenario.check(k, scenario.most_f(k))
    return data, scenario


def _split_root(data: Any, size: int, seed: int) -> tuple[Any, tuple]:
    """The server's root set: `size` test rows drawn by seed, removed from the test set."""
    n = len(data.y_test)
    if not 1 <= size < n:
        raise ValueError(f"root_size must be in 1..{n - 1} (the test set has {n} rows)")
    perm = torch.as_tensor(np.random.default_rng([seed, 108]).permutation(n), device="cpu")
    perm = perm.to(data.y_test.device)
    root, rest = perm[:size], perm[size:]
    kept = dataclasses.replace(data, x_test=data.x_test[rest], y_test=data.y_test[rest])
    return kept, (data.x_test[root], data.y_test[root])


def backdoor_accuracy(exp: Any, server: dict) -> float | None:
    """Attack success: the global model's accuracy on the attack's triggered test inputs
    and target labels (None for untargeted attacks and models without a global model)."""
    attack = exp.scenario.attack
    gm = exp.algo.global_model(server)
    if attack.backdoor is None or gm is None:
        return None
    x, y = attack.backdoor(exp.data.x_test, exp.data.y_test)
    if len(y) == 0:
        return None
    return accuracy(exp.model, gm[0], gm[1], x, y)[0]


def round_report(scenario: Scenario | None, stats: Any) -> dict:
    """The metrics entry's threat fields for one round."""
    if scenario is None:
        return {}
    attackers = set(stats.attackers)
    v = stats.verdict
    out: dict[str, Any] = {"attackers": sorted(attackers)}
    if scenario.defence is not None and scenario.defence.selects:
        excluded = set(v.excluded)
        out.update(
            excluded=sorted(excluded),
            downweighted={str(k): a for k, a in sorted(v.downweighted.items())},
            false_positives=len(excluded - attackers),
            false_negatives=len(attackers - excluded),
        )
    return out
