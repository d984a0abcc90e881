"""FedProx (Li et al., MLSys 2020): local loss + mu/2 ||w - w_global||^2.

Stragglers that do partial work are a property of the round plan (plan.py), not of the
algorithm: FedProx keeps their partial updates, FedAvg as run in the paper drops them."""

from __future__ import annotations

from privlearn.fl.aggregate import Transform
from privlearn.fl.algorithms.base import (
    Algorithm,
    LocalSGD,
    local_sgd_step,
    local_start,
    model_update,
    server_or_default,
    server_start,
    server_step,
    summed_server,
)
from privlearn.fl.models import Model


def fedprox(
    model: Model,
    local: LocalSGD,
    mu: float = 0.01,
    server_lr: float = 1.0,
    server: Transform | None = None,
) -> Algorithm:
    """FedProx; `server` reduces and applies the stacked deltas (default: weighted mean,
    step `server_lr`)."""
    if mu < 0:
        raise ValueError(f"FedProx mu must be >= 0, got {mu}")
    server = server_or_default(server, server_lr)

    def client_init(s, cs, info):
        return {
            **local_start(s["params"], s["buffers"], local),
            "anchor": dict(s["params"]),
            "n": info["n"],
        }

    def client_step(lo, b):
        prox = lambda p: {k: mu * (p[k] - lo["anchor"][k]) for k in p}  # noqa: E731
        return local_sgd_step(model, local, lo, b, prox)

    return Algorithm(
        name="fedprox",
        server_init=lambda params, buffers, rng: server_start(params, buffers, server),
        client_state_init=lambda s: {},
        client_init=client_init,
        client_step=client_step,
        client_final=lambda s, lo: (model_update(s["params"], lo), {}),
        server_update=lambda s, u, rng: server_step(s, u, server),
        global_model=lambda s: (s["params"], s["buffers"]),
        sum_split=summed_server(server),
    )
