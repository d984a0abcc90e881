"""FedDyn (Acar et al., ICLR 2021): dynamic regularisation.

Client k minimises L_k(w) - <g_k, w> + alpha/2 ||w - w_global||^2, where g_k (its state)
tracks grad L_k at its last solution: afterwards g_k <- g_k - alpha (w_k - w_global).
Server: h <- h - alpha (1/N) sum_{k in P} (w_k - w_global); w <- mean_P w_k - h / alpha
(unweighted mean over participants, as in the paper's Algorithm 1: the default server
chain is mean() then sgd(1.0); the update's weight stays the sample count)."""

from __future__ import annotations

from privlearn.fl import tree as T
from privlearn.fl.aggregate import Transform, chain, mean, sgd
from privlearn.fl.algorithms.base import (
    Algorithm,
    LocalSGD,
    local_sgd_step,
    local_start,
    model_update,
    server_start,
    server_step,
)
from privlearn.fl.models import Model


def feddyn(
    model: Model,
    local: LocalSGD,
    n_clients: int,
    alpha: float = 0.01,
    server: Transform | None = None,
) -> Algorithm:
    """FedDyn; `server` reduces and applies the stacked deltas before the -h/alpha
    correction (default: the participants' unweighted mean, step 1)."""
    if alpha <= 0:
        raise ValueError(f"FedDyn alpha must be > 0, got {alpha}")
    server = server or chain(mean(), sgd(1.0))

    def server_init(params, buffers, rng):
        return {**server_start(params, buffers, server), "h": T.zeros_like(params)}

    def client_init(s, cs, info):
        return {
            **local_start(s["params"], s["buffers"], local),
            "anchor": dict(s["params"]),
            "g": dict(cs["g"]),
            "n": info["n"],
        }

    def client_step(lo, b):
        extra = lambda p: {k: alpha * (p[k] - lo["anchor"][k]) - lo["g"][k] for k in p}  # noqa: E731
        return local_sgd_step(model, local, lo, b, extra)

    def client_final(s, lo):
        up = model_update(s["params"], lo)
        return up, {"g": {k: lo["g"][k] - alpha * up.delta[k] for k in lo["g"]}}

    def server_update(s, u, rng):
        h = {k: s["h"][k] - alpha * u.delta[k].sum(0) / n_clients for k in s["h"]}
        out = server_step(s, u, server)
        out["params"] = {k: out["params"][k] - h[k] / alpha for k in out["params"]}
        out["h"] = h
        return out

    return Algorithm(
        name="feddyn",
        server_init=server_init,
        client_state_init=lambda s: {"g": T.zeros_like(s["params"])},
        client_init=client_init,
        client_step=client_step,
        client_final=client_final,
        server_update=server_update,
        global_model=lambda s: (s["params"], s["buffers"]),
    )
