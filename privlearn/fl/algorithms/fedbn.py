"""FedBN (Li et al., ICLR 2021): FedAvg that never averages batch-norm layers.

Each client keeps its own BN weights, biases and running statistics (its client state);
only the other parameters travel and are averaged. There is no single global model: the
model client k uses is the shared layers plus its own BN (`personal_model`)."""

from __future__ import annotations

from privlearn.fl.aggregate import Transform
from privlearn.fl.algorithms.base import (
    Algorithm,
    LocalSGD,
    client_update,
    local_sgd_step,
    local_start,
    server_or_default,
    server_step,
)
from privlearn.fl.models import Model


def fedbn(
    model: Model, local: LocalSGD, server: Transform | None = None, server_lr: float = 1.0
) -> Algorithm:
    if not model.local_keys:
        raise ValueError(
            f"FedBN needs a model with batch norm (cnn-bn or mlp-bn); {model.name!r} has none"
        )
    server = server_or_default(server, server_lr)
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
        # the BN statistics stay with the client: none are uploaded
        update = client_update(lo, delta, buffers={})
        return update, {"params": own(lo["params"]), "buffers": own(lo["buffers"])}

    return Algorithm(
        name="fedbn",
        server_init=server_init,
        client_state_init=lambda s: {"params": own(s["params"]), "buffers": own(s["buffers"])},
        client_init=client_init,
        client_step=lambda lo, b: local_sgd_step(model, local, lo, b),
        client_final=client_final,
        server_update=lambda s, u, rng: server_step(s, u, server),
        global_model=lambda s: None,
        personal_model=lambda s, cs, info, b: (
            {**s["params"], **cs["params"]},
            {**s["buffers"], **cs["buffers"]},
        ),
    )
