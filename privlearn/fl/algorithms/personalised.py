"""Personalised FL: each client ends up with a model of its own.

- Per-FedAvg (Fallah et al., NeurIPS 2020): MAML-style local steps; a client personalises the
  global model with one gradient step on its data. First-order (FO) or Hessian-free (HF).
- pFedMe (Dinh et al., NeurIPS 2020): Moreau-envelope personal models theta_i, bi-level.
- IFCA (Ghosh et al., NeurIPS 2020): M cluster models; a client trains the one with the
  lowest loss on its data.
- FedFomo (Zhang et al., ICLR 2021): clients mix other clients' models weighted by how much
  they lower the loss on their own data.
- Ditto (Li et al., ICML 2021): FedAvg for the global model plus a personal model pulled
  towards it by lambda/2 ||v - w||^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import grad

from privlearn.fl import tree as T
from privlearn.fl.aggregate import Transform
from privlearn.fl.algorithms.base import (
    Algorithm,
    LocalSGD,
    client_update,
    default_server,
    is_real,
    local_sgd_step,
    local_start,
    loss_grad,
    masked_loss,
    model_update,
    server_or_default,
    server_start,
    server_step,
    sgd_apply,
)
from privlearn.fl.models import Model


def _split(batch: dict, size: int, parts: int) -> list[dict]:
    """Cut a step's batch into `parts` consecutive batches of `size` (the last may be short)."""
    return [{k: v[i * size : (i + 1) * size] for k, v in batch.items()} for i in range(parts)]


# --- Per-FedAvg ------------------------------------------------------------------------------


def perfedavg(
    model: Model,
    local: LocalSGD,
    batch_size: int,
    alpha: float = 0.01,
    variant: str = "fo",
    server: Transform | None = None,
) -> Algorithm:
    """Per-FedAvg. A local step takes batches D, D' (and D'' for HF):
    w' = w - alpha grad f(w; D);  g = grad f(w'; D')  [HF: g -= alpha H(w; D'') g];
    w <- w - lr g (the client optimiser, lr = beta in the paper). `server` reduces and
    applies the stacked deltas (default: FedAvg's weighted mean, step 1)."""
    if variant not in ("fo", "hf"):
        raise ValueError(f"Per-FedAvg variant must be 'fo' or 'hf', got {variant!r}")
    parts = 2 if variant == "fo" else 3
    server = server or default_server()

    def client_init(s, cs, info):
        return {**local_start(s["params"], s["buffers"], local), "n": info["n"]}

    def client_step(lo, b):
        d = _split(b, batch_size, parts)
        w = lo["params"]
        g1, _, _ = loss_grad(model, w, lo["buffers"], d[0])
        w_tmp = {k: w[k] - alpha * g1[k] for k in w}
        g2, loss, new_buffers = loss_grad(model, w_tmp, lo["buffers"], d[1])
        if variant == "hf":
            f = lambda p: masked_loss(model, p, lo["buffers"], d[2])[0]  # noqa: E731
            # Hessian-vector product by reverse-over-reverse: grad of <grad f(w), g2>
            hvp = grad(lambda p: sum((gp * g2[k]).sum() for k, gp in grad(f)(p).items()))(w)
            g2 = {k: g2[k] - alpha * hvp[k] for k in g2}
        params, mom = sgd_apply(w, g2, lo.get("mom"), local)
        real = is_real(b)
        out = {
            **lo,
            "params": params,
            "buffers": new_buffers,
            "steps": lo["steps"] + real,
            "loss": lo["loss"] + loss * real,
        }
        if mom is not None:
            out["mom"] = mom
        return out

    def personal_model(s, cs, info, b):
        g, _, _ = loss_grad(model, s["params"], s["buffers"], _split(b, batch_size, 1)[0])
        return {k: s["params"][k] - alpha * g[k] for k in g}, s["buffers"]

    return Algorithm(
        name="perfedavg",
        server_init=lambda params, buffers, rng: server_start(params, buffers, server),
        client_state_init=lambda s: {},
        client_init=client_init,
        client_step=client_step,
        client_final=lambda s, lo: (model_update(s["params"], lo), {}),
        server_update=lambda s, u, rng: server_step(s, u, server),
        global_model=lambda s: (s["params"], s["buffers"]),
        personal_model=personal_model,
        batches_per_step=parts,
    )


# --- pFedMe ----------------------------------------------------------------------------------


def pfedme(
    model: Model,
    local: LocalSGD,
    lam: float = 15.0,
    inner_steps: int = 5,
    personal_lr: float = 0.01,
    beta: float = 1.0,
    server: Transform | None = None,
) -> Algorithm:
    """pFedMe. Per local step on batch D: theta <- theta - personal_lr (grad f(theta; D) +
    lam (theta - w)), `inner_steps` times; then w <- w - lr lam (w - theta).
    Server: w <- w + beta * weighted_mean(w_i - w), or `server` on the stacked w_i - w.
    theta_i is client i's personal model."""
    if lam <= 0 or inner_steps < 1:
        raise ValueError(f"pFedMe needs lam > 0 and inner_steps >= 1 (got {lam}, {inner_steps})")
    server = server_or_default(server, beta, "beta")

    def client_init(s, cs, info):
        return {
            **local_start(s["params"], s["buffers"], local),
            "theta": dict(s["params"]),
            "n": info["n"],
        }

    def client_step(lo, b):
        w, theta, buffers = lo["params"], lo["theta"], lo["buffers"]
        losses = []
        for _ in range(inner_steps):
            g, loss_i, buffers = loss_grad(model, theta, buffers, b)
            losses.append(loss_i)
            theta = {k: theta[k] - personal_lr * (g[k] + lam * (theta[k] - w[k])) for k in w}
        loss = losses[0]  # the loss at the step's starting point, as for the other algorithms
        w = {k: w[k] - local.lr * lam * (w[k] - theta[k]) for k in w}
        real = is_real(b)
        return {
            **lo,
            "params": w,
            "theta": theta,
            "buffers": buffers,
            "steps": lo["steps"] + real,
            "loss": lo["loss"] + loss * real,
        }

    def client_final(s, lo):
        return model_update(s["params"], lo), {"theta": lo["theta"], "buffers": lo["buffers"]}

    return Algorithm(
        name="pfedme",
        server_init=lambda params, buffers, rng: server_start(params, buffers, server),
        client_state_init=lambda s: {"theta": dict(s["params"]), "buffers": dict(s["buffers"])},
        client_init=client_init,
        client_step=client_step,
        client_final=client_final,
        server_update=lambda s, u, rng: server_step(s, u, server),
        global_model=lambda s: (s["params"], s["buffers"]),
        personal_model=lambda s, cs, info, b: (cs["theta"], cs["buffers"]),
    )


# --- Ditto -----------------------------------------------------------------------------------


def ditto(
    model: Model,
    local: LocalSGD,
    lam: float = 0.1,
    personal_lr: float | None = None,
    server: Transform | None = None,
) -> Algorithm:
    """Ditto. Each local step updates the global copy w by the client optimiser and the
    personal model v <- v - personal_lr (grad f(v; D) + lam (v - w_global)) on the same batch.
    `server` reduces and applies the global copies' deltas (default: FedAvg's)."""
    if lam < 0:
        raise ValueError(f"Ditto lambda must be >= 0, got {lam}")
    plr = local.lr if personal_lr is None else personal_lr
    server = server or default_server()

    def client_init(s, cs, info):
        return {
            **local_start(s["params"], s["buffers"], local),
            "anchor": dict(s["params"]),
            "v": dict(cs["v"]),
            "v_buffers": dict(cs["v_buffers"]),
            "n": info["n"],
        }

    def client_step(lo, b):
        out = local_sgd_step(model, local, lo, b)
        g, _, vb = loss_grad(model, lo["v"], lo["v_buffers"], b)
        out["v"] = {k: lo["v"][k] - plr * (g[k] + lam * (lo["v"][k] - lo["anchor"][k])) for k in g}
        out["v_buffers"] = vb
        return out

    def client_final(s, lo):
        return model_update(s["params"], lo), {"v": lo["v"], "v_buffers": lo["v_buffers"]}

    return Algorithm(
        name="ditto",
        server_init=lambda params, buffers, rng: server_start(params, buffers, server),
        client_state_init=lambda s: {"v": dict(s["params"]), "v_buffers": dict(s["buffers"])},
        client_init=client_init,
        client_step=client_step,
        client_final=client_final,
        server_update=lambda s, u, rng: server_step(s, u, server),
        global_model=lambda s: (s["params"], s["buffers"]),
        personal_model=lambda s, cs, info, b: (cs["v"], cs["v_buffers"]),
    )


# --- IFCA ------------------------------------------------------------------------------------


def _loss_sum(model: Model, params, buffers, batch) -> torch.Tensor:
    logits, _ = model.apply(params, buffers, batch["x"], batch["mask"], train=False)
    return (F.cross_entropy(logits, batch["y"], reduction="none") * batch["mask"]).sum()


def ifca(
    model: Model, local: LocalSGD, n_clusters: int = 2, server: Transform | None = None
) -> Algorithm:
    """IFCA (model-averaging variant). Each client scores all cluster models on its data,
    trains the best one, and the server averages each cluster over the clients that chose it
    (`server`, default FedAvg's chain, runs once per cluster, with a state per cluster).
    Cluster models start from independent initialisations."""
    if n_clusters < 1:
        raise ValueError(f"IFCA needs n_clusters >= 1, got {n_clusters}")
    server = server or default_server()

    def server_init(params, buffers, rng):
        inits = [(params, buffers)] + [model.init(rng) for _ in range(n_clusters - 1)]
        return {
            "params": T.stack([p for p, _ in inits]),
            "buffers": T.stack([b for _, b in inits]),
            "opt": tuple(server.init(p) for p, _ in inits),
        }

    def pick(s, onehot):
        return T.weighted_sum(s["params"], onehot), T.weighted_sum(s["buffers"], onehot)

    def score(s, cs, info, b):
        return torch.stack(
            [
                _loss_sum(model, T.rows(s["params"], m), T.rows(s["buffers"], m), b)
                for m in range(n_clusters)
            ]
        )

    def client_init(s, cs, info):
        onehot = F.one_hot(torch.argmin(info["score"]), n_clusters).to(info["n"].dtype)
        params, buffers = pick(s, onehot)
        return {**local_start(params, buffers, local), "onehot": onehot, "n": info["n"]}

    def client_final(s, lo):
        params, _ = pick(s, lo["onehot"])
        return model_update(params, lo, onehot=lo["onehot"]), {}

    def server_update(s, u, rng):
        chose = u.extras["onehot"].argmax(1)
        clusters = []
        for m in range(n_clusters):  # FedAvg's server step over the clients that chose m
            mine = torch.nonzero(chose == m).flatten()
            c = {"params": T.rows(s["params"], m), "buffers": T.rows(s["buffers"], m)}
            c["opt"] = s["opt"][m]
            clusters.append(server_step(c, T.rows(u, mine), server) if len(mine) else c)
        return {
            "params": T.stack([c["params"] for c in clusters]),
            "buffers": T.stack([c["buffers"] for c in clusters]),
            "opt": tuple(c["opt"] for c in clusters),
        }

    def personal_model(s, cs, info, b):
        return pick(s, F.one_hot(torch.argmin(score(s, cs, info, b)), n_clusters).float())

    return Algorithm(
        name="ifca",
        server_init=server_init,
        client_state_init=lambda s: {},
        client_init=client_init,
        client_step=lambda lo, b: local_sgd_step(model, local, lo, b),
        client_final=client_final,
        server_update=server_update,
        global_model=lambda s: None,
        personal_model=personal_model,
        client_score=score,
    )


# --- FedFomo ---------------------------------------------------------------------------------


def fedfomo(
    model: Model, local: LocalSGD, n_clients: int, n_candidates: int = 5, epsilon: float = 0.3
) -> Algorithm:
    """FedFomo. The server keeps every client's latest model and an affinity matrix. A client
    downloads `n_candidates` models (epsilon-greedy on its affinity row), weighs each by
    w_n = (L(own) - L(theta_n)) / ||theta_n - own|| on its training data, moves its own
    model to own + sum_n [w_n]_+ / sum [w]_+ (theta_n - own), trains it, and uploads it;
    the server adds w_n to the affinities. (The paper scores on a held-out validation split;
    here the client's training data stands in for it.)"""
    m = min(n_candidates, n_clients - 1)
    if m < 1:
        raise ValueError(
            f"FedFomo needs >= 2 clients and n_candidates >= 1 (got {n_clients}, {n_candidates})"
        )
    if not 0 <= epsilon <= 1:
        raise ValueError(f"FedFomo epsilon must be in [0, 1], got {epsilon}")

    def choose(affinity: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        n = affinity.shape[0]
        noise = torch.rand(n, n, generator=rng).to(affinity.device)
        explore = (torch.rand(n, generator=rng) < epsilon).to(affinity.device)
        scores = torch.where(explore[:, None], noise, affinity + 1e-9 * noise)
        scores = scores.masked_fill(
            torch.eye(n, dtype=torch.bool, device=affinity.device), float("-inf")
        )
        return scores.topk(m, dim=1).indices

    def server_init(params, buffers, rng):
        affinity = torch.zeros(n_clients, n_clients)
        return {
            "bank": {
                "params": T.repeat(params, n_clients),
                "buffers": T.repeat(buffers, n_clients),
            },
            "affinity": affinity,
            "candidates": choose(affinity, rng),
        }

    def models_of(s, ids):
        return T.rows(s["bank"]["params"], ids), T.rows(s["bank"]["buffers"], ids)

    def score(s, cs, info, b):
        ids = torch.cat([info["id"].reshape(1), s["candidates"][info["id"]]])
        params, buffers = models_of(s, ids)
        return torch.stack(
            [_loss_sum(model, T.rows(params, j), T.rows(buffers, j), b) for j in range(m + 1)]
        )

    def client_init(s, cs, info):
        own_p, own_b = models_of(s, info["id"])
        cand_p, _ = models_of(s, s["candidates"][info["id"]])
        mean_loss = info["score"] / info["n"].clamp_min(1)
        diff = T.tree_map(lambda c, o: c - o, cand_p, own_p)  # [m, ...]
        dist = torch.sqrt(T.flat_rows(diff).pow(2).sum(1)).clamp_min(1e-12)
        w = (mean_loss[0] - mean_loss[1:]) / dist
        pos = w.clamp_min(0)
        share = pos / pos.sum().clamp_min(1e-12)
        mixed = {k: own_p[k] + torch.tensordot(share, diff[k], dims=1) for k in own_p}
        return {**local_start(mixed, own_b, local), "w": w, "id": info["id"], "n": info["n"]}

    def client_final(s, lo):
        # the server keeps models, not deltas: the trained model travels in extras
        update = client_update(lo, {}, lo["buffers"], params=lo["params"], w=lo["w"], id=lo["id"])
        return update, {}

    def server_update(s, u, rng):
        ids = u.extras["id"]
        bank = {"params": dict(s["bank"]["params"]), "buffers": dict(s["bank"]["buffers"])}
        bank = T.tree_map(torch.clone, bank)
        T.put_rows_(bank["params"], ids, u.extras["params"])
        T.put_rows_(bank["buffers"], ids, u.buffers)
        affinity = s["affinity"].clone()
        affinity[ids[:, None], s["candidates"][ids]] += u.extras["w"]
        return {"bank": bank, "affinity": affinity, "candidates": choose(affinity, rng)}

    return Algorithm(
        name="fedfomo",
        server_init=server_init,
        client_state_init=lambda s: {},
        client_init=client_init,
        client_step=lambda lo, b: local_sgd_step(model, local, lo, b),
        client_final=client_final,
        server_update=server_update,
        global_model=lambda s: None,
        personal_model=lambda s, cs, info, b: models_of(s, info["id"]),
        client_score=score,
    )
