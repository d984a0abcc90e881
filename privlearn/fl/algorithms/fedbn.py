"""FedBN (Li et al., ICLR 2021): FedAvg that never averages batch-norm layers.

Each client keeps its own BN weights, biases and running statistics (its client state);
only the other parameters travel and are averaged. There is no single global model: the
model client k uses is the shared layers plus its own BN (`personal_model`)."""

from __future__ import annotations

from privlearn.fl.aggregate import Transform, Updates, apply_updates
from privlearn.fl.algorithms.base import (
    Algorithm,
    LocalSGD,
    default_server,
    local_sgd_step,
    local_start,
)
from privlearn.fl.models import Model


def fedbn(
    model: Model, local: LocalSGD, server: Transform | None = None, server_lr: float = 1.0
) -> Algorithm:
    if not model.local_keys:
        raise ValueError(
            f"FedBN needs a model with batch norm (cnn-bn or mlp-bn); {model.name!r} has none"
        )
    server = server or default_server(server_lr)
    local_keys = model.local_keys

    def shared(params):
        return {k: v for k, v in params.items() if k not in local_keys}

    def own(tree):
        return {k: v for k, v in tree.items() if k in local_keys}

    def server_init(params, buffers, rng):
        return {
            "params": dict(params),
            "buffers": dict(buffers),
            "opt": server.init(shared(params)),
        }

    def client_init(s, cs, info):
        params = {**s["params"], **cs["params"]}
        return {**local_start(params, {**s["buffers"], **cs["buffers"]}, local), "n": info["n"]}

    def client_final(s, lo):
        delta = {k: lo["params"][k] - s["params"][k] for k in shared(lo["params"])}
        update = {
            "delta": delta,
            "weight": lo["n"],
            "loss": lo["loss"] / lo["steps"].clamp_min(1),
            "steps": lo["steps"],
        }
        return update, {"params": own(lo["params"]), "buffers": own(lo["buffers"])}

    def server_update(s, u, rng):
        step, opt = server.update(Updates(u["delta"], u["weight"]), s["opt"], shared(s["params"]))
        return {
            **s,
            "params": {**s["params"], **apply_updates(shared(s["params"]), step)},
            "opt": opt,
        }

    return Algorithm(
        name="fedbn",
        server_init=server_init,
        client_state_init=lambda s: {"params": own(s["params"]), "buffers": own(s["buffers"])},
        client_init=client_init,
        client_step=lambda lo, b: local_sgd_step(model, local, lo, b),
        client_final=client_final,
        server_update=server_update,
        global_model=lambda s: None,
        personal_model=lambda s, cs, info, b: (
            {**s["params"], **cs["params"]},
            {**s["buffers"], **cs["buffers"]},
        ),
    )
