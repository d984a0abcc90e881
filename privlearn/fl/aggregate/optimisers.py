"""Server optimisers: the step taken from the reduced update (FedAvg's sgd, FedAvgM, FedOpt)."""

from __future__ import annotations

from typing import Any

import torch

from privlearn.fl import tree as T
from privlearn.fl.aggregate.transform import Params, Transform, Updates, check_stage, stateless


def sgd(lr: float = 1.0) -> Transform:
    """Server step = lr * mean update (lr = 1: plain FedAvg; the server step size eta_g)."""

    def fn(u: Updates, params: Params) -> Updates:
        check_stage(u, False, "sgd")
        return Updates(T.tree_map(lambda t: lr * t, u.values))

    return stateless(fn)


def momentum(lr: float = 1.0, beta: float = 0.9) -> Transform:
    """FedAvgM (Hsu et al. 2019): v <- beta v + delta; step = lr v."""

    def update(u: Updates, v: Any, params: Params) -> tuple[Updates, Any]:
        check_stage(u, False, "momentum")
        v = T.tree_map(lambda a, d: beta * a + d, v, u.values)
        return Updates(T.tree_map(lambda a: lr * a, v)), v

    return Transform(lambda params: T.zeros_like(params), update)


def _adaptive(kind: str, lr: float, beta1: float, beta2: float, tau: float) -> Transform:
    """Reddi et al. 2021, Algorithm 2: m <- b1 m + (1-b1) d; v per kind; step = lr m/(sqrt v + tau).

    v starts at tau^2 as the paper requires (v_-1 >= tau^2); there is no bias correction."""

    def init(params: Params) -> dict:
        return {
            "m": T.zeros_like(params),
            "v": T.tree_map(lambda t: torch.full_like(t, tau**2), params),
        }

    def update(u: Updates, s: dict, params: Params) -> tuple[Updates, dict]:
        check_stage(u, False, f"fed{kind}")
        d = u.values
        m = T.tree_map(lambda a, g: beta1 * a + (1 - beta1) * g, s["m"], d)
        if kind == "adagrad":
            v = T.tree_map(lambda a, g: a + g * g, s["v"], d)
        elif kind == "adam":
            v = T.tree_map(lambda a, g: beta2 * a + (1 - beta2) * g * g, s["v"], d)
        else:  # yogi
            v = T.tree_map(lambda a, g: a - (1 - beta2) * g * g * torch.sign(a - g * g), s["v"], d)
        step = T.tree_map(lambda a, b: lr * a / (torch.sqrt(b) + tau), m, v)
        return Updates(step), {"m": m, "v": v}

    return Transform(init, update)


def adam(lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> Transform:
    """FedAdam server optimiser."""
    return _adaptive("adam", lr, beta1, beta2, tau)


def yogi(lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> Transform:
    """FedYogi server optimiser."""
    return _adaptive("yogi", lr, beta1, beta2, tau)


def adagrad(lr: float = 0.1, beta1: float = 0.0, tau: float = 1e-3) -> Transform:
    """FedAdagrad server optimiser (beta1 = 0: no server momentum, as Flower's FedAdagrad)."""
    return _adaptive("adagrad", lr, beta1, 0.0, tau)


def apply_updates(params: Params, u: Updates) -> Params:
    """params + server step (entries the step does not name stay as they are)."""
    check_stage(u, False, "apply_updates")
    return {k: params[k] + u.values[k] if k in u.values else params[k] for k in params}
