"""Server optimisers on FedAvg's averaged delta: FedAvgM (Hsu et al. 2019) and FedAdam,
FedYogi, FedAdagrad (Reddi et al., ICLR 2021). Clients run plain local SGD.

`reducer` is the stage that collapses the client rows before the optimiser (default the
sample-weighted mean; privlearn.fl.privacy.central.dp_mean for central DP)."""

from __future__ import annotations

from privlearn.fl import aggregate as A
from privlearn.fl.aggregate import Transform
from privlearn.fl.algorithms.base import Algorithm, LocalSGD
from privlearn.fl.algorithms.fedavg import fedavg
from privlearn.fl.models import Model


def fedavgm(
    model: Model,
    local: LocalSGD,
    server_lr: float = 1.0,
    server_momentum: float = 0.9,
    reducer: Transform | None = None,
) -> Algorithm:
    """v <- beta v + delta; w <- w + server_lr v."""
    return fedavg(
        model,
        local,
        A.chain(reducer or A.weighted_mean(), A.momentum(server_lr, server_momentum)),
        name="fedavgm",
    )


def fedadam(
    model: Model,
    local: LocalSGD,
    server_lr: float = 0.01,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
    reducer: Transform | None = None,
) -> Algorithm:
    return fedavg(
        model,
        local,
        A.chain(reducer or A.weighted_mean(), A.adam(server_lr, beta1, beta2, tau)),
        name="fedadam",
    )


def fedyogi(
    model: Model,
    local: LocalSGD,
    server_lr: float = 0.01,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
    reducer: Transform | None = None,
) -> Algorithm:
    return fedavg(
        model,
        local,
        A.chain(reducer or A.weighted_mean(), A.yogi(server_lr, beta1, beta2, tau)),
        name="fedyogi",
    )


def fedadagrad(
    model: Model,
    local: LocalSGD,
    server_lr: float = 0.1,
    beta1: float = 0.0,
    tau: float = 1e-3,
    reducer: Transform | None = None,
) -> Algorithm:
    return fedavg(
        model,
        local,
        A.chain(reducer or A.weighted_mean(), A.adagrad(server_lr, beta1, tau)),
        name="fedadagrad",
    )
