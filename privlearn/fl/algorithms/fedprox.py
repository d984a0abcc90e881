"""FedProx (Li et al., MLSys 2020): local loss + mu/2 ||w - w_global||^2.

Stragglers that do partial work are a property of the round plan (plan.py), not of the
algorithm: FedProx keeps their partial updates, FedAvg as run in the paper drops them."""

from __future__ import annotations

from privlearn.fl.algorithms.base import (
    Algorithm,
    LocalSGD,
    apply_server,
    averaged_buffers,
    default_server,
    local_sgd_step,
    local_start,
    model_update,
    server_start,
)
from privlearn.fl.models import Model


def fedprox(model: Model, local: LocalSGD, mu: float = 0.01, server_lr: float = 1.0) -> Algorithm:
    if mu < 0:
        raise ValueError(f"FedProx mu must be >= 0, got {mu}")
    server = default_server(server_lr)

    def client_init(s, cs, info):
        return {
            **local_start(s["params"], s["buffers"], local),
            "anchor": dict(s["params"]),
            "n": info["n"],
        }

    def client_step(lo, b):
        prox = lambda p: {k: mu * (p[k] - lo["anchor"][k]) for k in p}  # noqa: E731
        return local_sgd_step(model, local, lo, b, prox)

    def server_update(s, u, rng):
        return apply_server(s, u["delta"], u["weight"], server, averaged_buffers(s["buffers"], u))

    return Algorithm(
        name="fedprox",
        server_init=lambda params, buffers, rng: server_start(params, buffers, server),
        client_state_init=lambda s: {},
        client_init=client_init,
        client_step=client_step,
        client_final=lambda s, lo: (model_update(s["params"], lo, lo["n"]), {}),
        server_update=server_update,
        global_model=lambda s: (s["params"], s["buffers"]),
    )
