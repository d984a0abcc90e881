"""SCAFFOLD (Karimireddy et al., ICML 2020), option II control variates, server step eta_g.

Client: after every local SGD step, w <- w - lr (c - c_i) (NIID-Bench's placement, which
also holds with momentum). After K steps: c_i+ = c_i - c + (x - y) / (K lr).
Server: x <- x + eta_g * weighted_mean(y - x); c <- c + (1/N) sum_{i in S} (c_i+ - c_i).
Control variates start at zero, as in the paper. control_init="model" reproduces
NIID-Bench instead: there c and every c_i start as the weights of a freshly initialised
network, an offset that cancels under full participation but not under partial
participation (see the README's NIID-Bench section).
"""

from __future__ import annotations

import torch

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import (
    Algorithm,
    LocalSGD,
    apply_server,
    averaged_buffers,
    default_server,
    is_real,
    local_sgd_step,
    local_start,
    model_update,
    server_start,
)
from privlearn.fl.models import Model


def scaffold(
    model: Model,
    local: LocalSGD,
    n_clients: int,
    server_lr: float = 1.0,
    control_init: str = "zeros",
) -> Algorithm:
    if n_clients < 1:
        raise ValueError(f"SCAFFOLD needs the total number of clients N >= 1, got {n_clients}")
    if control_init not in ("zeros", "model"):
        raise ValueError(
            f"control_init must be 'zeros' (the paper) or 'model' (NIID-Bench), "
            f"got {control_init!r}"
        )
    server = default_server(server_lr)

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
        update = {**model_update(s["params"], lo, lo["n"]), "dc": T.sub(c_new, lo["c_i"])}
        return update, {"c": c_new}

    def server_update(s, u, rng):
        out = apply_server(s, u["delta"], u["weight"], server, averaged_buffers(s["buffers"], u))
        out["c"] = {k: s["c"][k] + u["dc"][k].sum(0) / n_clients for k in s["c"]}
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
