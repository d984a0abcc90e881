"""Trust-weighted aggregation: each row is weighted by how far the server trusts it, from a
clean reference (FLTrust's root set) or from its history (RFFL's reputation)."""

from __future__ import annotations

import torch

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import ClientUpdate, loss_grad, sgd_apply
from privlearn.fl.robust.registry import defence
from privlearn.fl.robust.threat import (
    Defence,
    DefenceContext,
    clip_rows,
    delta_rows,
    keep_global,
    mix_rows,
)


def cosine_to(m: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """[K] cosine similarity of each row of `m` [K, P] with `ref` [P] (0 for a zero row)."""
    dots = m @ ref
    norms = m.norm(dim=1) * ref.norm()
    return torch.where(norms > 0, dots / norms.clamp_min(1e-300), torch.zeros_like(dots))


def trust_scores(m: torch.Tensor, g0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FLTrust's rule on rows `m` [K, P] and the server's update `g0` [P]: the trust scores
    ReLU(cos(m_k, g0)) and the rows rescaled to ||g0|| (Cao et al. 2021)."""
    scores = cosine_to(m, g0).clamp_min(0.0)
    norms = m.norm(dim=1, keepdim=True)
    return scores, m * (g0.norm() / norms.clamp_min(1e-300))


def server_update(ctx: DefenceContext, steps: int, batch_size: int) -> dict[str, torch.Tensor]:
    """FLTrust's server model update: `steps` local SGD steps (the clients' optimiser,
    ctx.local) from the global model on minibatches of the root set, in passes over it
    reshuffled by ctx.rng (a pass's last batch may be short, as a client's epoch's is);
    returns the change of every parameter."""
    x, y = ctx.root
    params, buffers = dict(ctx.params), dict(ctx.buffers)
    dtype = next(iter(params.values())).dtype
    mom = T.zeros_like(params) if ctx.local.momentum else None
    n, b = len(y), max(1, min(batch_size, len(y)))
    per_pass = -(-n // b)
    order = torch.arange(n)
    for i in range(steps):
        if i % per_pass == 0:
            order = torch.randperm(n, generator=ctx.rng)
        j = i % per_pass
        idx = order[j * b : (j + 1) * b].to(y.device)
        batch = {
            "x": x[idx],
            "y": y[idx],
            "mask": torch.ones(len(idx), dtype=dtype, device=y.device),
        }
        grads, _, buffers = loss_grad(ctx.model, params, buffers, batch)
        params, mom = sgd_apply(params, grads, mom, ctx.local)
    return {k: params[k] - ctx.params[k] for k in params}


@defence("fltrust")
def fltrust(steps: int = 0, batch_size: int = 32) -> Defence:
    """FLTrust (Cao et al., NDSS 2021): the server trains on its own small clean root set
    (`steps` local SGD steps of `batch_size`, the clients' optimiser; steps = 0: the clients'
    median step count this round, as the paper runs the clients' local iterations) to get a
    reference update g0. Each client's trust score is ReLU(cos(g_i, g0)); its delta is
    rescaled to ||g0||, and every row becomes the trust-weighted mean of the rescaled deltas
    (the other floating fields: the trust-weighted mean of theirs). When every score is 0 the
    round keeps the global model.

    Threat: Byzantine and backdoor clients, any fraction, as long as the root set is clean
    and like the task's data (the paper's assumption; it needs no bound on f). Differs
    from the paper: the server's update uses the run's client optimiser rather than the
    paper's separate server learning rate (the algorithm's server step is applied after),
    and batch-norm statistics and extras are weighted by the same trust scores."""
    if steps < 0 or batch_size < 1:
        raise ValueError(f"fltrust needs steps >= 0 and batch_size >= 1, got {steps}, {batch_size}")

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        if ctx.root is None or ctx.model is None or ctx.local is None:
            raise ValueError("fltrust needs the server's root set, model and local optimiser")
        m = delta_rows(u)
        n_steps = int(steps) or max(1, int(u.steps.to(torch.float64).median().round()))
        g0_tree = server_update(ctx, n_steps, batch_size)
        g0 = T.flat_rows({k: g0_tree[k].unsqueeze(0) for k in u.delta})[0].to(m)
        scores, rescaled = trust_scores(m, g0)
        if not bool((scores > 0).any()):
            return keep_global(u, ctx), state, torch.zeros_like(scores)
        out = mix_rows(u, scores, delta=rescaled.to(T.leaves(u.delta)[0].dtype))
        return out, state, scores / scores.max()

    return Defence(
        "fltrust",
        "Byzantine and backdoor rows, any fraction; needs a clean root set like the task's",
        apply,
        needs_root=True,
        selects=True,
    )


@defence("rffl")
def rffl(alpha: float = 0.95, threshold: float = 1.0 / 3.0, clip: bool = True) -> Defence:
    """RFFL's reputation mechanism (Xu & Lyu, FL-ICML 2021, "A Reputation Mechanism Is All
    You Need"): the round's aggregate is the reputation-weighted mean of the deltas; each
    client's cosine with it, phi_i, enters its reputation r_i = alpha r_i + (1 - alpha) phi_i
    (the paper's first round: r_i = (1 - alpha) phi_i), reputations are normalised to sum to
    1 over the clients still in, and a client whose reputation falls below threshold / |R|
    (|R|: clients still in) is excluded for the rest of the run. Every row becomes the mean
    of the deltas weighted by the updated reputations (0 for the excluded), in every floating
    field.

    Threat: Byzantine and free-riding clients that stay a minority whose updates point away
    from the honest majority's. Differs from the paper: the aggregate of a round uses the
    reputations after that round's update and exclusions (the paper's uses the previous
    round's, so an attacker's upload enters once before it is cut); the first aggregation
    weighs the cohort equally (the paper: by shard size); the fairness half (sparsified
    downloads in proportion to reputation) is not done: every client gets the global model.
    Under partial participation a client's reputation is updated when it is sampled, a
    newcomer starts from the mean share 1 / |R|, and normalisation and the threshold run
    over the clients seen so far and still in. The paper's participants clip every update
    to a norm Gamma before upload (its code does it for adversaries too); here, with
    `clip`, the server clips each delta to the median norm of the cohort's rows still in
    (a scale-free Gamma), so one huge row cannot make the aggregate its own."""
    if not 0 <= alpha < 1 or not 0 <= threshold < 1:
        raise ValueError(f"rffl needs alpha and threshold in [0, 1), got {alpha}, {threshold}")

    def init(n_clients: int) -> dict:
        return {
            "reputation": torch.zeros(n_clients, dtype=torch.float64),
            "seen": torch.zeros(n_clients, dtype=torch.bool),
            "active": torch.ones(n_clients, dtype=torch.bool),
        }

    def apply(u: ClientUpdate, state: dict, ctx: DefenceContext):
        m = delta_rows(u)
        dev = m.device
        rep = state["reputation"].to(dev).clone()
        seen, active = state["seen"].to(dev).clone(), state["active"].to(dev).clone()
        ids = ctx.clients.to(dev)
        inn = active[ids]
        if not bool(inn.any()):
            return keep_global(u, ctx), state, torch.zeros(len(ids), dtype=torch.float64)
        if clip:  # to the median norm of the rows still in
            m, _ = clip_rows(m, m.norm(dim=1)[inn].median())
        first = not bool(seen.any())
        share = 1.0 / max(int((seen & active).sum()), 1)
        prior = torch.where(seen[ids], rep[ids], torch.full_like(rep[ids], share))
        weight = torch.where(inn, prior.clamp_min(0.0), torch.zeros_like(prior))
        if not bool((weight > 0).any()):
            weight = inn.to(torch.float64)
        agg = (weight / weight.sum()) @ m
        phi = cosine_to(m, agg)
        history = torch.zeros_like(prior) if first else prior
        new = alpha * history + (1 - alpha) * phi
        rep[ids] = torch.where(inn, new, rep[ids])
        seen[ids] = True
        pool = seen & active
        rep = torch.where(pool, rep / rep[pool].sum().clamp_min(1e-12), rep)
        cut = torch.zeros_like(active)
        cut[ids] = inn & (rep[ids] < threshold / int(pool.sum()))
        active &= ~cut
        rep = torch.where(active, rep, torch.zeros_like(rep))
        pool = seen & active
        if bool(pool.any()):
            rep = torch.where(pool, rep / rep[pool].sum().clamp_min(1e-12), rep)
        new_state = {"reputation": rep.cpu(), "seen": seen.cpu(), "active": active.cpu()}
        a = torch.where(active[ids], rep[ids].clamp_min(0.0), torch.zeros_like(prior))
        if not bool((a > 0).any()):
            return keep_global(u, ctx), new_state, torch.zeros_like(a)
        delta = m.to(T.leaves(u.delta)[0].dtype) if clip else None
        return mix_rows(u, a, delta=delta), new_state, a / a.max()

    return Defence(
        "rffl",
        "Byzantine and free-riding rows, a minority pointing away from the honest majority",
        apply,
        init=init,
        selects=True,
    )
