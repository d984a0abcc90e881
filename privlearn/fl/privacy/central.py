"""Central (user-level) DP-FedAvg as a server reducer (McMahan et al. 2018; adaptive
clipping after Andrew et al. 2021).

Each client's update is clipped to L2 norm C, the clipped updates are summed, Gaussian noise
N(0, (z C)^2) is added once to the sum and the result divided by a denominator. A client
counts once whatever its sample count: sample weights would let one client's contribution
grow without bound, so the DP reducer ignores them (the mean is unweighted).

The mechanism is split where secure aggregation would cut it: each client clips its own
row (the clipped update and the below-clip bit the adaptive clip needs) and `noisy_step`
sees only `Sums` (the sum of clipped updates, the count of below-clip bits, the number of
clients). `dp_mean` composes the two on stacked rows for a plain server, and its `Split`
hands the clipped rows to a secure aggregation instead.

Per-layer clipping gives each of the L leaves the clip C / sqrt(L) (an equal split), so the
per-leaf clips sum in quadrature to C and the sensitivity, and so the noise, are those of a
flat clip C.

Denominators: "fixed" divides by the expected cohort size E (unbiased; sensitivity C / E).
"clipped" is McMahan et al.'s clipped estimator: sum / max(count, E), whose sensitivity is
2 C / E (a client also moves the denominator), so its noise has standard deviation 2 z C / E.

Adaptive clipping: b = (sum of bits [norm <= C] + N(0, sigma_b^2)) / E, then
C <- C exp(-eta (b - gamma)); the update noise multiplier is raised to
z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2), so that the two Gaussian releases together cost
what one release of multiplier z does (Andrew et al. 2021, Theorem 1); the accountant is
given z.

The noise comes from `noise.draw_normal` and its generator state is part of the transform
state, so it travels in the server state and the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from privlearn.fl import tree as T
from privlearn.fl.aggregate.reducers import clip_by_norm
from privlearn.fl.aggregate.transform import Params, Split, Transform, Updates, check_stage
from privlearn.fl.privacy.noise import draw_normal, noise_state

DENOMINATORS = ("fixed", "clipped")

# algorithms whose server would see something per client that the mechanism does not bound
UNSUPPORTED = {
    "scaffold": "its control-variate delta 'dc' reaches the server unclipped and un-noised",
    "fednova": "its normaliser 'a' scales every client's row (tau_eff), so one client moves "
    "the others' contributions beyond the clip",
    "feddyn": "its server state h is updated from the raw, unclipped deltas",
    "ifca": "the server steps once per cluster on the clients that chose it, and each "
    "client's cluster choice is uploaded un-noised",
    "fedfomo": "clients upload whole models that the server keeps and serves to others",
}


@dataclass(frozen=True)
class CentralDP:
    """The mechanism's parameters.

    noise_multiplier: z, the noise standard deviation over the clip (what the accountant is
    given); clip: C, or the initial clip when adaptive; expected_clients: E, the expected
    cohort size (the denominator); quantile: gamma, None for a fixed clip; clip_lr: eta;
    count_noise: sigma_b, the noise on the bit count (None: E / 20, as Flower)."""

    noise_multiplier: float
    clip: float
    expected_clients: float
    per_layer: bool = False
    denominator: str = "fixed"
    quantile: float | None = None
    clip_lr: float = 0.2
    count_noise: float | None = None

    def __post_init__(self):
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(
                f"noise_multiplier must be a finite number > 0, got {self.noise_multiplier}"
            )
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ValueError(f"clip must be a finite number > 0, got {self.clip}")
        if not self.expected_clients > 0:
            raise ValueError(f"expected_clients must be > 0, got {self.expected_clients}")
        if self.denominator not in DENOMINATORS:
            raise ValueError(
                f"dp_denominator must be one of {', '.join(DENOMINATORS)}, got {self.denominator!r}"
            )
        if not self.adaptive:
            return
        if not 0 < self.quantile < 1:
            raise ValueError(f"clip_quantile must be in (0, 1), got {self.quantile}")
        if not (self.clip_lr > 0 and math.isfinite(self.clip_lr)):
            raise ValueError(f"clip_lr must be a finite number > 0, got {self.clip_lr}")
        if not (self.sigma_b > 0 and math.isfinite(self.sigma_b)):
            raise ValueError(f"clip_count_noise must be a finite number > 0, got {self.sigma_b}")
        if self.noise_multiplier >= 2 * self.sigma_b:
            raise ValueError(
                f"noise_multiplier {self.noise_multiplier:.4g} leaves no budget for the adaptive "
                f"clip's count noise {self.sigma_b:.4g} (it needs z < 2 sigma_b): raise "
                "clip_count_noise or use a fixed clip"
            )

    @property
    def adaptive(self) -> bool:
        return self.quantile is not None

    @property
    def sigma_b(self) -> float:
        return self.expected_clients / 20 if self.count_noise is None else self.count_noise

    @property
    def update_noise_multiplier(self) -> float:
        """z_delta: the multiplier of the noise on the update sum."""
        z = self.noise_multiplier
        if not self.adaptive:
            return z
        return (z**-2 - (2 * self.sigma_b) ** -2) ** -0.5

    @property
    def sensitivity_factor(self) -> float:
        """The output's sensitivity in units of C / E."""
        return 2.0 if self.denominator == "clipped" else 1.0


@dataclass(frozen=True)
class Sums:
    """All the noisy step sees: the sum of clipped updates, of below-clip bits, and the
    number of clients summed."""

    total: Params
    below: torch.Tensor
    count: torch.Tensor


def _clip_rows(values: Params, clip: float, per_layer: bool) -> tuple[Params, torch.Tensor]:
    """Stacked rows clipped (flat: the row's norm to `clip`; per layer: each leaf's to
    clip / sqrt(L)), and each row's bit [flat norm <= clip] in float64."""
    sq = sum(
        torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1) ** 2 for t in values.values()
    )
    bits = (sq.sqrt() <= clip).to(torch.float64)
    ones = torch.ones_like(sq)
    if not per_layer:
        clipped = clip_by_norm(clip).update(Updates(values, ones), (), {})[0].values
        return clipped, bits
    per_leaf = clip_by_norm(clip / math.sqrt(len(values)))
    clipped = {
        k: per_leaf.update(Updates({k: v}, ones), (), {})[0].values[k] for k, v in values.items()
    }
    return clipped, bits


def client_sums(values: Params, clip: float, per_layer: bool = False) -> Sums:
    """Clip stacked client rows and sum them: what a secure aggregation would deliver."""
    clipped, bits = _clip_rows(values, clip, per_layer)
    count = torch.tensor(float(bits.numel()), dtype=torch.float64)
    return Sums(T.tree_map(lambda t: t.sum(0), clipped), bits.sum(), count)


def dp_state(spec: CentralDP, seed: int | None = None) -> dict:
    """The mechanism's state: the current clip and the noise generator's state (seed None:
    OS entropy, private; a seed: repeatable, not private)."""
    return {"clip": torch.tensor(float(spec.clip), dtype=torch.float64), "noise": noise_state(seed)}


def noisy_step(sums: Sums, state: dict, spec: CentralDP) -> tuple[Params, dict]:
    """The server's side, from sums alone: the noisy mean update and the next state (the
    adapted clip, the advanced generator)."""
    clip = float(state["clip"])
    shapes = [t.shape for t in sums.total.values()] + ([torch.Size()] if spec.adaptive else [])
    draws, gen = draw_normal(state["noise"].cpu(), shapes)
    e = spec.expected_clients
    std = spec.update_noise_multiplier * clip * spec.sensitivity_factor
    den = e if spec.denominator == "fixed" else max(float(sums.count), e)
    out = {}
    for (k, t), n in zip(sums.total.items(), draws, strict=False):
        noisy = t.to(torch.float64) / den + std * n.to(t.device) / e
        out[k] = noisy.to(t.dtype)
    new_clip = state["clip"]
    if spec.adaptive:
        b = (float(sums.below) + spec.sigma_b * float(draws[-1])) / e
        new_clip = state["clip"] * math.exp(-spec.clip_lr * (b - spec.quantile))
    return out, {"clip": new_clip, "noise": gen.to(state["noise"].device)}


def dp_mean(spec: CentralDP, seed: int | None = None) -> Transform:
    """The DP reducer: client rows in, one noisy unweighted mean out (weights ignored), e.g.
    chain(dp_mean(CentralDP(1.0, 0.5, 100)), sgd(1.0)) or before a server optimiser.
    Splittable for secure aggregation: clients clip to the current (public) clip and send the
    clipped update, the below-clip bit and 1; the noise is added once, to the sums."""

    def update(u: Updates, state: dict, params: Params) -> tuple[Updates, dict]:
        check_stage(u, True, "dp_mean")
        mean, state = noisy_step(
            client_sums(u.values, float(state["clip"]), spec.per_layer), state, spec
        )
        return Updates(mean), state

    def summands(u: Updates, state: dict) -> dict:
        clipped, bits = _clip_rows(u.values, float(state["clip"]), spec.per_layer)
        return {"values": clipped, "below": bits, "count": torch.ones_like(bits)}

    def from_sums(sums: dict, state: dict, params: Params) -> tuple[Updates, dict]:
        mean, state = noisy_step(Sums(sums["values"], sums["below"], sums["count"]), state, spec)
        return Updates(mean), state

    return Transform(lambda params: dp_state(spec, seed), update, Split(summands, from_sums))


def dp_problem(algorithm: str, has_batch_norm: bool) -> str | None:
    """Why central DP cannot bound what `algorithm` sends the server, or None."""
    if algorithm in UNSUPPORTED:
        return f"--dp central does not support {algorithm}: {UNSUPPORTED[algorithm]}"
    if has_batch_norm and algorithm != "fedbn":
        return (
            f"--dp central does not support batch norm with {algorithm}: the running statistics "
            "are averaged by sample weight outside the mechanism; use a model without batch "
            "norm, or fedbn (which keeps them on the clients)"
        )
    return None
