"""Model poisoning: attackers forge the uploads of their rows after local training."""

from __future__ import annotations

import torch

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.robust.registry import DataInfo, attack
from privlearn.fl.robust.threat import Attack, AttackContext, with_delta


def _forge(u: ClientUpdate, ctx: AttackContext, rows: torch.Tensor) -> ClientUpdate:
    """`u` with the model-delta rows of the attackers replaced by `rows` ([K, P]; rows of
    honest clients are ignored)."""
    m = T.flat_rows(u.delta)
    return with_delta(u, torch.where(ctx.attacker[:, None], rows.to(m.dtype), m))


@attack("gaussian")
def gaussian(info: DataInfo, sigma: float = 1.0) -> Attack:
    """Gaussian noise (Blades' noise attack): attackers upload N(0, sigma^2) per coordinate
    in place of their model delta. Untargeted: it lowers main-task accuracy."""
    if not sigma > 0:
        raise ValueError(f"gaussian attack sigma must be > 0, got {sigma}")

    def updates(u: ClientUpdate, ctx: AttackContext) -> ClientUpdate:
        m = T.flat_rows(u.delta)
        noise = torch.randn(m.shape, generator=ctx.rng, dtype=m.dtype).to(m.device) * sigma
        return _forge(u, ctx, noise)

    return Attack("gaussian", "model poisoning: random uploads", updates=updates)


@attack("sign-flip")
def sign_flip(info: DataInfo, scale: float = 1.0) -> Attack:
    """Sign flipping (Damaskinos et al. 2018; Blades): attackers upload -scale times their
    honest delta, pushing the model up the loss."""
    if not scale > 0:
        raise ValueError(f"sign-flip scale must be > 0, got {scale}")

    def updates(u: ClientUpdate, ctx: AttackContext) -> ClientUpdate:
        return _forge(u, ctx, -scale * T.flat_rows(u.delta))

    return Attack("sign-flip", "model poisoning: the negated honest update", updates=updates)
