"""Hand-written FedAvg rounds that the engines are measured against (`privlearn bench fl-speed`).

Two short loops over the same plan (cohort, batches) as the engines, with no framework:
- `vmap`: eager `torch.func.vmap` of `torch.func.grad` over the cohort, clients sorted by
  step count so that finished clients simply leave the stacked prefix;
- `closed`: for logistic regression, the gradient in closed form with batched matrix
  products (`baddbmm`), no autograd, updated in place.
They show what the arithmetic costs; an engine's time above them is its own overhead. Only
plain FedAvg (local SGD without momentum or weight decay, sample-weighted mean, server step
1) is written out: anything else is refused.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.func import grad, vmap

from privlearn.fl.plan import RoundPlan, plan_round
from privlearn.fl.run import Experiment, RunConfig

KINDS = ("vmap", "closed")


def stack_widths(steps: torch.Tensor) -> list[int]:
    """Clients still training at each step, for step counts sorted in descending order."""
    s = steps.cpu().numpy()
    if len(s) == 0 or s[0] == 0:
        return []
    done = np.cumsum(np.bincount(s, minlength=int(s[0]) + 1))[: int(s[0])]
    return (len(s) - done).tolist()


def _masked_ce(model, params, x, y, m):
    logits, _ = model.apply(params, {}, x, m, train=True)
    ce = -logits.log_softmax(-1).gather(1, y[:, None]).squeeze(1)
    return (ce * m).sum() / m.sum().clamp_min(1.0)


def vmap_round(exp: Experiment, params: dict, plan: RoundPlan, x: torch.Tensor) -> dict:
    """One FedAvg round, the cohort's local SGD as one eager vmap of grad per step."""
    order = torch.argsort(-plan.steps, stable=True)
    widths = stack_widths(plan.steps[order])
    idx, mask, at = plan.step_batches(order, widths)
    mask = mask.to(x.dtype)
    y, lr, model = exp.data.y_train, exp.cfg.lr, exp.model
    p = {k: v.expand(len(order), *v.shape).clone() for k, v in params.items()}
    g = vmap(grad(lambda q, xb, yb, mb: _masked_ce(model, q, xb, yb, mb)))
    for t, w in enumerate(widths):
        rows = idx[at[t] : at[t + 1]]
        gr = g({k: v[:w] for k, v in p.items()}, x[rows], y[rows], mask[at[t] : at[t + 1]])
        for k in p:
            p[k][:w] -= lr * gr[k]
    return _mean(p, plan.n[order])


def closed_round(exp: Experiment, params: dict, plan: RoundPlan, x: torch.Tensor) -> dict:
    """One FedAvg round of logistic regression: dz = m (softmax(z) - onehot(y)) / sum(m),
    W -= lr dz^T x, b -= lr sum(dz), all clients of a step in one baddbmm each."""
    order = torch.argsort(-plan.steps, stable=True)
    widths = stack_widths(plan.steps[order])
    idx, mask, at = plan.step_batches(order, widths)
    name = exp.model.linear_layer
    y, lr, k = exp.data.y_train, exp.cfg.lr, len(order)
    w_all = params[f"{name}.weight"].expand(k, -1, -1).clone()  # [K, C, d]
    b_all = params[f"{name}.bias"].expand(k, -1).clone()  # [K, C]
    scale = mask.to(x.dtype) / mask.sum(1, keepdim=True).clamp_min(1)
    for t, w in enumerate(widths):
        rows = idx[at[t] : at[t + 1]]
        xb = x[rows].flatten(2)  # [w, B, d]
        wt, bt = w_all[:w], b_all[:w]
        dz = torch.baddbmm(bt[:, None, :], xb, wt.transpose(1, 2)).softmax(-1)
        dz.scatter_add_(2, y[rows][:, :, None], torch.full(rows.shape + (1,), -1.0))
        dz *= scale[at[t] : at[t + 1], :, None]
        wt.baddbmm_(dz.transpose(1, 2), xb, alpha=-lr)
        bt -= lr * dz.sum(1)
    return _mean({f"{name}.weight": w_all, f"{name}.bias": b_all}, plan.n[order])


def _mean(stacked: dict, n: torch.Tensor) -> dict:
    """FedAvg's server: the sample-weighted mean of the clients' models (server step 1)."""
    w = n.to(next(iter(stacked.values())).dtype)
    w = w / w.sum()
    return {k: torch.tensordot(w, v, dims=1) for k, v in stacked.items()}


def refuse(cfg: RunConfig, kind: str) -> None:
    """What the baselines do not write out, as an error."""
    if kind not in KINDS:
        raise ValueError(f"unknown baseline {kind!r}; expected one of {', '.join(KINDS)}")
    if cfg.algorithm != "fedavg" or cfg.momentum or cfg.weight_decay or cfg.dp:
        raise ValueError(
            "the baselines write out plain FedAvg only (local SGD without momentum or weight "
            "decay, no DP)"
        )
    if kind == "closed" and cfg.model != "mclr":
        raise ValueError(f"the closed-form baseline is logistic regression (mclr), not {cfg.model}")


def run_baseline(cfg: RunConfig, rounds: int, kind: str) -> dict:
    """`rounds` rounds of the `kind` baseline, each timed from planning to the new model."""
    refuse(cfg, kind)
    exp = Experiment.build(cfg)
    server, _ = exp.init_state()
    params = dict(server["params"])
    step = vmap_round if kind == "vmap" else closed_round
    seconds = []
    with torch.no_grad():
        for r in range(rounds):
            t0 = time.perf_counter()
            plan = plan_round(exp.data.clients, cfg.sampling_spec(), cfg.work(), cfg.seed, r).to(
                cfg.device
            )
            if len(plan):
                params = step(exp, params, plan, exp.data.round_features(r))
            seconds.append(time.perf_counter() - t0)
    server = {**server, "params": params}
    return {"round_seconds": seconds, "params": params, "exp": exp, "server": server}
