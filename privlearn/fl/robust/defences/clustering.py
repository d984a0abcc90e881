"""Clustering and similarity defences against backdoors: FLAME, FoolsGold, DeepSight.

Each scores the uploads by how they relate to one another (cosine distances, accumulated
update histories, output-layer statistics), keeps or down-weights rows by that, and bounds
the kept rows' norms. Distances are one matrix product in float64 on the inputs' device;
only HDBSCAN (scikit-learn) runs on the CPU, on the [K, K] distance matrix.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import vmap

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.robust.registry import defence
from privlearn.fl.robust.threat import (
    Defence,
    DefenceContext,
    clip_rows,
    delta_rows,
    keep_global,
    mix_rows,
    pairwise_sq_dists,
    select_rows,
    with_delta,
)

# --- shared pieces ---------------------------------------------------------------------------


def cosine_distances(m: torch.Tensor) -> torch.Tensor:
    """[K, K] cosine distances 1 - cos(m_i, m_j) of the rows, in [0, 2] (a zero row is at
    distance 1 from every other row), with a zero diagonal."""
    m = m.to(torch.float64)
    unit = m / m.norm(dim=1, keepdim=True).clamp_min(1e-30)
    d = (1.0 - unit @ unit.T).clamp(0.0, 2.0)
    return d.fill_diagonal_(0.0)


def hdbscan_labels(dist: torch.Tensor, min_cluster_size: int, min_samples: int = 1) -> torch.Tensor:
    """HDBSCAN (scikit-learn, precomputed distances, a single cluster allowed) cluster labels
    of the K rows, -1 for noise, on the distances' device. Fewer than 2 rows: one cluster."""
    k = dist.shape[0]
    if k < 2:
        return torch.zeros(k, dtype=torch.long, device=dist.device)
    from sklearn.cluster import HDBSCAN

    d = dist.detach().to("cpu", torch.float64).numpy()
    d = np.ascontiguousarray((d + d.T) / 2.0)
    labels = HDBSCAN(
        min_cluster_size=max(2, min(min_cluster_size, k)),
        min_samples=min_samples,
        metric="precomputed",
        allow_single_cluster=True,
    ).fit_predict(d)
    return torch.as_tensor(labels, dtype=torch.long, device=dist.device)


def largest_cluster(labels: torch.Tensor) -> torch.Tensor:
    """[K] bool: the members of the most populous cluster (ties: the lowest label); all
    False when every row is noise."""
    clustered = labels[labels >= 0]
    if clustered.numel() == 0:
        return torch.zeros_like(labels, dtype=torch.bool)
    counts = torch.bincount(clustered)
    return labels == counts.argmax()


def median_clip(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows scaled to norm at most S, S) where S is the median L2 norm of all rows (the mean
    of the two middle norms when K is even)."""
    s = m.norm(dim=1).quantile(0.5)
    return clip_rows(m, s)[0], s


def same_cluster_dists(labels: torch.Tensor) -> torch.Tensor:
    """[K, K]: 0 where two rows share a cluster (a row and itself too), 1 elsewhere; a noise
    row (-1) shares a cluster with no other row."""
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
    d = (~same).to(torch.float64)
    return d.fill_diagonal_(0.0)


def server_rows(server: dict, u: ClientUpdate) -> dict:
    """The server's entries (ctx.params or ctx.buffers) stacked [K, ...] on the uploads'
    device, one copy per row (the model each row started from)."""
    k = u.weight.shape[0]
    dev = T.leaves(u.delta)[0].device
    return {n: g.to(dev).unsqueeze(0).expand(k, *g.shape) for n, g in server.items()}


def _majority_check(k: int, f: int) -> str | None:
    return None if k > 2 * f else "it assumes fewer than half the rows are malicious (K > 2f)"


# --- FLAME -----------------------------------------------------------------------------------


@defence("flame")
def flame(lam: float = 0.001) -> Defence:
    """FLAME (Nguyen et al., USENIX Security 2022) against backdoors.

    Threat: a minority of clients uploads backdoored updates, possibly scaled up.
    Assumes fewer than half the cohort is malicious (K > 2f).

    1. HDBSCAN with min_cluster_size = K // 2 + 1 (min_samples 1, a single cluster allowed)
       on the pairwise cosine distances of the uploads; the largest cluster is kept, the
       other rows (noise) are excluded. No cluster at all: every row is kept.
    2. The kept rows are clipped to S, the median L2 norm of all K rows.
    3. Gaussian noise of std `lam` * S is added to the aggregate (the same noise vector is
       added to every kept row, so the algorithm's weighted mean receives it once).

    Differs from the paper: FLAME clusters the local models W_i; here the model deltas are
    clustered (cosine distances of W_i are dominated by the shared global model). The paper
    averages kept rows equally; here the algorithm reduces the kept rows as it always does
    (FedAvg: by sample count). Only the model delta is clipped and noised; the kept rows'
    other fields (batch-norm statistics, control variates) pass unchanged."""
    if lam < 0:
        raise ValueError(f"flame: lam must be >= 0, got {lam}")

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        m = delta_rows(u)
        k = m.shape[0]
        keep = largest_cluster(hdbscan_labels(cosine_distances(m), k // 2 + 1))
        if not keep.any():
            keep = torch.ones(k, dtype=torch.bool, device=m.device)
        clipped, s = median_clip(m)
        noise = torch.randn(m.shape[1], generator=ctx.rng, dtype=torch.float64)
        rows = clipped + (lam * s) * noise.to(m.device)[None, :]
        out = select_rows(with_delta(u, rows), keep.cpu())
        return out, state, keep.to(torch.float64)

    return Defence(
        "flame",
        "backdoors by a minority; HDBSCAN on cosine distances, median-norm clip, noise",
        apply,
        check=_majority_check,
        selects=True,
    )


# --- FoolsGold -------------------------------------------------------------------------------


def foolsgold_weights(h: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """FoolsGold's per-row weights in [0, 1] from the rows' accumulated histories h [K, P]
    (Fung et al. 2020, Algorithm 1): cosine similarities, pardoning, 1 - max similarity,
    rescaled to a maximum of 1, then the logit kappa * (ln(a / (1 - a)) + 0.5) clipped to
    [0, 1] (a weight of 1 is taken as 0.99 first, as the authors' code does)."""
    k = h.shape[0]
    cs = 1.0 - cosine_distances(h)
    cs = cs - torch.eye(k, dtype=cs.dtype, device=cs.device)  # a row is not its own sybil
    v = cs.max(1).values  # >= 0: the diagonal's 0 is in every row
    pardon = torch.where(v[:, None] < v[None, :], v[:, None] / v[None, :].clamp_min(1e-30), 1.0)
    cs = cs * pardon
    wv = (1.0 - cs.max(1).values).clamp(0.0, 1.0)
    top = wv.max()
    if top <= 0:
        return torch.zeros_like(wv)
    wv = wv / top
    wv = torch.where(wv >= 1.0, torch.full_like(wv, 0.99), wv)
    logit = kappa * (torch.log(wv) - torch.log1p(-wv) + 0.5)
    return torch.nan_to_num(logit, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


@defence("foolsgold")
def foolsgold(kappa: float = 1.0) -> Defence:
    """FoolsGold (Fung et al., RAID 2020) against sybils: many clients pushing the same
    poisoned objective (label flipping, backdoors) send updates more alike than honest
    clients on diverse data do.

    The server keeps each client's accumulated update history (by global id; in the
    state, float64 [n_clients, P]); each round it adds the uploads, computes the cohort's
    pairwise cosine similarities of histories, pardons honest clients that merely resemble
    a sybil (scaling cs_ij by v_i / v_j when v_i < v_j), and gives each row the logit weight
    of 1 - its largest similarity (`foolsgold_weights`). Every row is replaced by the
    weighted mean (`mix_rows`, weights normalised to sum 1; all weights 0: the global model
    is kept). Assumes honest clients' data differ from one another (non-IID); on IID data
    honest histories are alike too and get down-weighted.

    Differs from the paper: no feature-importance weighting of the output layer; only the
    cohort's histories are compared (partial participation); the weights are normalised
    where the paper scales the summed update by them."""
    if kappa <= 0:
        raise ValueError(f"foolsgold: kappa must be > 0, got {kappa}")

    def init(n_clients: int):
        return {"history": torch.zeros(n_clients, 0, dtype=torch.float64)}

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        m = delta_rows(u)
        hist = state["history"].to(m.device)
        if hist.shape[1] != m.shape[1]:
            hist = torch.zeros(max(hist.shape[0], ctx.n_clients), m.shape[1], dtype=m.dtype)
            hist = hist.to(m.device)
        ids = ctx.clients.to(m.device).long()
        hist = hist.index_add(0, ids, m)  # a new tensor: the state passed in is left as it was
        wv = foolsgold_weights(hist[ids], kappa)
        out = mix_rows(u, wv) if wv.sum() > 0 else keep_global(u, ctx)
        return out, {"history": hist}, wv

    return Defence(
        "foolsgold",
        "sybils sharing a poisoned objective; assumes non-IID honest clients",
        apply,
        init=init,
        selects=True,
    )


# --- DeepSight -------------------------------------------------------------------------------


def output_layer(model) -> str:
    """The name of the model's last linear or convolutional layer (its output layer)."""
    for op, name in reversed(model.plan):
        if op in ("linear", "conv"):
            return name
    raise ValueError(f"model {model.name} has no output layer")


def neups(dw: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
    """Normalised energy updates [K, C] of the output layer (DeepSight, Eq. 3-4): per class
    c, e_c = |db_c| + sum_j |dw_cj|, then e_c^2 / sum_c' e_c'^2. dw: [K, C, ...], db: [K, C]."""
    e = db.abs().to(torch.float64) + dw.abs().to(torch.float64).flatten(2).sum(2)
    sq = e * e
    return sq / sq.sum(1, keepdim=True).clamp_min(1e-300)


def threshold_exceedings(neup: torch.Tensor) -> torch.Tensor:
    """[K] counts of classes whose NEUP exceeds max(0.01, 1/C) times the row's largest."""
    c = neup.shape[1]
    xi = max(0.01, 1.0 / c) * neup.max(1, keepdim=True).values
    return (neup > xi).sum(1)


def suspicious(te: torch.Tensor) -> torch.Tensor:
    """[K] bool: rows whose threshold exceedings are at most half the median (a backdoor
    concentrates the output-layer update on few labels). The median is the mean of the two
    middle counts when K is even."""
    return te.to(torch.float64) <= te.to(torch.float64).quantile(0.5) / 2.0


def ddifs(model, base: dict, buffers: dict, delta: dict, x: torch.Tensor) -> torch.Tensor:
    """Division differences [K, C] (DeepSight, Eq. 2): per row, the mean over the inputs x
    of p_c(local model) / p_c(global model), with local model = global + delta row (the
    parameters the delta leaves out stay global). `base` and `buffers` hold each row's
    global model ([K, ...] leaves, see `server_rows`). One vmapped forward pass per model."""

    def log_p(params: dict, bufs: dict) -> torch.Tensor:
        logits, _ = model.apply(params, bufs, x, None, train=False)
        return torch.log_softmax(logits.to(torch.float64), 1)

    local = {**base, **{k: base[k] + d for k, d in delta.items()}}
    log_pg = vmap(log_p)(base, buffers)  # [K, N, C]
    log_pl = vmap(log_p)(local, buffers)
    return torch.exp(log_pl - log_pg).mean(1)


def _euclid(m: torch.Tensor) -> torch.Tensor:
    return pairwise_sq_dists(m.to(torch.float64)).sqrt()


def accepted_clusters(labels: torch.Tensor, bad: torch.Tensor, tau: float) -> torch.Tensor:
    """[K] bool: rows of clusters in which fewer than `tau` of the members are suspicious;
    a noise row (-1) is its own cluster (kept unless suspicious)."""
    k = labels.shape[0]
    own = torch.arange(k, device=labels.device) + int(labels.max().clamp_min(-1)) + 1
    lab = torch.where(labels >= 0, labels, own)
    n = int(lab.max()) + 1
    size = torch.zeros(n, dtype=torch.float64, device=lab.device).index_add_(
        0, lab, torch.ones(k, dtype=torch.float64, device=lab.device)
    )
    n_bad = torch.zeros(n, dtype=torch.float64, device=lab.device).index_add_(
        0, lab, bad.to(torch.float64)
    )
    return (n_bad / size.clamp_min(1.0))[lab] < tau


@defence("deepsight")
def deepsight(tau: float = 1.0 / 3.0, n_inputs: int = 256, seeds: int = 3) -> Defence:
    """DeepSight (Rieger et al., NDSS 2022) against backdoors, simplified.

    Threat: a minority uploads backdoored models; a backdoor's output-layer update
    concentrates on few labels. Assumes fewer than half the cohort is malicious.

    1. NEUPs: per row the output layer's per-class update energies, normalised
       (`neups`); threshold exceedings TE (`threshold_exceedings`); rows with TE at most
       median / 2 are labelled suspicious.
    2. DDifs: `seeds` batches of `n_inputs` random inputs, uniform on [0, 1) (ctx.rng);
       per row the mean ratio of the local model's class probabilities to the global's.
    3. Three clusterings (HDBSCAN, min_cluster_size 2, min_samples 1): cosine distances of
       the output-layer bias updates, Euclidean distances of NEUPs, and of the DDifs of each
       seed (their same-cluster distances averaged over seeds); the mean of the three
       same-cluster distance matrices is clustered once more.
    4. A cluster is accepted when fewer than `tau` of its members are suspicious (a noise
       row stands alone); accepted rows are clipped to the median L2 norm of all rows and
       reduced by the algorithm. None accepted: the global model is kept.

    Simplified from the paper: DDifs use `n_inputs` random inputs per seed (the paper
    20,000) and the global batch-norm statistics; the per-metric clusterings use
    HDBSCAN's precomputed distances with fixed parameters; the paper's clipping bound is
    the median norm too, but its aggregate is an unweighted mean where the algorithm's
    weighted mean is used here. Needs ctx.model (forward passes)."""
    if not 0 < tau <= 1:
        raise ValueError(f"deepsight: tau must be in (0, 1], got {tau}")
    if n_inputs < 1 or seeds < 1:
        raise ValueError("deepsight: n_inputs and seeds must be >= 1")

    def apply(u: ClientUpdate, state, ctx: DefenceContext):
        if ctx.model is None:
            raise ValueError("deepsight needs the model (ctx.model) for its forward passes")
        model = ctx.model
        out_name = output_layer(model)
        wkey, bkey = f"{out_name}.weight", f"{out_name}.bias"
        if wkey not in u.delta or bkey not in u.delta:
            raise ValueError(f"deepsight needs the output layer {out_name} in the uploads")
        m = delta_rows(u)
        k = m.shape[0]
        dev = m.device
        db, dw = u.delta[bkey], u.delta[wkey]
        neup = neups(dw, db)
        bad = suspicious(threshold_exceedings(neup))

        base = server_rows({n: p.detach() for n, p in ctx.params.items()}, u)
        bufs = server_rows(ctx.buffers, u)
        dtype = u.delta[wkey].dtype
        ddif_d = torch.zeros(k, k, dtype=torch.float64, device=dev)
        for _ in range(seeds):
            x = torch.rand(n_inputs, *model.input_shape, generator=ctx.rng, dtype=dtype)
            dd = ddifs(model, base, bufs, u.delta, x.to(u.delta[wkey].device))
            ddif_d += same_cluster_dists(hdbscan_labels(_euclid(dd.to(dev)), 2))
        ddif_d /= seeds
        cos_d = same_cluster_dists(hdbscan_labels(cosine_distances(db.flatten(1)), 2))
        neup_d = same_cluster_dists(hdbscan_labels(_euclid(neup), 2))
        merged = (ddif_d + cos_d + neup_d) / 3.0
        labels = hdbscan_labels(merged, 2)
        keep = accepted_clusters(labels, bad, tau)
        if not keep.any():
            return keep_global(u, ctx), state, keep.to(torch.float64)
        clipped, _ = median_clip(m)
        out = select_rows(with_delta(u, clipped), keep.cpu())
        return out, state, keep.to(torch.float64)

    return Defence(
        "deepsight",
        "backdoors by a minority; output-layer statistics, clustering, median-norm clip",
        apply,
        check=_majority_check,
        selects=True,
    )
