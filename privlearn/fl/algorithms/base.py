"""What an FL algorithm is (FedJAX's split), and the local-SGD pieces most algorithms share.

An `Algorithm` is data: pure functions of explicit state. Engines decide how clients run
(vmapped cohort, plain loop, later Ray or Flower) and call only these functions:

    server_init(params, buffers, rng)            -> server state
    client_state_init(server)                    -> one client's persistent state
    client_init(server, client_state, info)      -> local state     (info: id, n, score)
    client_step(local, batch)                    -> local state     (vmappable, no .item())
    client_final(server, local)                  -> (ClientUpdate, new client state)
    server_update(server, stacked ClientUpdate, rng) -> server state

A batch is {"x", "y", "mask"}; mask is 1.0 for real samples and 0.0 for padding, and the
loss averages over real samples only, so a padded step equals the unpadded one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import grad_and_value
from torch.utils import _pytree as pytree

from privlearn.fl import tree as T
from privlearn.fl.aggregate import Transform, Updates, apply_updates, chain, sgd, weighted_mean
from privlearn.fl.models import Model
from privlearn.fl.privacy.local import private_grad

Params = dict[str, torch.Tensor]
State = dict[str, Any]
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LocalSGD:
    """Client optimiser: SGD with momentum and weight decay, as torch.optim.SGD computes it."""

    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"client learning rate must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"client momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class ClientUpdate:
    """What one client uploads. Per client each field is a scalar or a tree of tensors; the
    engines stack clients along a leading axis (weight: [K], delta leaves: [K, ...]), and
    screening drops a client's row from every field at once.

    delta: the model change the server reduces (empty when the algorithm uploads models, as
    FedFomo does in extras); weight: the client's sample count; loss: its mean training loss
    over the steps it took; steps: how many; buffers: its batch-norm running statistics
    (empty when they stay local); extras: what the algorithm needs besides (SCAFFOLD's "dc",
    FedNova's "a", IFCA's "onehot", ...)."""

    delta: Params
    weight: torch.Tensor
    loss: torch.Tensor
    steps: torch.Tensor
    buffers: Params
    extras: dict[str, Any]


# a pytree node, so engines can vmap, stack, slice and screen it like any tree of tensors
pytree.register_dataclass(ClientUpdate)


@dataclass(frozen=True)
class Algorithm:
    name: str
    server_init: Callable[[Params, Params, torch.Generator], State]
    client_state_init: Callable[[State], State]
    client_init: Callable[[State, State, State], State]
    client_step: Callable[[State, Batch], State]
    client_final: Callable[[State, State], tuple[ClientUpdate, State]]
    server_update: Callable[[State, ClientUpdate, torch.Generator], State]
    global_model: Callable[[State], tuple[Params, Params] | None]
    # personalised algorithms: the model client k uses, given one batch of its training data
    personal_model: Callable[[State, State, State, Batch], tuple[Params, Params]] | None = None
    # optional pass over a client's data before client_init (IFCA, FedFomo); its per-batch
    # results are summed and handed to client_init as info["score"]
    client_score: Callable[[State, State, State, Batch], torch.Tensor] | None = None
    batches_per_step: int = 1  # a step sees this many batches (Per-FedAvg: 2 or 3)
    # local DP-SGD (privacy/local.py): step_noise(local, batched) -> (local, noise) gives one
    # step's noise draws, which engines make outside vmap and pass in batch["noise"]
    step_noise: Callable[[State, bool], tuple[State, Params]] | None = None
    # the server step from sums alone, for secure aggregation; None when it needs rows
    sum_split: SumSplit | None = None


@dataclass(frozen=True)
class SumSplit:
    """A server step cut for secure aggregation: `summands(server, stacked ClientUpdate)` is
    what each client sends (row by row, every leaf [K, ...]), `server_update(server, sums, rng)`
    the step from the element-wise sums of those rows."""

    summands: Callable[[State, ClientUpdate], dict]
    server_update: Callable[[State, dict, torch.Generator], State]


# --- shared local training -------------------------------------------------------------------


def masked_loss(
    model: Model, params: Params, buffers: Params, batch: Batch
) -> tuple[torch.Tensor, Params]:
    """Mean cross-entropy over the real samples of a (possibly padded) batch."""
    logits, new_buffers = model.apply(params, buffers, batch["x"], batch["mask"], train=True)
    # log_softmax + gather is F.cross_entropy's arithmetic; under vmap it avoids nll_loss's
    # Python-level decomposition
    ce = -logits.log_softmax(-1).gather(1, batch["y"][:, None]).squeeze(1)
    m = batch["mask"]
    return (ce * m).sum() / m.sum().clamp_min(1.0), new_buffers


def loss_grad(
    model: Model, params: Params, buffers: Params, batch: Batch
) -> tuple[Params, torch.Tensor, Params]:
    """Gradient of the masked loss: (grads, loss, new batch-norm buffers); written out, not
    autograd's, for a model built `with_closed_form`."""
    if model.closed_form:
        grads, loss = linear_loss_grad(model, params, batch)
        return grads, loss, buffers

    def f(p: Params):
        loss, nb = masked_loss(model, p, buffers, batch)
        return loss, (loss.detach(), nb)

    grads, (_, (loss, new_buffers)) = grad_and_value(f, has_aux=True)(params)
    return grads, loss, new_buffers


def linear_loss_grad(model: Model, params: Params, batch: Batch) -> tuple[Params, torch.Tensor]:
    """masked_loss and its gradient for one linear layer z = x W^T + b, without autograd:
    dL/dz = m (softmax(z) - onehot(y)) / sum(m), so dW = dz^T x and db = sum of dz. A dozen
    tensor operations a step instead of autograd's graph (the engines' dominant cost)."""
    name = model.linear_layer
    x = batch["x"].flatten(1)
    z = F.linear(x, params[f"{name}.weight"], params[f"{name}.bias"])
    logp = z.log_softmax(-1)
    y, m = batch["y"], batch["mask"]
    den = m.sum().clamp_min(1.0)
    loss = -(logp.gather(1, y[:, None]).squeeze(1) * m).sum() / den
    onehot = (y[:, None] == torch.arange(z.shape[-1], device=z.device)).to(z.dtype)
    dz = (logp.exp() - onehot) * (m / den)[:, None]
    return {f"{name}.weight": dz.transpose(0, 1) @ x, f"{name}.bias": dz.sum(0)}, loss.detach()


def sgd_apply(
    params: Params, grads: Params, mom: Params | None, opt: LocalSGD
) -> tuple[Params, Params | None]:
    """One torch.optim.SGD step: g += wd * p; buf = m * buf + g; p -= lr * buf."""
    g = {k: grads[k] + opt.weight_decay * params[k] for k in params} if opt.weight_decay else grads
    if opt.momentum:
        mom = {k: opt.momentum * mom[k] + g[k] for k in params}
        g = mom
    return {k: params[k] - opt.lr * g[k] for k in params}, mom


def is_real(batch: Batch) -> torch.Tensor:
    """1.0 when the batch holds at least one real sample, else 0.0 (a scalar, vmappable)."""
    return (batch["mask"].sum() > 0).to(batch["mask"].dtype)


def local_start(params: Params, buffers: Params, opt: LocalSGD) -> State:
    """The local state every SGD-based client starts from."""
    # counters in the model's precision, as what is added to them (a float64 run's update
    # holds float64 steps and loss, and screening checks each field's dtype)
    zero = torch.zeros((), dtype=next(iter(params.values())).dtype, device=_device(params))
    state = {"params": dict(params), "buffers": dict(buffers), "steps": zero, "loss": zero}
    if opt.momentum:
        state["mom"] = T.zeros_like(params)
    return state


def _device(params: Params) -> torch.device:
    return next(iter(params.values())).device


def local_sgd_step(
    model: Model,
    opt: LocalSGD,
    local: State,
    batch: Batch,
    extra_grad: Callable[[Params], Params] | None = None,
) -> State:
    """One client SGD step on the masked loss, plus an algorithm's extra gradient term
    (FedProx's mu (w - w_g), FedDyn's linear and proximal terms, ...). A local state holding
    "dp" (privacy/local.py) takes DP-SGD's noisy clipped gradient instead, and every such
    step counts, an empty Poisson batch included (it still adds noise)."""
    if "dp" in local:
        grads, loss, new_buffers = private_grad(
            model, local["params"], local["buffers"], batch, local["dp"]
        )
        real = torch.ones_like(local["steps"])
    else:
        grads, loss, new_buffers = loss_grad(model, local["params"], local["buffers"], batch)
        real = is_real(batch)
    if extra_grad is not None:
        grads = T.add(grads, extra_grad(local["params"]))
    params, mom = sgd_apply(local["params"], grads, local.get("mom"), opt)
    out = {
        **local,
        "params": params,
        "buffers": new_buffers,
        "steps": local["steps"] + real,
        "loss": local["loss"] + loss * real,
    }
    if mom is not None:
        out["mom"] = mom
    return out


def client_update(local: State, delta: Params, buffers: Params, **extras: Any) -> ClientUpdate:
    """The upload of a client whose local state holds its sample count `n` and the summed
    loss of the `steps` it took."""
    return ClientUpdate(
        delta=delta,
        weight=local["n"],
        loss=local["loss"] / local["steps"].clamp_min(1),
        steps=local["steps"],
        buffers=buffers,
        extras=extras,
    )


def model_update(server_params: Params, local: State, **extras: Any) -> ClientUpdate:
    """FedAvg's upload: the model delta, the sample weight, the new BN statistics, and the
    mean training loss of the steps taken."""
    return client_update(local, T.sub(local["params"], server_params), local["buffers"], **extras)


# --- shared server side ----------------------------------------------------------------------


def server_start(params: Params, buffers: Params, server: Transform) -> State:
    return {"params": dict(params), "buffers": dict(buffers), "opt": server.init(params)}


def server_step(
    state: State, u: ClientUpdate, server: Transform, rows: Params | None = None
) -> State:
    """FedAvg's server side, shared by every algorithm that reduces client deltas: the
    stacked `rows` (default: the deltas) go through `server` (e.g. chain(clip_by_norm(1.0),
    weighted_mean(), sgd(1.0))), the step is applied to the parameters it names, and the
    uploaded BN statistics are averaged by sample weight."""
    rows = u.delta if rows is None else rows
    params = {k: state["params"][k] for k in rows}
    step, opt_state = server.update(Updates(rows, u.weight), state["opt"], params)
    buffers = state["buffers"]
    if u.buffers:
        buffers = {**buffers, **T.weighted_sum(u.buffers, u.weight / u.weight.sum())}
    return {
        **state,
        "params": apply_updates(state["params"], step),
        "opt": opt_state,
        "buffers": buffers,
    }


def summed_server(server: Transform) -> SumSplit | None:
    """server_step from sums, when `server`'s reducer is splittable (weighted_mean, mean,
    dp_mean): clients send the reducer's summands and, with batch norm, w times their running
    statistics and w."""
    split = server.split
    if split is None:
        return None

    def summands(state: State, u: ClientUpdate) -> dict:
        out = {"reducer": split.summands(Updates(u.delta, u.weight), state["opt"])}
        if u.buffers:
            out["buffers"] = T.scale_rows(u.buffers, u.weight)
            out["buffer_weight"] = u.weight
        return out

    def update(state: State, sums: dict, rng: torch.Generator) -> State:
        reducer = sums["reducer"]
        params = {k: state["params"][k] for k in reducer["values"]}
        step, opt_state = split.from_sums(reducer, state["opt"], params)
        buffers = state["buffers"]
        if "buffers" in sums:
            den = sums["buffer_weight"]
            buffers = {**buffers, **T.tree_map(lambda t: t / den.to(t.dtype), sums["buffers"])}
        return {
            **state,
            "params": apply_updates(state["params"], step),
            "opt": opt_state,
            "buffers": buffers,
        }

    return SumSplit(summands, update)


def default_server(lr: float = 1.0) -> Transform:
    """FedAvg's server: the sample-weighted mean of client deltas, applied with step `lr`."""
    return chain(weighted_mean(), sgd(lr))


def server_or_default(server: Transform | None, lr: float, lr_name: str = "server_lr") -> Transform:
    """The server chain an algorithm runs: `server` when given, else FedAvg's with step `lr`.
    Both at once would be two answers to one question, so that is an error."""
    if server is None:
        return default_server(lr)
    if lr != 1.0:
        raise ValueError(
            f"give either {lr_name} or a server chain, not both: put the step size in the "
            f"chain's optimiser, e.g. chain(weighted_mean(), sgd({lr}))"
        )
    return server
