"""FedNova (Wang et al., NeurIPS 2020): normalised averaging for unequal local work.

Client i with tau_i local steps of SGD with momentum rho reports d_i = (x - y_i) / a_i,
a_i = (tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho)  (a_i = tau_i without momentum).
Server: x <- x - tau_eff * sum_i p_i d_i with p_i = n_i / sum n and tau_eff = sum_i p_i a_i
(NIID-Bench's `fednova`). The rows handed to the server transform are tau_eff * (-d_i), so a
robust reducer or server optimiser composes as for FedAvg."""

from __future__ import annotations

from dataclasses import replace

import torch

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
)
from privlearn.fl.models import Model


def normaliser(tau: torch.Tensor, rho: float) -> torch.Tensor:
    """a_i: the effective number of steps of tau SGD steps with momentum rho."""
    if rho == 0:
        return tau
    return (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)


def fednova(
    model: Model, local: LocalSGD, server_lr: float = 1.0, server: Transform | None = None
) -> Algorithm:
    """FedNova; `server` reduces and applies the rows tau_eff * (-d_i) (default: weighted
    mean, step `server_lr`)."""
    server = server_or_default(server, server_lr)

    def client_init(s, cs, info):
        return {**local_start(s["params"], s["buffers"], local), "n": info["n"]}

    def client_final(s, lo):
        a = normaliser(lo["steps"], local.momentum)
        up = model_update(s["params"], lo, a=a)
        return replace(up, delta={k: v / a.clamp_min(1e-12) for k, v in up.delta.items()}), {}

    def server_update(s, u, rng):
        p = u.weight / u.weight.sum()
        tau_eff = (p * u.extras["a"]).sum()
        return server_step(s, u, server, rows={k: tau_eff * v for k, v in u.delta.items()})

    return Algorithm(
        name="fednova",
        server_init=lambda params, buffers, rng: server_start(params, buffers, server),
        client_state_init=lambda s: {},
        client_init=client_init,
        client_step=lambda lo, b: local_sgd_step(model, local, lo, b),
        client_final=client_final,
        server_update=server_update,
        global_model=lambda s: (s["params"], s["buffers"]),
    )
