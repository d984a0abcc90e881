"""SCAFFOLD (Karimireddy et al., ICML 2020), option II control variates, server step eta_g.

Client: after every local SGD step, w <- w - lr (c - c_i) (NIID-Bench's placement, which
also holds with momentum). After K steps: c_i+ = c_i - c + (x - y) / (K lr).
Server: x <- x + eta_g * weighted_mean(y - x); c <- c + (1/N) sum_{i in S} (c_i+ - c_i).
Control variates start at zero, as in the paper. control_init="model" reproduces
NIID-Bench instead: there c and every c_i start as the weights of a freshly initialised
network, an offset that cancels under full participation but not under partial
participation (`privlearn bench niid --part scaffold-sampling`; docs/fl.md, "SCAFFOLD at
10 % sampling").
"""

from __future__ import annotations

import torch

from privlearn.fl import tree as T
from privlearn.fl.aggregate import Transform
from privlearn.fl.algorithms.base import (
    Algorithm,
    LocalSGD,
    is_real,
    local_sgd_step,
    local_start,
    model_update,
    server_or_default,
    server_start,
    server_step,
)
from privlearn.fl.models import Model


def scaffold(
    model: Model,
    local: LocalSGD,
    n_clients: int,
    server_lr: float = 1.0,
    control_init: str = "zeros",
    server: Transform | None = None,
) -> Algorithm:
    """SCAFFOLD; `server` reduces and applies the stacked model deltas (default: weighted
    mean, step `server_lr`); the control variates are updated as above whatever it is."""
    if n_clients < 1:
        raise ValueError(f"SCAFFOLD needs the total number of clients N >= 1, got {n_clients}")
    if control_init not in ("zeros", "model"):
        raise ValueError(
            f"control_init must be 'zeros' (the paper) or 'model' (NIID-Bench), "
            f"got {control_init!r}"
        )
    server = server_or_default(server, server_lr)

    def server_init(params, buffers, rng):
        c = T.zeros_like(params) if control_init == "zeros" else model.init(rng)[0]
        return {**server_start(params, buffers, server), "c": c}

    def client_init(s, cs, info):
        return {
            **local_start(s["params"], s["buffers"], local),
            "c": dict(s["c"]),
            "c_i": dict(cs["c"]),
            "n": info["n"],
        }

    def client_step(lo, b):
        out = local_sgd_step(model, local, lo, b)
        shift = local.lr * is_real(b)
        out["params"] = {
            k: out["params"][k] - shift * (lo["c"][k] - lo["c_i"][k]) for k in out["params"]
        }
        return out

    def client_final(s, lo):
        k_lr = lo["steps"] * local.lr
        trained = lo["steps"] > 0
        c_new = {
            k: torch.where(
                trained,
                lo["c_i"][k]
                - lo["c"][k]
                + (s["params"][k] - lo["params"][k]) / k_lr.clamp_min(1e-12),
                lo["c_i"][k],
            )
            for k in lo["c_i"]
        }
        return model_update(s["params"], lo, dc=T.sub(c_new, lo["c_i"])), {"c": c_new}

    def server_update(s, u, rng):
        out = server_step(s, u, server)
        out["c"] = {k: s["c"][k] + u.extras["dc"][k].sum(0) / n_clients for k in s["c"]}
        return out

    return Algorithm(
        name="scaffold",
        server_init=server_init,
        client_state_init=lambda s: {"c": dict(s["c"])},
        client_init=client_init,
        client_step=client_step,
        client_final=client_final,
        server_update=server_update,
        global_model=lambda s: (s["params"], s["buffers"]),
    )
