"""FedAvg (McMahan et al., AISTATS 2017): local SGD, sample-weighted average of the models.

With a non-default `server` transform the same client code gives the FedOpt family
(fedopt.py): the server treats the averaged delta as a pseudo-gradient."""

from __future__ import annotations

from privlearn.fl.aggregate import Transform
from privlearn.fl.algorithms.base import (
    Algorithm,
    LocalSGD,
    default_server,
    local_sgd_step,
    local_start,
    model_update,
    server_start,
    server_step,
    summed_server,
)
from privlearn.fl.models import Model


def fedavg(
    model: Model, local: LocalSGD, server: Transform | None = None, name: str = "fedavg"
) -> Algorithm:
    """FedAvg; `server` reduces and applies the stacked deltas (default: weighted mean, lr 1)."""
    server = server or default_server()

    def client_init(s, cs, info):
        return {**local_start(s["params"], s["buffers"], local), "n": info["n"]}

    return Algorithm(
        name=name,
        server_init=lambda params, buffers, rng: server_start(params, buffers, server),
        client_state_init=lambda s: {},
        client_init=client_init,
        client_step=lambda lo, b: local_sgd_step(model, local, lo, b),
        client_final=lambda s, lo: (model_update(s["params"], lo), {}),
        server_update=lambda s, u, rng: server_step(s, u, server),
        global_model=lambda s: (s["params"], s["buffers"]),
        sum_split=summed_server(server),
    )
