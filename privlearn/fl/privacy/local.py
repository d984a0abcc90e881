"""Local (sample-level) DP: every client trains with DP-SGD (Abadi et al., CCS 2016).

Each local step computes per-sample gradients (`torch.func.vmap` of `grad` over the batch's
samples, itself inside the vectorised engine's vmap over clients), clips each to L2 norm C
over all parameters together (Opacus's flat clipping: factor min(1, C / (||g|| + 1e-6))),
sums them over the batch's real samples (padding rows get factor 0), adds N(0, (z C)^2)
noise to each coordinate and divides by the expected batch size q n = min(B, n), a fixed
denominator as Opacus uses with Poisson sampling. The algorithm's SGD update follows
(momentum, weight decay, FedProx's and FedDyn's extra terms): these act on the released
noisy gradient and the model alone, so they are post-processing and cost no privacy; weight
decay here is torch.optim.SGD's `g + wd w` added after the noise, as with Opacus.

What the guarantee covers: each record of a client against anyone who sees that client's
uploads (the server included), for the sampler the run used (`participation`):
- `LocalWork(sampler="poisson")`: each record enters each step with probability
  q = min(1, B / n), one Gaussian step per local step, amplified by subsampling;
- `sampler="shuffle"` (a permutation per epoch): a record is in exactly one batch per epoch,
  so each epoch is one Gaussian mechanism on it, without amplification
  (Participation("every"), one step per epoch, a partial epoch counting as one).
Not covered: the training loss each client reports (`ClientUpdate.loss`), and the number of
records a client holds (its update's weight).

Noise is the client's secret: each client holds its own generator state (noise.py) in its
persistent state, seeded from OS entropy (from (seed, client id) when `LocalDP.seed` is
given: repeatable, not private) when the bank is made (`seed_noise`; else the first time the
client trains), advanced by every draw and checkpointed with the client bank, so every resume
of a checkpoint draws what the uninterrupted run would.
A server-held seed would let the server subtract the noise. A torch.Generator cannot run
inside vmap, so the engine draws each step's noise outside it (`Algorithm.step_noise`), one
client after another from that client's own generator, and passes it in the batch: both
engines draw the same numbers for the same client and step, whatever their batching.

Example (digits over 10 clients, 3 rounds; a few seconds):

    import torch
    from privlearn.fl.algorithms import LocalSGD, build_algorithm
    from privlearn.fl.data import DataSpec, build_federated
    from privlearn.fl.engine import TrainData, make_engine
    from privlearn.fl.models import build_model
    from privlearn.fl.plan import LocalWork, Sampling, plan_round
    from privlearn.fl.privacy.local import LocalDP, private, worst_epsilon
    from privlearn.fl.rounds import init_federation, run_round, server_rng

    ds = build_federated(DataSpec("digits", 10, "homo"), seed=0)
    model = build_model("mlp", ds.input_shape, ds.n_classes, hidden=(32,))
    work = LocalWork(epochs=1, batch_size=16, sampler="poisson")
    dp = LocalDP(clip=1.0, noise_multiplier=1.0)
    algo = private(build_algorithm("fedavg", model, LocalSGD(lr=0.5), n_clients=10,
                                   batch_size=16), model, dp, work)
    server, bank = init_federation(algo, model, ds.n_clients, seed=0)
    engine, data = make_engine("vectorised"), TrainData(ds.x_train, ds.y_train)
    for r in range(3):
        plan = plan_round(ds.clients, Sampling("all"), work, 0, r)
        server, _ = run_round(algo, engine, server, bank, plan, data, server_rng(0, r))
    print(worst_epsilon(bank, dp, work, delta=1e-5))  # (epsilon, client id)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.func import grad_and_value, vmap

from privlearn.fl.models import Model
from privlearn.fl.plan import LocalWork
from privlearn.fl.privacy.accountant import Participation, epsilon
from privlearn.fl.privacy.noise import draw_normal, noise_state

if TYPE_CHECKING:  # algorithms/base.py imports this module for its DP-SGD gradient
    from privlearn.fl.algorithms.base import Algorithm

Params = dict[str, torch.Tensor]

# algorithms whose every use of the data is local_sgd_step: their other terms post-process
# the noisy steps. fedopt's variants run FedAvg's clients.
LOCAL_DP_ALGORITHMS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox", "feddyn")
_REFUSED = {
    "scaffold": "its control-variate step is gated on whether a batch is empty, which a "
    "Poisson batch may be",
    "fednova": "its normalisation counts non-empty batches, which a Poisson batch may not be",
}
_OTHERS = "it computes gradients of its own (a personal model, inner steps or scores)"


@dataclass(frozen=True)
class LocalDP:
    """DP-SGD's parameters: per-sample clip norm C, noise multiplier z (noise std z C on the
    summed clipped gradient), and `seed` for repeatable noise (None: OS entropy; a seed makes
    the run not private)."""

    clip: float
    noise_multiplier: float
    seed: int | None = None

    def __post_init__(self):
        if not (isinstance(self.clip, (int, float)) and 0 < self.clip < math.inf):
            raise ValueError(f"clip must be a finite number > 0, got {self.clip!r}")
        z = self.noise_multiplier
        if not (isinstance(z, (int, float)) and 0 <= z < math.inf):
            raise ValueError(f"noise multiplier must be a finite number >= 0, got {z!r}")


def clipped_sum(
    model: Model, params: Params, buffers: Params, batch: dict, clip: float | torch.Tensor
) -> tuple[Params, torch.Tensor]:
    """The sum over the batch's real samples of each per-sample gradient of the
    cross-entropy, clipped to L2 norm `clip` over all parameters, and the mean loss."""

    def one(p: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, _ = model.apply(p, buffers, x[None], None, train=True)
        return -logits.log_softmax(-1).gather(1, y.reshape(1, 1)).sum()

    per, losses = vmap(grad_and_value(one), in_dims=(None, 0, 0))(params, batch["x"], batch["y"])
    # vector_norm over the non-sample axes reads vmap's batched layout in place (flatten +
    # square copied it, and took twice as long on MNIST-5k's MLP)
    norms = [torch.linalg.vector_norm(g, dim=tuple(range(1, g.dim()))) for g in per.values()]
    norm = torch.stack(norms).norm(dim=0)
    m = batch["mask"]
    factor = torch.where(m > 0, (clip / (norm + 1e-6)).clamp(max=1.0), torch.zeros_like(norm))
    summed = {k: torch.tensordot(factor.to(g.dtype), g, dims=1) for k, g in per.items()}
    return summed, (losses * m).sum() / m.sum().clamp_min(1.0)


def private_grad(
    model: Model, params: Params, buffers: Params, batch: dict, dp: dict
) -> tuple[Params, torch.Tensor, Params]:
    """DP-SGD's gradient: (clipped sum + sigma * noise) / denom, with the noise drawn by the
    engine (batch["noise"], standard normal) and sigma = z C, denom = q n from `dp`."""
    summed, loss = clipped_sum(model, params, buffers, batch, dp["clip"])
    noise = batch["noise"]
    grads = {k: (summed[k] + dp["sigma"] * noise[k]) / dp["denom"] for k in summed}
    return grads, loss, buffers


def _client_seed(seed: int, client: int) -> int:
    return int(np.random.SeedSequence([seed, client]).generate_state(1, np.uint64)[0] >> 1)


def private(algo: Algorithm, model: Model, dp: LocalDP, work: LocalWork) -> Algorithm:
    """`algo` (built on `model`) with DP-SGD client steps, for clients trained as `work`
    plans (batch size B, the sampler accounted for); refused for models with batch norm
    (a sample's statistics reach every other sample's gradient) and for the algorithms
    outside LOCAL_DP_ALGORITHMS."""
    if algo.name not in LOCAL_DP_ALGORITHMS:
        why = _REFUSED.get(algo.name, _OTHERS)
        raise ValueError(
            f"local DP does not support {algo.name}: {why}; it supports "
            f"{', '.join(LOCAL_DP_ALGORITHMS)}"
        )
    if model.local_keys:
        raise ValueError(
            f"local DP refuses model {model.name!r}: batch norm mixes samples within a batch, "
            "so per-sample gradients (and their clipping) are not per sample; use a model "
            "without batch norm"
        )
    big_b = work.batch_size
    params, _ = model.init(torch.Generator().manual_seed(0))
    keys, shapes = list(params), [p.shape for p in params.values()]
    blank = torch.zeros_like(noise_state(0))  # all zeros: not seeded yet

    def client_state_init(s):
        z = torch.zeros((), dtype=torch.int64)
        dp_state = {"noise": blank, "steps": z, "epochs": z, "n": z}
        return {**algo.client_state_init(s), "dp": dp_state}

    def client_init(s, cs, info):
        lo = algo.client_init(s, cs, info)
        n, d = info["n"], cs["dp"]
        zero = torch.zeros_like(n)
        own = {"noise": d["noise"], "id": info["id"], "steps": d["steps"], "start": d["steps"]}
        hp = {"clip": zero + dp.clip, "sigma": zero + dp.noise_multiplier * dp.clip}
        return {**lo, "dp": {**own, **hp, "denom": n.clamp(max=big_b), "epochs": d["epochs"]}}

    def client_step(lo, b):
        out = algo.client_step(lo, b)
        return {**out, "dp": {**out["dp"], "steps": out["dp"]["steps"] + 1}}

    def client_final(s, lo):
        u, cs = algo.client_final(s, lo)
        d, n = lo["dp"], lo["n"].to(torch.int64)
        nb = torch.clamp(n // big_b, min=1) if work.drop_last else (n + big_b - 1) // big_b
        taken = d["steps"] - d["start"]
        epochs = d["epochs"] + (taken + nb - 1) // nb
        own = {"noise": d["noise"], "steps": d["steps"], "epochs": epochs, "n": n}
        return u, {**cs, "dp": own}

    def step_noise(lo, batched):
        """Each client's standard normal draws for one step, from its own generator."""
        d = lo["dp"]
        states = d["noise"] if batched else d["noise"][None]
        ids = d["id"].reshape(-1)
        draws, new = [], []
        for j in range(states.shape[0]):
            st = states[j].cpu()
            if not st.any():
                st = noise_state(None if dp.seed is None else _client_seed(dp.seed, int(ids[j])))
            z, st = draw_normal(st, shapes)
            draws.append(z)
            new.append(st)
        like = lo["params"][keys[0]]
        noise = {
            k: torch.stack([z[i] for z in draws]).to(like.dtype).to(like.device)
            for i, k in enumerate(keys)
        }
        states = torch.stack(new).to(states.device)
        if not batched:
            noise, states = {k: v[0] for k, v in noise.items()}, states[0]
        return {**lo, "dp": {**d, "noise": states}}, noise

    return dataclasses.replace(
        algo,
        client_state_init=client_state_init,
        client_init=client_init,
        client_step=client_step,
        client_final=client_final,
        step_noise=step_noise,
    )


def sampling_rates(bank: Any, work: LocalWork) -> list[float]:
    """Each client's record sampling rate q = min(1, B / n). The bank keeps the integer n
    (its "dp" entry), so casting the bank's floats to another precision cannot move q."""
    return [min(1.0, work.batch_size / n) if n else 0.0 for n in bank["dp"]["n"].tolist()]


def participation(work: LocalWork, rate: float) -> Participation:
    """How one record of a client with sampling rate `rate` enters DP-SGD's noisy steps."""
    if work.sampler == "poisson":
        return Participation("poisson", rate)
    return Participation("every")


def seed_noise(bank: Any, dp: LocalDP) -> None:
    """Give every client of a fresh `bank` its noise generator now (in place), so that the
    first checkpoint already holds every client's state: a client seeded lazily, when it
    first trains, would draw other OS entropy in each resume of one checkpoint."""
    d = bank["dp"]
    for c in range(d["noise"].shape[0]):
        d["noise"][c] = noise_state(None if dp.seed is None else _client_seed(dp.seed, c))


def units(sizes: list[int], work: LocalWork) -> list[tuple[Participation, int]]:
    """The distinct kinds of record for the run's budget: each client size's participation
    and its most noisy steps a round (every planned local step under the Poisson sampler, one
    per epoch under the shuffled one), as if the client trained every round."""
    epochs = work.epochs if work.epochs_range is None else work.epochs_range[1]
    out = []
    for n in sorted(set(int(n) for n in sizes if n > 0)):
        q = min(1.0, work.batch_size / n)
        per_epoch = max(n // work.batch_size, 1) if work.drop_last else -(-n // work.batch_size)
        steps = epochs * per_epoch if work.sampler == "poisson" else epochs
        out.append((participation(work, q), steps))
    return out


def client_epsilon(
    bank: Any, dp: LocalDP, work: LocalWork, delta: float, accountant: str = "rdp"
) -> list[float]:
    """Each client's sample-level epsilon at `delta` from the DP steps it took (Poisson
    sampler) or the epochs it ran (shuffle sampler), as its state in `bank` counts them;
    0 for a client that never trained."""
    d = bank["dp"]
    counts = (d["steps"] if work.sampler == "poisson" else d["epochs"]).tolist()
    rates = sampling_rates(bank, work)
    seen: dict[tuple[int, float], float] = {}
    out = []
    for s, q in zip(counts, rates, strict=True):
        if (s, q) not in seen:
            p = participation(work, q) if s else Participation("every")
            seen[(s, q)] = epsilon(dp.noise_multiplier, int(s), delta, p, accountant)
        out.append(seen[(s, q)])
    return out


def worst_epsilon(
    bank: Any, dp: LocalDP, work: LocalWork, delta: float, accountant: str = "rdp"
) -> tuple[float, int]:
    """The federation's guarantee: the largest client epsilon and that client's id."""
    eps = client_epsilon(bank, dp, work, delta, accountant)
    worst = int(np.argmax(eps))
    return eps[worst], worst
