"""Step-level attacks: attacker rows run a rewritten client step inside the vmapped cohort.

Each wraps the algorithm's client functions: client_init marks the local state of attacker
rows (`is_attacker` on the client's id, a scalar under vmap), and the step applies the
attacker's change only where the mark is set (`torch.where`), so honest rows compute exactly
what they would without the attack, in the same vmapped call."""

from __future__ import annotations

import dataclasses

import torch

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import Algorithm
from privlearn.fl.robust.attacks.data import badnets, check_class, image_shape
from privlearn.fl.robust.attacks.triggers import pattern, stamp, triggered_test
from privlearn.fl.robust.registry import DataInfo, attack
from privlearn.fl.robust.threat import Attack, is_attacker


def _marked(algo: Algorithm, attackers: torch.Tensor, extra) -> Algorithm:
    """`algo` whose client_init adds {"_attacker": bool} and extra(local) to the local state."""

    def client_init(s, cs, info):
        local = algo.client_init(s, cs, info)
        return {**local, "_attacker": is_attacker(attackers, info["id"]), **extra(local)}

    return dataclasses.replace(algo, client_init=client_init)


@attack("neurotoxin")
def neurotoxin(
    info: DataInfo, target: int = 7, poison_ratio: float = 0.32, ratio: float = 0.1
) -> Attack:
    """Neurotoxin (Zhang et al., ICML 2022): BadNets poisoning whose local steps are
    projected onto the coordinates the global model changes least: the `ratio` share of
    coordinates with the largest |last global update| are frozen for attackers (the paper's
    top-k mask, ratio 0.1 as FLPoison), so the backdoor lives where honest training does not
    overwrite it and outlasts the attack window. The last global update is the difference of
    the global models the attack saw in its last two active rounds (none in its first: no
    mask); a resumed run starts this memory afresh."""
    if not 0 < ratio < 1:
        raise ValueError(f"neurotoxin ratio must be in (0, 1), got {ratio}")
    base = badnets(info, target, poison_ratio)
    seen: dict = {}

    def wrap(algo: Algorithm, attackers: torch.Tensor, server: dict) -> Algorithm:
        params = server["params"]
        prev, seen["params"] = seen.get("params"), {k: v.clone() for k, v in params.items()}
        if prev is None:
            return algo
        change = T.sub(params, prev)
        flat = torch.cat([v.flatten().abs() for v in change.values()])
        k = max(1, int(ratio * flat.numel()))
        cut = flat.topk(k).values[-1]
        keep = {n: (v.abs() < cut).to(v.dtype) for n, v in change.items()}
        marked = _marked(algo, attackers, lambda local: {"_keep": keep})

        def client_step(local, batch):
            new = algo.client_step(local, batch)
            old, p = local["params"], new["params"]
            m = {n: torch.where(local["_attacker"], local["_keep"][n], 1.0) for n in p}
            return {**new, "params": {n: old[n] + m[n] * (p[n] - old[n]) for n in p}}

        return dataclasses.replace(marked, client_step=client_step)

    threat = "backdoor: trigger trained on the coordinates honest updates leave alone"
    return Attack(
        "neurotoxin", threat, data=base.data, wrap=wrap, backdoor=base.backdoor, needs_images=True
    )


@attack("blind")
def blind(info: DataInfo, target: int = 7, fraction: float = 0.3, size: int = 0) -> Attack:
    """The blind backdoor (Bagdasaryan & Shmatikov, USENIX Security 2021): the attacker's
    compromised training code, not its data, injects the trigger: in every step a `fraction`
    of the attacker's batch is stamped and relabelled `target` at loss time, so nothing
    poisoned is ever stored. Simplified: one fixed mix of main and backdoor samples, not the
    paper's MGDA balancing of the two losses."""
    if not 0 < fraction <= 1:
        raise ValueError(f"blind fraction must be in (0, 1], got {fraction}")
    check_class(info, "target", target)
    mask = pattern(image_shape(info, "blind"), size or None)

    def wrap(algo: Algorithm, attackers: torch.Tensor, server: dict) -> Algorithm:
        marked = _marked(algo, attackers, lambda local: {})

        def client_step(local, batch):
            b = batch["x"].shape[0]
            pos = torch.arange(b, device=batch["x"].device)
            poison = (pos < max(1, int(fraction * b))) & local["_attacker"]
            x = torch.where(
                poison.view(-1, *([1] * (batch["x"].dim() - 1))),
                stamp(batch["x"], mask),
                batch["x"],
            )
            y = torch.where(poison, torch.full_like(batch["y"], target), batch["y"])
            return algo.client_step(local, {**batch, "x": x, "y": y})

        return dataclasses.replace(marked, client_step=client_step)

    threat = "backdoor: trigger injected at loss time by compromised code"
    backdoor = triggered_test(mask, target)
    return Attack("blind", threat, wrap=wrap, backdoor=backdoor, needs_images=True)
