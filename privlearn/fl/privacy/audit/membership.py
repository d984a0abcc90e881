"""Membership inference against federated models: the loss threshold (Yeom et al., CSF 2018)
and LiRA (Carlini et al., S&P 2022), against the global model or one client's model.

The game (`membership_game`): a pool of candidate rows; `n_models` federations are trained,
each on a random half of the candidates drawn independently of the others, so that every candidate
is IN for about half of them (`half_masks`). Each model in turn is the target and
the others are its shadows (leave-one-out, as the reference code's multi-target plots), and
the predictions of all targets are pooled: with 17 models there are 16 shadows per target and
17 times as many negatives as one target gives, which is what makes TPR at 0.1 % FPR
measurable at all on a 1,797-row data set.

The shadows REPLAY the federated training: every shadow is trained by the target's own
recipe (the same RunConfig: model, algorithm, clients, rounds, local epochs, engine), through
`Experiment.round`, on a shadow federation drawn the same way as the target's. Only the
candidates it holds, its model initialisation and its round draws differ. That is the
strongest (and the recommended) attacker: it knows the training procedure, not the data.

Targets:
- "global": the server model after the last round; a federation's rows are its IN
  candidates split uniformly at random over the clients; members are the federation's
  training rows.
- "client": client 0's locally trained model in the last round (the server model of the
  round before, plus its uploaded delta); a federation gives client 0 its IN candidates and
  each other client as many rows drawn from the rest of the data (never candidates).
  Members are client 0's rows; the non-members are candidates held by nobody in that
  federation.

Scores (higher: more likely a member): loss threshold, -loss of the target on the row;
LiRA, the logit-scaled confidence phi = log(p_y / (1 - p_y)) of the true class, compared with
per-example Gaussians fitted to the shadows' phi (means are medians, as in the reference
code): online, the log-likelihood ratio of the IN and OUT fits; offline, OUT shadows only,
the one-sided test (phi - mu_out) / sigma_out. With `fixed_variance` one global sigma is used
for every example, as the reference code's fix_variance (with one sigma the ranking does not
depend on its value). No query augmentations (the reference averages over flips and shifts).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privlearn.fl import tree as T
from privlearn.fl.data.datasets import FederatedDataset, load_centralised
from privlearn.fl.engine import CohortResult, TrainData
from privlearn.fl.privacy.audit.stats import LOW_FPRS, plot_roc, summary
from privlearn.fl.run import Experiment, RunConfig

TARGETS = ("global", "client")
TARGET_CLIENT = 0  # the client whose model the "client" target attacks


class _Recording:
    """An engine that keeps the last cohort's result (to read one client's upload)."""

    def __init__(self, inner):
        self.inner, self.name, self.last = inner, inner.name, None

    def run_clients(self, algo, server, client_states, plan, data: TrainData) -> CohortResult:
        self.last = inner = self.inner.run_clients(algo, server, client_states, plan, data)
        return inner


def train_federation(
    exp: Experiment, x: torch.Tensor, y: torch.Tensor, clients: list[np.ndarray], seed: int
) -> dict:
    """Run `exp`'s recipe (its config's rounds, model, algorithm, engine) on the rows `x, y`
    split as `clients`, from `seed`. Returns the global model and client 0's last-round local
    model, each as (params, buffers); client 0 must be in the last round's cohort."""
    ds = FederatedDataset(
        name=exp.data.name,
        x_train=x,
        y_train=y,
        clients=clients,
        x_test=x[:0],
        y_test=y[:0],
        n_classes=exp.data.n_classes,
        meta={"partition": "membership game", "seed": seed},
    )
    ds.check_not_empty()
    recorder = _Recording(exp.engine)
    run = dataclasses.replace(
        exp, cfg=dataclasses.replace(exp.cfg, seed=seed), data=ds, engine=recorder
    )
    server, bank = run.init_state()
    if exp.algo.global_model(server) is None:
        raise ValueError(f"algorithm {exp.cfg.algorithm!r} has no global model to attack")
    for r in range(exp.cfg.rounds):
        before = server
        server, _, plan = run.round(server, bank, r)
    rows = (plan.clients == TARGET_CLIENT).nonzero().flatten()
    if len(rows) != 1:
        raise ValueError(
            f"client {TARGET_CLIENT} is not in the last round's cohort; use sampling 'all'"
        )
    up = T.rows(recorder.last.updates, int(rows[0]))
    if set(up.delta) != set(before.get("params", {})):
        raise ValueError(
            f"algorithm {exp.cfg.algorithm!r} does not upload its model change: the client "
            "target needs one whose delta covers every parameter (the FedAvg family)"
        )
    client_params = T.add(before["params"], up.delta)
    client_buffers = up.buffers if up.buffers else before["buffers"]
    return {"global": exp.algo.global_model(server), "client": (client_params, client_buffers)}


@torch.no_grad()
def logit_confidence(model, pb: tuple[dict, dict], x: torch.Tensor, y: torch.Tensor):
    """(phi, loss, correct) per row: phi = log(p_y / (1 - p_y)) = z_y - logsumexp_{j != y} z_j
    in float64 (finite where p_y rounds to 1), the cross-entropy -log p_y, and whether the
    true class has the top logit."""
    logits, _ = model.apply(pb[0], pb[1], x, train=False)
    z = logits.double()
    zy = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], -torch.inf).logsumexp(1)
    loss = z.logsumexp(1) - zy
    correct = zy >= z.scatter(1, y[:, None], -torch.inf).amax(1)
    return (zy - others).cpu().numpy(), loss.cpu().numpy(), correct.cpu().numpy()


def half_masks(n_models: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n_models, n] IN bits: each model holds a random half of the candidates, drawn
    independently of the others, so each candidate is IN for about half of the models.
    (Masks balanced down each column, as LiRA's reference code draws them, would leak under
    leave-one-out: a target's IN bit changes its shadows' IN count by one.)"""
    return np.argsort(rng.random((n_models, n)), axis=1) < n / 2


def _fit(obs: np.ndarray, fixed_variance: bool) -> tuple[np.ndarray, np.ndarray | float]:
    """Per-example (median, std) of the non-NaN entries of each column; one global std with
    `fixed_variance`. A column with fewer than 2 observations takes the global std (and,
    with none, the global median): a rare case with 16 shadows (P = 17 / 2^16 per side)."""
    count = (~np.isnan(obs)).sum(0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns, handled below
        mu = np.nanmedian(obs, axis=0)
        sd = np.nanstd(obs, axis=0)
    mu = np.where(count > 0, mu, np.nanmedian(obs))
    glob = float(np.nanstd(obs))
    if fixed_variance:
        return mu, glob
    return mu, np.where(count > 1, sd, glob)


def _norm_logpdf(x, mu, sd):
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd)


def lira_scores(
    phi: np.ndarray, keep: np.ndarray, target: int, online: bool, fixed_variance: bool
) -> np.ndarray:
    """LiRA's score of each candidate against model `target`, the other models its shadows
    (phi, keep: [n_models, n])."""
    shadows = np.delete(np.arange(len(phi)), target)
    s_phi, s_in = phi[shadows], keep[shadows]
    mu_out, sd_out = _fit(np.where(~s_in, s_phi, np.nan), fixed_variance)
    x = phi[target]
    if not online:
        return (x - mu_out) / np.maximum(sd_out, 1e-30)
    mu_in, sd_in = _fit(np.where(s_in, s_phi, np.nan), fixed_variance)
    if fixed_variance:  # the reference code's fix_variance: one sigma (the IN one) for both
        sd_out = sd_in
    return _norm_logpdf(x, mu_in, np.maximum(sd_in, 1e-30)) - _norm_logpdf(
        x, mu_out, np.maximum(sd_out, 1e-30)
    )


ATTACKS = {  # name: (online, fixed_variance) of LiRA; None: the loss threshold
    "loss-threshold": None,
    "lira-online-fixed-var": (True, True),
    "lira-online": (True, False),
    "lira-offline-fixed-var": (False, True),
}


def _federations(
    target: str, n_cand: int, pool: int, n_clients: int, keep: np.ndarray, seed: int
) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """The candidates (pool row ids) and, per model, its clients' pool row ids."""
    rng = np.random.default_rng([seed, 13, 10])
    cand = np.sort(rng.permutation(pool)[:n_cand])
    rest = np.setdiff1d(np.arange(pool), cand)
    feds = []
    for j, row in enumerate(keep):
        r = np.random.default_rng([seed, 13, 11, j])
        inn = cand[row]
        if target == "global":
            feds.append([np.sort(c) for c in np.array_split(r.permutation(inn), n_clients)])
        else:
            # the other clients hold as many rows each as client 0, at most half the rest
            others = r.permutation(rest)[: min(len(inn) * (n_clients - 1), len(rest) // 2)]
            feds.append(
                [np.sort(inn)] + [np.sort(c) for c in np.array_split(others, n_clients - 1)]
            )
    return cand, feds


def membership_game(
    cfg: RunConfig,
    target: str = "global",
    n_models: int = 17,
    candidates: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train `n_models` federations by `cfg`'s recipe on random halves of the candidates from
    the data pool (cfg.dataset's train and test rows together), and attack each in turn with
    the rest as shadows (module docstring). `candidates`: how many pool rows (drawn from `seed`) are
    candidates (default: the whole pool for "global", twice an even share of it per client
    for "client"); fewer candidates give smaller, more overfit federations. Returns a
    JSON-able dict per attack, and the raw scores under "_scores"."""
    if target not in TARGETS:
        raise ValueError(f"target: must be one of {', '.join(TARGETS)}, got {target!r}")
    if n_models < 3:
        raise ValueError(f"n_models: need >= 3 (a target and 2 shadows), got {n_models}")
    if target == "client" and cfg.n_clients < 2:
        raise ValueError("cfg.n_clients: the client target needs >= 2 clients")
    if cfg.sampling != "all":
        raise ValueError("cfg.sampling: the game needs 'all' (every client in the last round)")
    t0 = time.perf_counter()
    exp = Experiment.build(cfg)
    pool = load_centralised(cfg.dataset, cfg.data_root)
    x = torch.from_numpy(np.concatenate([pool.x_train, pool.x_test])).to(cfg.device)
    y = torch.from_numpy(np.concatenate([pool.y_train, pool.y_test])).to(cfg.device)
    top = len(y) if target == "global" else len(y) // 2
    n_cand = candidates or (len(y) if target == "global" else 2 * len(y) // cfg.n_clients)
    if not 2 * cfg.n_clients <= n_cand <= top:
        raise ValueError(
            f"candidates: need {2 * cfg.n_clients}..{top} for the {target} target, got {n_cand}"
        )
    keep = half_masks(n_models, n_cand, np.random.default_rng([seed, 13, 9]))
    cand, feds = _federations(target, n_cand, len(y), cfg.n_clients, keep, seed)
    phi = np.zeros((n_models, n_cand))
    loss = np.zeros((n_models, n_cand))
    acc = {"in": [], "out": []}
    for j, clients in enumerate(feds):
        models = train_federation(exp, x, y, clients, seed=cfg.seed + 1000 * (j + 1))
        phi[j], loss[j], right = logit_confidence(exp.model, models[target], x[cand], y[cand])
        acc["in"].append(float(right[keep[j]].mean()))
        acc["out"].append(float(right[~keep[j]].mean()))
    seconds = time.perf_counter() - t0
    raw = {
        name: -loss
        if how is None
        else np.stack([lira_scores(phi, keep, t, *how) for t in range(n_models)])
        for name, how in ATTACKS.items()
    }
    results: dict[str, Any] = {}
    for name, how in ATTACKS.items():
        pos, neg = raw[name][keep], raw[name][~keep]
        results[name] = {
            "attack": name,
            "target": "global model" if target == "global" else f"client {TARGET_CLIENT}'s model",
            "shadows": 0 if how is None else n_models - 1,
            "replay": how is not None,
            "shadow_training": (
                "none (one global threshold)"
                if how is None
                else "replayed federated training: the target's RunConfig on shadow federations"
            ),
            "targets_pooled": n_models,
            **summary(pos, neg, LOW_FPRS),
        }
    meta = {
        "dataset": cfg.dataset,
        "model": cfg.model,
        "hidden": cfg.hidden,
        "algorithm": cfg.algorithm,
        "n_clients": cfg.n_clients,
        "rounds": cfg.rounds,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "candidates": n_cand,
        "models_trained": n_models,
        "rows_per_member_set": float(keep.sum(1).mean()),
        "acc_members": float(np.mean(acc["in"])),
        "acc_nonmembers": float(np.mean(acc["out"])),
        "seconds": seconds,
    }
    return {
        "meta": meta,
        "attacks": results,
        "_scores": {n: (keep, s) for n, s in raw.items()},
    }


def write_report(game: dict, out: str | Path, title: str = "") -> Path:
    """Write the game's JSON (without raw scores) and its ROC PNG into `out`."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = {n: (s[keep], s[~keep]) for n, (keep, s) in game["_scores"].items()}
    plot_roc(curves, out / "roc.png", title)
    public = {k: v for k, v in game.items() if not k.startswith("_")}
    (out / "membership.json").write_text(json.dumps(public, indent=2))
    return out
