"""The algorithm suite, built by name with checked hyper-parameters."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from privlearn.fl.aggregate import Transform, chain, sgd
from privlearn.fl.algorithms.base import Algorithm, ClientUpdate, LocalSGD
from privlearn.fl.algorithms.fedavg import fedavg
from privlearn.fl.algorithms.fedbn import fedbn
from privlearn.fl.algorithms.feddyn import feddyn
from privlearn.fl.algorithms.fednova import fednova
from privlearn.fl.algorithms.fedopt import fedadagrad, fedadam, fedavgm, fedyogi
from privlearn.fl.algorithms.fedprox import fedprox
from privlearn.fl.algorithms.personalised import ditto, fedfomo, ifca, perfedavg, pfedme
from privlearn.fl.algorithms.scaffold import scaffold
from privlearn.fl.models import Model

BUILDERS: dict[str, Callable[..., Algorithm]] = {
    "fedavg": fedavg,
    "fedavgm": fedavgm,
    "fedprox": fedprox,
    "scaffold": scaffold,
    "fednova": fednova,
    "feddyn": feddyn,
    "fedadam": fedadam,
    "fedyogi": fedyogi,
    "fedadagrad": fedadagrad,
    "fedbn": fedbn,
    "perfedavg": perfedavg,
    "pfedme": pfedme,
    "ifca": ifca,
    "fedfomo": fedfomo,
    "ditto": ditto,
}
ALGORITHMS = tuple(BUILDERS)
PERSONALISED = ("fedbn", "perfedavg", "pfedme", "ifca", "fedfomo", "ditto")
# supplied by the run, not by the user's hyper-parameters
_CONTEXT = ("model", "local", "n_clients", "batch_size", "server", "reducer", "name")
# the hyper-parameter that is an algorithm's server step size, where it is not server_lr
_SERVER_STEP = {"pfedme": "beta"}


def hyper_parameters(name: str) -> dict[str, object]:
    """The user-settable hyper-parameters of an algorithm and their defaults."""
    sig = inspect.signature(BUILDERS[name])
    return {k: p.default for k, p in sig.parameters.items() if k not in _CONTEXT}


def takes_server(name: str) -> bool:
    """Whether algorithm `name` reduces client deltas through a `server=` chain of Transforms."""
    return "server" in inspect.signature(BUILDERS[name]).parameters


def takes_reducer(name: str) -> bool:
    """Whether the stage that collapses client rows of algorithm `name` can be replaced (by
    a robust or DP reducer): through `reducer=` (the FedOpt family) or its `server=` chain."""
    return takes_server(name) or "reducer" in inspect.signature(BUILDERS[name]).parameters


def build_algorithm(
    name: str,
    model: Model,
    local: LocalSGD,
    *,
    n_clients: int,
    batch_size: int,
    server: Transform | None = None,
    reducer: Transform | None = None,
    **hp: object,
) -> Algorithm:
    """Build algorithm `name`; unknown hyper-parameters are an error that lists the known ones.
    `server` replaces the algorithm's server chain (e.g. chain(clip_by_norm(1.0),
    weighted_mean(), sgd(1.0))) where it has one; `reducer` replaces only the stage that
    collapses the client rows (the weighted mean), keeping the algorithm's server step."""
    if name not in BUILDERS:
        raise ValueError(f"unknown algorithm {name!r}; expected one of {', '.join(ALGORITHMS)}")
    known = hyper_parameters(name)
    unknown = sorted(set(hp) - set(known))
    if unknown:
        listed = ", ".join(f"{k}={v}" for k, v in known.items()) or "none"
        raise ValueError(f"{name} has no hyper-parameter {', '.join(unknown)}; it takes: {listed}")
    if server is not None:
        if not takes_server(name):
            chains = ", ".join(n for n in ALGORITHMS if takes_server(n))
            raise ValueError(f"{name} takes no server= chain; these do: {chains}")
        hp = {**hp, "server": server}
    params = inspect.signature(BUILDERS[name]).parameters
    if reducer is not None:
        if server is not None:
            raise ValueError("give either a server chain or a reducer, not both")
        if "reducer" in params:
            hp = {**hp, "reducer": reducer}
        elif takes_server(name):
            step = _SERVER_STEP.get(name, "server_lr")
            lr = hp.pop(step, params[step].default) if step in params else 1.0
            hp = {**hp, "server": chain(reducer, sgd(lr))}
        else:
            raise ValueError(f"{name} takes no reducer")
    ctx = {"n_clients": n_clients, "batch_size": batch_size}
    kwargs = {k: v for k, v in ctx.items() if k in params}
    return BUILDERS[name](model, local, **kwargs, **hp)


__all__ = [
    "ALGORITHMS",
    "BUILDERS",
    "PERSONALISED",
    "Algorithm",
    "ClientUpdate",
    "LocalSGD",
    "build_algorithm",
    "hyper_parameters",
    "takes_reducer",
    "takes_server",
]
