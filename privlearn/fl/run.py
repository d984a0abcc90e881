"""`privlearn fl run`: a federated experiment from a config, with metrics, plots and resume.

Every round writes `metrics.json` and a checkpoint (`checkpoint.pt`, replaced atomically)
into the output folder. Round r's cohort, batches and server randomness derive from
(seed, r) alone, so a run resumed from round r's checkpoint continues exactly as if it
had never stopped. Ctrl-C stops the run once the round in progress is saved; a second
Ctrl-C stops it at once, losing that round, which resuming redoes.

A round whose every update is rejected, or whose aggregate is not finite, leaves the model
and client states as they were and is recorded, with why, as `skipped` in its metrics entry
(and warned about): a run never writes or checkpoints a NaN model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fcntl
import functools
import hashlib
import io
import json
import math
import os
import pickle
import re
import reprlib
import signal
import threading
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch.utils import _pytree as pytree

from privlearn.fl import hints
from privlearn.fl import tree as T
from privlearn.fl.aggregate.screening import magnitude_limit
from privlearn.fl.algorithms import (
    ALGORITHMS,
    PERSONALISED,
    LocalSGD,
    build_algorithm,
    takes_reducer,
)
from privlearn.fl.compress import (
    DEFAULT_LEVELS,
    DEFAULT_MOMENTUM,
    DEFAULT_RATIO,
    FEEDBACK,
    METHODS,
    Compression,
    Compressor,
    compression_problem,
)
from privlearn.fl.data import (
    DATASETS,
    SCHEMES,
    DataSpec,
    build_federated,
    label_counts,
    plot_heatmap,
    summary,
)
from privlearn.fl.engine import ENGINES, TrainData, make_engine
from privlearn.fl.evaluate import global_accuracy, personal_accuracy
from privlearn.fl.models import build_model, with_closed_form
from privlearn.fl.plan import LocalWork, Sampling, plan_round
from privlearn.fl.privacy import local as local_dp
from privlearn.fl.privacy.accountant import ACCOUNTANTS, Participation
from privlearn.fl.privacy.budget import (
    NOT_COVERED,
    Budget,
    default_delta,
    expected_clients,
    participation,
    plan_budget,
)
from privlearn.fl.privacy.central import DENOMINATORS, CentralDP, dp_mean, dp_problem
from privlearn.fl.privacy.secagg import PROTOCOLS, make_aggregator
from privlearn.fl.robust import ATTACKS, DEFENCES
from privlearn.fl.robust.run import backdoor_accuracy, build_scenario, round_report
from privlearn.fl.rounds import (
    REFUSE_COMPRESSED,
    SCREENING_OFF,
    SecureRound,
    init_federation,
    refuse_secure,
    run_round,
    server_rng,
)

CHECKPOINT, METRICS, PLOT, PARTITION_PLOT = (
    "checkpoint.pt",
    "metrics.json",
    "metrics.png",
    "partition.png",
)
# what may change when resuming
RESUMABLE = ("rounds", "eval_every", "out", "threads", "ray_address")


def _opt(default: Any, help: str, unset: str | None = None) -> Any:
    """A config field with the help text its CLI flag shows (`unset`: what None means)."""
    meta = {"help": help, **({"unset": unset} if unset else {})}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _positive(v: Any) -> bool:
    return v > 0 and math.isfinite(v)


def _finite_values(v: Any) -> bool:
    """What a hyper-parameter mapping may hold (mu: .inf once passed as a value)."""
    if isinstance(v, dict):
        return all(_finite_values(x) for x in v.values())
    if isinstance(v, list):
        return all(_finite_values(x) for x in v)
    if isinstance(v, float):
        return math.isfinite(v)
    return v is None or isinstance(v, (bool, int, str))


INT_LIMIT = 2**63  # ints reach torch and numpy as int64
MAX_WIDTH = 2**16  # a model with wider layers does not fit in memory


_RANGES: tuple[tuple[str, Any, str], ...] = (
    *(
        (k, lambda v: v >= 1, "must be >= 1")
        for k in (
            "n_clients",
            "rounds",
            "eval_every",
            "partition_max_tries",
            "chunk_size",
            "threads",
            "root_size",
            "ray_workers",
        )
    ),
    *((k, _positive, "must be a finite number > 0") for k in ("beta", "lr", "flower_timeout")),
    *(
        (k, lambda v: 0 <= v < np.inf, "must be a finite number >= 0")
        for k in (
            "noise",
            "weight_decay",
            "synthetic_alpha",
            "synthetic_beta",
            "min_client_size",
            "seed",
            "defence_f",
        )
    ),
    ("dp", lambda v: v in ("central", "local"), "must be central or local"),
    (
        "secure_aggregation",
        lambda v: v in PROTOCOLS,
        f"must be one of {', '.join(PROTOCOLS)}",
    ),
    ("secagg_dropout", lambda v: 0 <= v < 1, "must be a fraction in [0, 1)"),
    *(
        (k, _positive, "must be a finite number > 0")
        for k in ("noise_multiplier", "target_epsilon", "clip", "clip_lr", "clip_count_noise")
    ),
    ("delta", lambda v: 0 < v < 1, "must be in (0, 1)"),
    ("clip_quantile", lambda v: 0 < v < 1, "must be in (0, 1)"),
    ("dp_denominator", lambda v: v in DENOMINATORS, f"must be one of {', '.join(DENOMINATORS)}"),
    ("accountant", lambda v: v in ACCOUNTANTS, f"must be one of {', '.join(ACCOUNTANTS)}"),
    ("record_sampling", lambda v: v in ("shuffle", "poisson"), "must be shuffle or poisson"),
    ("dp_seed", lambda v: 0 <= v < np.inf, "must be a finite number >= 0"),
    ("hidden", lambda v: all(1 <= w <= MAX_WIDTH for w in v), f"widths must be in 1..{MAX_WIDTH}"),
    ("momentum", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("local_test_fraction", lambda v: 0 <= v < 1, "must be a fraction in [0, 1)"),
    ("attackers", lambda v: 0 <= v < 1, "must be a fraction in [0, 1)"),
    ("attack_window", lambda v: len(v) == 2 and 1 <= v[0] <= v[1], "must be [a, b], 1 <= a <= b"),
    ("attack", lambda v: v in ATTACKS, f"must be one of {', '.join(sorted(ATTACKS))}"),
    ("defence", lambda v: v in DEFENCES, f"must be one of {', '.join(sorted(DEFENCES))}"),
    ("device", lambda v: re.fullmatch(r"cpu|cuda(:\d+)?", v), "must be cpu, cuda or cuda:N"),
    ("data_root", lambda v: v.strip() != "", "must not be empty (leave it unset)"),
    ("engine", lambda v: v in ENGINES, f"must be one of {', '.join(ENGINES)}"),
    ("ray_address", lambda v: v.strip() != "", "must not be empty (leave it unset)"),
    *(
        (k, _finite_values, "values must be finite numbers, strings, lists or mappings")
        for k in ("algo_params", "attack_params", "defence_params")
    ),
)


# central DP's aggregation settings, meaningless for DP-SGD's clients
CENTRAL_ONLY = (
    "adaptive_clip",
    "clip_quantile",
    "clip_lr",
    "clip_count_noise",
    "per_layer_clip",
    "dp_denominator",
)
DP_FIELDS = (
    "noise_multiplier",
    "target_epsilon",
    "delta",
    "clip",
    "adaptive_clip",
    "clip_quantile",
    "clip_lr",
    "clip_count_noise",
    "per_layer_clip",
    "dp_denominator",
    "accountant",
    "dp_seed",
)


COMPRESS_FIELDS = ("compress", "compress_ratio", "compress_levels", "error_feedback", "ef_momentum")


@functools.cache
def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(RunConfig)}


@functools.cache
def _kinds() -> dict[str, hints.Kind]:
    return {k: hints.kind_of(h) for k, h in typing.get_type_hints(RunConfig).items()}


def _checked(key: str, value: Any, kind: hints.Kind) -> Any:
    """`value` if it has the field's type (floats given as ints become floats), else a
    ValueError naming the key: a bool is no int, a string no number, a list no scalar."""
    if not hints.fits(value, kind):
        raise ValueError(f"config key {key}: expected {hints.name(kind)}, got {_shown(value)}")
    if isinstance(value, list):
        return [_number(key, v, kind.elem) for v in value]
    return _number(key, value, kind.elem)


def _shown(value: Any) -> str:
    """A value as an error message quotes it: short, even for a YAML bomb."""
    r = reprlib.Repr()  # Python 3.10 has no keyword arguments here
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother, r.maxlong = 3, 4, 4, 40, 40, 24
    return r.repr(value)


def _number(key: str, value: Any, elem: type | None) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    if elem is float:  # an int a float cannot hold exactly would change silently
        if abs(value) > 2**1023 or float(value) != value:
            raise ValueError(
                f"config key {key}: the integer {_shown(value)} has no exact float value; "
                "write it as a float (e.g. 1.0e+30)"
            )
        return float(value)
    if not -INT_LIMIT <= value < INT_LIMIT:
        raise ValueError(f"config key {key}: {_shown(value)} does not fit in 64 bits")
    return value


@dataclass
class RunConfig:
    """One experiment. Field names are the YAML keys and (with - for _) the CLI flags of
    `privlearn fl run`, which are derived from these fields and their help."""

    # data
    dataset: str = _opt("digits", f"dataset: {', '.join(DATASETS)}")
    partition: str = _opt(
        "label-dirichlet",
        f"client split: {', '.join(SCHEMES)}, noise (homo + feature noise) "
        "or natural (the dataset's own users)",
    )
    n_clients: int = _opt(10, "number of clients N")
    beta: float = _opt(0.5, "Dirichlet concentration (label-/quantity-dirichlet)")
    classes_per_client: int = _opt(2, "classes per client for label-quantity (#C=k)")
    noise: float = _opt(0.0, "feature-noise sigma (client i: sigma*i/(N-1))")
    noise_mode: str = _opt(
        "fixed",
        "fixed: noise drawn once, clean test set; per-round: redrawn each round, tested on "
        "noisy copies (NIID-Bench)",
    )
    local_test_fraction: float | None = _opt(
        None,
        "share of each client's rows held out for personalised evaluation",
        unset="0.2 for personalised algorithms, else 0",
    )
    data_root: str | None = _opt(
        None,
        "folder with MNIST/FMNIST/CIFAR-10 files (nothing is downloaded; CIFAR-10's are "
        "pickles, read admitting arrays only)",
        unset="none",
    )
    synthetic_alpha: float = _opt(1.0, "alpha of the FedProx/LEAF synthetic generators")
    synthetic_beta: float = _opt(1.0, "beta of the FedProx/LEAF synthetic generators")
    synthetic_iid: bool = _opt(False, "FedProx synthetic: IID users (Synthetic-IID)")
    min_client_size: int = _opt(10, "label-dirichlet redraws until every client has this many")
    partition_max_tries: int = _opt(10_000, "Dirichlet partitions' redraws before giving up")
    # model
    model: str = _opt("auto", "auto (CNN for images, else mclr), mclr, mlp, mlp-bn, cnn, cnn-bn")
    hidden: list[int] = _opt([200, 200], "hidden layer widths of mlp / mlp-bn")
    # rounds and sampling
    rounds: int = _opt(20, "communication rounds")
    sampling: str = _opt("uniform", "client sampling: uniform, poisson or all")
    clients_per_round: int | None = _opt(
        None,
        "clients per round (uniform sampling), at most n_clients",
        unset="10, or n_clients if fewer",
    )
    sample_rate: float = _opt(0.1, "inclusion probability per client (poisson sampling)")
    # local work
    epochs: int = _opt(10, "local epochs per round")
    epochs_range: list[int] | None = _opt(
        None, "a,b: local epochs drawn from U{a..b} per client", unset="--epochs for all"
    )
    batch_size: int = _opt(32, "local batch size")
    drop_last: bool = _opt(
        False,
        "skip each epoch's short last batch (advised with batch norm: tiny batches "
        "make it amplify rounding)",
    )
    lr: float = _opt(0.1, "client learning rate")
    momentum: float = _opt(0.0, "client SGD momentum")
    weight_decay: float = _opt(0.0, "client SGD weight decay")
    stragglers: float = _opt(0.0, "fraction of each cohort that straggles")
    straggler_policy: str = _opt("drop", "stragglers are dropped (drop) or send partial work")
    # algorithm and its hyper-parameters (e.g. {"mu": 0.01} for fedprox)
    algorithm: str = _opt("fedavg", f"algorithm: {', '.join(ALGORITHMS)}")
    algo_params: dict[str, Any] = _opt({}, "the algorithm's hyper-parameters, e.g. mu=0.01")
    # threat model (privlearn.fl.robust)
    attack: str | None = _opt(
        None, f"attack the attackers run: {', '.join(sorted(ATTACKS))}", unset="none"
    )
    attackers: float = _opt(
        0.0,
        "fraction of clients the attacker controls (fixed by seed, in every cohort they "
        "are sampled into)",
    )
    attack_params: dict[str, Any] = _opt({}, "the attack's parameters, e.g. target=7")
    attack_window: list[int] | None = _opt(
        None, "a,b: attackers act in rounds a..b only", unset="every round"
    )
    defence: str | None = _opt(None, f"server defence: {', '.join(sorted(DEFENCES))}", unset="none")
    defence_params: dict[str, Any] = _opt({}, "the defence's parameters, e.g. beta=0.1")
    defence_f: int | None = _opt(
        None,
        "attackers per cohort the defence assumes (Krum's f)",
        unset="the true count in each cohort",
    )
    root_size: int = _opt(
        100, "test samples set aside as the server's clean root set (defences that use one)"
    )
    # secure aggregation (privlearn.fl.privacy.secagg; docs/secagg.md)
    secure_aggregation: str | None = _opt(
        None,
        f"the server sees only the sum of the updates: {', '.join(PROTOCOLS)}",
        unset="none",
    )
    secagg_dropout: float = _opt(
        0.0, "secure aggregation: share of each cohort that drops out mid-protocol (simulated)"
    )
    # differential privacy (privlearn.fl.privacy; docs/privacy.md)
    dp: str | None = _opt(
        None, "differential privacy: central (user-level DP-FedAvg) or local", unset="none"
    )
    noise_multiplier: float | None = _opt(
        None,
        "DP noise standard deviation over the clip (z)",
        unset="calibrated to --target-epsilon over --rounds",
    )
    target_epsilon: float | None = _opt(
        None,
        "DP budget: calibrates the noise, or (with --noise-multiplier) stops training before "
        "a round would exceed it",
        unset="none",
    )
    delta: float | None = _opt(None, "DP delta", unset="1/N^1.1 for N clients")
    clip: float | None = _opt(
        None, "DP clip norm of each client's update", unset="1.0, or 0.1 initially if adaptive"
    )
    adaptive_clip: bool = _opt(False, "adapt the clip to a quantile of the update norms")
    clip_quantile: float = _opt(0.5, "adaptive clip: target quantile gamma of the norms")
    clip_lr: float = _opt(0.2, "adaptive clip: learning rate eta of the geometric update")
    clip_count_noise: float | None = _opt(
        None, "adaptive clip: noise sigma_b on the below-clip count", unset="expected cohort / 20"
    )
    per_layer_clip: bool = _opt(False, "DP: clip each layer to clip/sqrt(layers)")
    dp_denominator: str = _opt(
        "fixed", "DP mean's denominator: fixed (expected cohort) or clipped (max(count, it))"
    )
    accountant: str = _opt("rdp", "DP accountant: rdp or pld (pld needs poisson or all sampling)")
    record_sampling: str | None = _opt(
        None,
        "local batches: shuffle (a permutation per epoch) or poisson (each record enters each "
        "step with probability B/n, as DP-SGD's accountant assumes)",
        unset="poisson with --dp local, else shuffle",
    )
    dp_seed: int | None = _opt(
        None, "seed of the DP noise (repeatable runs, NOT private)", unset="OS entropy"
    )
    # compressed uploads (privlearn.fl.compress; docs/compression.md)
    compress: str | None = _opt(
        None, f"compress each client's model delta: {', '.join(METHODS)}", unset="none"
    )
    compress_ratio: float | None = _opt(
        None, "topk / randk: share of the coordinates sent", unset=str(DEFAULT_RATIO)
    )
    compress_levels: int | None = _opt(
        None,
        "qsgd: quantisation levels s; dadaquant: the levels it starts from (doubled when the "
        "training loss plateaus)",
        unset=", ".join(f"{k} {v}" for k, v in DEFAULT_LEVELS.items()),
    )
    error_feedback: str | None = _opt(
        None, f"error feedback of topk / randk: {', '.join(FEEDBACK)}", unset="none"
    )
    ef_momentum: float | None = _opt(None, "EF21-SGDM's momentum eta", unset=str(DEFAULT_MOMENTUM))
    # execution
    engine: str = _opt(
        "vectorised", "vectorised (clients stacked), sequential, or ray (vectorised shards)"
    )
    device: str = _opt("cpu", "cpu or cuda")
    chunk_size: int | None = _opt(
        None, "most clients stacked at once (vectorised)", unset="the whole cohort"
    )
    compile: bool = _opt(False, "torch.compile the local step (vectorised)")
    flower_timeout: float = _opt(
        120.0,
        "Flower deployment: seconds the server waits for the nodes to join and for each "
        "round's replies (a node that has not replied is left out of that round)",
    )
    closed_form: bool = _opt(
        False, "mclr only: the loss gradient written out, no autograd (float-tolerance equal)"
    )
    threads: int | None = _opt(
        None, "torch and BLAS threads; 1 is fastest on small, shared CPUs", unset="torch's"
    )
    ray_workers: int | None = _opt(
        None, "Ray workers, one shard of each cohort each (ray)", unset="the cluster's CPUs"
    )
    ray_address: str | None = _opt(
        None,
        "an existing Ray cluster: host:port, ray://host:port or auto (ray)",
        unset="a local cluster",
    )
    seed: int = _opt(0, "seed of the partition, the model and every round's draws")
    eval_every: int = _opt(1, "evaluate every this many rounds (and after the last)")
    out: str = _opt("results/fl-run", "output folder (metrics.json, metrics.png, checkpoint)")

    def __post_init__(self) -> None:
        """Types, then ranges, checked in one place for YAML, flags and Python alike (NaN
        fails every range)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked(f.name, getattr(self, f.name), _kinds()[f.name]))
        for key, ok, accepted in _RANGES:
            value = getattr(self, key)
            if value is not None and not ok(value):
                raise ValueError(f"config key {key}: {accepted}, got {_shown(value)}")
        try:  # the sampling and local-work fields: the plan's own checks name them
            self.sampling_spec(), self.work()
        except ValueError as e:
            raise ValueError(f"config key {e}") from None
        if self.clients_per_round is not None and self.clients_per_round > self.n_clients:
            raise ValueError(
                f"config key clients_per_round: {self.clients_per_round} is more than the "
                f"{self.n_clients} clients (n_clients)"
            )
        active = round(self.cohort_size * (1 - self.stragglers))
        if (self.attack is None) != (self.attackers == 0):
            raise ValueError(
                "config keys attack and attackers go together: name an attack and give "
                f"attackers a fraction in (0, 1) (got attack={self.attack!r}, "
                f"attackers={self.attackers})"
            )
        self._check_dp()
        self._check_secure()
        self._check_ray()
        self._check_compress()
        if self.sampling == "uniform" and self.straggler_policy == "drop" and active < 1:
            raise ValueError(
                f"config key stragglers: {self.stragglers} drops every one of the "
                f"{self.cohort_size} clients a round; lower it"
            )

    def _check_dp(self) -> None:
        """The DP fields: only with --dp, and a mechanism that can be built and accounted."""
        given = [k for k in DP_FIELDS if getattr(self, k) != _defaults()[k]]
        if self.dp is None:
            if given:
                raise ValueError(
                    f"config keys {', '.join(given)} are DP settings: give them with --dp "
                    "central or --dp local"
                )
            return
        if self.dp == "local":
            central_only = [k for k in given if k in CENTRAL_ONLY]
            if central_only:
                raise ValueError(
                    f"config keys {', '.join(central_only)} set central DP's aggregation; "
                    "--dp local clips and noises each client's gradients (--clip, "
                    "--noise-multiplier)"
                )
            if self.closed_form:
                raise ValueError(
                    "config key closed_form: --dp local clips per-sample gradients, which "
                    "autograd computes; turn closed_form off"
                )
            if self.compile:
                raise ValueError(
                    "config key compile: the compiled engine skips empty batches, which "
                    "DP-SGD's Poisson batches may be and must still noise; run --dp local eagerly"
                )
            return
        if self.defence is not None:
            raise ValueError(
                "config key defence: a defence reads every client's raw update before the DP "
                "reduction, outside the mechanism's bound; run --dp central without --defence"
            )
        problem = dp_problem(self.algorithm, self.model in ("mlp-bn", "cnn-bn"))
        if problem is None and not takes_reducer(self.algorithm):
            problem = f"--dp central needs an algorithm with a reducer; {self.algorithm} has none"
        if problem:
            raise ValueError(f"config key algorithm: {problem}")
        if self.accountant == "pld" and self.sampling == "uniform":
            raise ValueError(
                "config key accountant: the PLD accountant does not support uniform sampling "
                "(a fixed cohort without replacement); use --accountant rdp or --sampling poisson"
            )

    def _check_secure(self) -> None:
        """Secure aggregation needs no per-update defence (and, checked when the algorithm is
        built, a server step from sums)."""
        if self.secure_aggregation is None:
            if self.secagg_dropout:
                raise ValueError("config key secagg_dropout: give it with --secure-aggregation")
            return
        if self.defence is not None:
            raise ValueError(
                f"config key defence: {self.defence} inspects each client's update, which "
                "secure aggregation hides from the server; run one or the other"
            )

    def _check_ray(self) -> None:
        """The Ray fields only with the ray engine, whose workers compute on CPU."""
        if self.engine != "ray":
            given = [k for k in ("ray_workers", "ray_address") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"config keys {', '.join(given)} apply to --engine ray only")
        elif self.device != "cpu":
            raise ValueError(
                f"config key device: the ray engine's workers compute on CPU, got {self.device!r}"
            )

    def _check_compress(self) -> None:
        """Compression's settings agree, and it meets neither secure aggregation (which hides
        the per-client payloads the server decodes) nor batch norm (uploaded uncompressed)."""
        problem = compression_problem(*(getattr(self, k) for k in COMPRESS_FIELDS))
        if problem:
            raise ValueError(problem)
        if self.compress is None:
            return
        if self.secure_aggregation is not None:
            raise ValueError(f"config key compress: {REFUSE_COMPRESSED}")
        if self.model in ("mlp-bn", "cnn-bn"):
            raise ValueError(
                f"config key compress: {self.model} uploads batch-norm statistics beside the "
                "delta, which compression leaves raw; use a model without batch norm"
            )

    def compressor(self) -> Compressor | None:
        if self.compress is None:
            return None
        return Compressor(
            self.compress,
            self.compress_ratio,
            self.compress_levels,
            self.error_feedback,
            self.ef_momentum,
            self.seed,
        )

    def participation(self) -> Participation:
        """How one client enters a round, for the accountant."""
        return participation(self.sampling, self.n_clients, self.cohort_size, self.sample_rate)

    def central_dp(self, noise_multiplier: float) -> CentralDP:
        """The central-DP mechanism at `noise_multiplier` (z, from budget())."""
        clip = self.clip if self.clip is not None else (0.1 if self.adaptive_clip else 1.0)
        return CentralDP(
            noise_multiplier,
            clip,
            expected_clients(self.participation(), self.n_clients),
            self.per_layer_clip,
            self.dp_denominator,
            self.clip_quantile if self.adaptive_clip else None,
            self.clip_lr,
            self.clip_count_noise,
        )

    def budget(self, client_sizes: list[int] | None = None) -> Budget:
        """The run's privacy budget (calibrates the noise when no multiplier is given): over
        clients under central DP, over each client's records (`client_sizes`) under local DP."""
        if self.dp == "local":
            units = local_dp.units(client_sizes, self.work())
            n_units = max(client_sizes)
        else:
            units, n_units = [(self.participation(), 1)], self.n_clients
        delta = default_delta(n_units) if self.delta is None else self.delta
        return plan_budget(
            self.noise_multiplier, self.target_epsilon, delta, units, self.accountant, self.rounds
        )

    def local_dp(self, noise_multiplier: float) -> local_dp.LocalDP:
        """DP-SGD's settings at `noise_multiplier` (z, from budget())."""
        clip = 1.0 if self.clip is None else self.clip
        return local_dp.LocalDP(clip, noise_multiplier, self.dp_seed)

    @property
    def cohort_size(self) -> int:
        """Clients a round under uniform sampling (clients_per_round, or up to 10 if unset)."""
        return min(10, self.n_clients) if self.clients_per_round is None else self.clients_per_round

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            near = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
            hints = [f"{k!r}: did you mean {m[0]!r}?" for k, m in near.items() if m]
            raise ValueError(
                f"unknown config keys {unknown}"
                + (f" ({'; '.join(hints)})" if hints else "")
                + "; `privlearn fl run --help` lists every key (as --flags)"
            )
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        import yaml

        from privlearn.fl.yaml_numbers import safe_load

        try:
            data = safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValueError(
                f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})"
            ) from None
        except RecursionError:
            raise ValueError(f"{path}: not a config (nested too deeply to read)") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: expected a mapping of config keys, got {type(data).__name__}"
            )
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def data_spec(self) -> DataSpec:
        frac = self.local_test_fraction
        if frac is None:
            frac = 0.2 if self.algorithm in PERSONALISED else 0.0
        return DataSpec(
            self.dataset,
            self.n_clients,
            self.partition,
            self.beta,
            self.classes_per_client,
            self.noise,
            frac,
            self.data_root,
            self.synthetic_alpha,
            self.synthetic_beta,
            self.synthetic_iid,
            self.min_client_size,
            self.partition_max_tries,
            self.noise_mode,
        )

    def sampling_spec(self) -> Sampling:
        return Sampling(self.sampling, self.cohort_size, self.sample_rate)

    def work(self) -> LocalWork:
        er = None if self.epochs_range is None else tuple(self.epochs_range)
        sampler = self.record_sampling or ("poisson" if self.dp == "local" else "shuffle")
        return LocalWork(
            self.epochs,
            self.batch_size,
            er,
            self.stragglers,
            self.straggler_policy,
            self.drop_last,
            sampler,
        )


@dataclass
class Experiment:
    """Everything a run is made of, built from a config (also used by the benchmarks)."""

    cfg: RunConfig
    data: Any
    model: Any
    algo: Any
    engine: Any
    scenario: Any = None  # privlearn.fl.robust.Scenario when attacked or defended
    budget: Budget | None = None  # the privacy budget, with --dp
    mechanism: CentralDP | None = None  # with --dp central
    secure: SecureRound | None = None  # with --secure-aggregation
    compression: Compression | None = None  # with --compress (its state: init_state)

    @classmethod
    def build(cls, cfg: RunConfig) -> Experiment:
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(
                f"device {cfg.device!r} requested but CUDA is not available; use --device cpu"
            )
        if cfg.threads is not None:
            set_threads(cfg.threads)
        budget = mechanism = None
        if cfg.dp == "central":  # calibrated and checked before any data is built
            budget = cfg.budget()
            try:
                mechanism = cfg.central_dp(budget.noise_multiplier)
            except ValueError as e:
                raise ValueError(f"config key {e}") from None
        data = build_federated(cfg.data_spec(), cfg.seed).to(cfg.device)
        model = build_model(cfg.model, data.input_shape, data.n_classes, cfg.hidden)
        if cfg.closed_form:
            try:
                model = with_closed_form(model)
            except ValueError as e:
                raise ValueError(f"config key closed_form: {e}") from None
        algo = build_algorithm(
            cfg.algorithm,
            model,
            LocalSGD(cfg.lr, cfg.momentum, cfg.weight_decay),
            n_clients=cfg.n_clients,
            batch_size=cfg.batch_size,
            reducer=None if mechanism is None else dp_mean(mechanism, cfg.dp_seed),
            **cfg.algo_params,
        )
        if cfg.dp == "local":  # the budget needs the clients' sizes, the refusals the model
            sizes = [len(c) for c in data.clients]
            budget = cfg.budget(sizes)
            try:
                algo = local_dp.private(
                    algo, model, cfg.local_dp(budget.noise_multiplier), cfg.work()
                )
            except ValueError as e:
                raise ValueError(f"config key dp: {e}") from None
        data, scenario = build_scenario(cfg, data, model, algo)
        secure = None
        if cfg.secure_aggregation is not None:
            secure = SecureRound(
                make_aggregator(cfg.secure_aggregation), cfg.secagg_dropout, cfg.seed
            )
            try:
                refuse_secure(algo, scenario)
            except ValueError as e:
                raise ValueError(f"config key secure_aggregation: {e}") from None
        compressor = cfg.compressor()
        compression = None
        if compressor is not None:
            dtype = next(iter(model.init(torch.Generator())[0].values())).dtype
            compression = Compression(
                compressor, cfg.n_clients, model.n_params(), dtype, cfg.device
            )
        # last: every check has passed before an engine starts processes (ray)
        engine = make_engine(
            cfg.engine,
            cfg.chunk_size,
            cfg.compile,
            ray_workers=cfg.ray_workers,
            ray_address=cfg.ray_address,
            threads=cfg.threads,
        )
        return cls(cfg, data, model, algo, engine, scenario, budget, mechanism, secure, compression)

    def close(self) -> None:
        """Stop what the engine started (the ray engine's workers and cluster)."""
        if hasattr(self.engine, "close"):
            self.engine.close()

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def privacy(self) -> dict | None:
        """What the run's guarantee is, for the metrics document's top level."""
        if self.budget is None:
            return None
        b, cfg = self.budget, self.cfg
        out = {
            "dp": cfg.dp,
            "guarantee": (
                "user-level: one client's whole data (neighbours as in sampling)"
                if cfg.dp == "central"
                else "sample-level: one record of a client, against anyone who sees that "
                "client's uploads (the server included); the worst client's epsilon, as if "
                "every client trained every round"
            ),
            "private": cfg.dp_seed is None,
            "noise": "OS entropy"
            if cfg.dp_seed is None
            else (
                f"NOT PRIVATE: seeded with dp_seed {cfg.dp_seed}, predictable by whoever "
                "knows the seed"
            ),
            "accountant": b.accountant,
            "sampling": b.sampling(),
            "delta": b.delta,
            "target_epsilon": b.target_epsilon,
            "noise_multiplier": b.noise_multiplier,
            "noise_multiplier_calibrated": b.calibrated,
        }
        m = self.mechanism
        if m is None:
            out["clip"] = cfg.local_dp(b.noise_multiplier).clip
            out["clip_rule"] = "per sample, flat (all parameters together), as Opacus"
            out["denominator"] = "expected batch size q n = min(B, n)"
        else:
            out.update(
                update_noise_multiplier=m.update_noise_multiplier,
                clip=m.clip,
                clip_rule=(
                    f"adaptive: quantile {m.quantile}, clip_lr {m.clip_lr}, "
                    f"count noise {m.sigma_b:.4g}"
                    if m.adaptive
                    else "fixed"
                )
                + (", per layer (clip/sqrt(layers) each)" if m.per_layer else ", flat"),
                denominator=f"{m.denominator} (expected cohort {m.expected_clients:g})",
                weights="ignored: the DP mean counts each client once (unweighted)",
            )
        out["not_covered"] = list(NOT_COVERED)
        return out

    def secure_summary(self) -> dict:
        """What the server saw under secure aggregation, for the metrics document."""
        return {
            "protocol": self.secure.aggregator.name,
            "server_sees": "the sum of the surviving clients' w delta, w, w buffers, w loss",
            "screening": SCREENING_OFF,
            "simulated_dropout": self.cfg.secagg_dropout,
            "threat_model": "honest-but-curious server colluding with fewer than the "
            "protocol's threshold of clients (docs/secagg.md)",
        }

    def client_epsilons(self, bank: Any) -> dict | None:
        """Under local DP, the worst client's epsilon from the steps clients actually took."""
        if self.cfg.dp != "local":
            return None
        dp, work = self.cfg.local_dp(self.budget.noise_multiplier), self.cfg.work()
        eps, who = local_dp.worst_epsilon(bank, dp, work, self.budget.delta, self.cfg.accountant)
        return {"worst_client_epsilon": eps, "worst_client": who}

    def init_state(self) -> tuple[dict, Any]:
        """The run's initial server state and client bank (and a fresh compressor state)."""
        server, bank = init_federation(
            self.algo, self.model, self.cfg.n_clients, self.cfg.seed, self.cfg.device
        )
        if self.compression is not None:
            self.compression.reset()
        if self.cfg.dp == "local":
            local_dp.seed_noise(bank, self.cfg.local_dp(self.budget.noise_multiplier))
        return server, bank

    def round(self, server: dict, bank: Any, r: int):
        """Plan and run round r (0-based)."""
        plan = plan_round(
            self.data.clients,
            self.cfg.sampling_spec(),
            self.cfg.work(),
            self.cfg.seed,
            r,
            self.algo.batches_per_step,
        ).to(self.cfg.device)
        server, stats = run_round(
            self.algo,
            self.engine,
            server,
            bank,
            plan,
            TrainData(self.data.round_features(r), self.data.y_train),
            server_rng(self.cfg.seed, r),
            self.scenario,
            r,
            self.secure,
            self.compression,
        )
        return server, stats, plan

    def evaluate(self, server: dict, bank: Any) -> dict:
        g = global_accuracy(self.algo, self.model, server, self.data)
        p = personal_accuracy(self.algo, self.model, server, bank, self.data, self.cfg.batch_size)
        out = {
            "test_acc": None if g is None else g[0],
            "test_loss": None if g is None else g[1],
            "personal_acc": p,
        }
        if self.scenario is not None and self.scenario.attack is not None:
            out["backdoor_acc"] = backdoor_accuracy(self, server)
        return out


CHECKPOINT_MAGIC = b"PLFLCKPT1"  # then the payload's SHA-256 (32 bytes), then torch.save's bytes


def _atomic_save(obj: Any, path: Path) -> None:
    """Write a checkpoint with its SHA-256, atomically (a reader sees the old or the new)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(CHECKPOINT_MAGIC + hashlib.sha256(payload).digest() + payload)
    os.replace(tmp, path)


def set_threads(n: int) -> None:
    """Torch and BLAS thread counts change float32 reduction order, so a run repeats bit for bit
    only at the thread count it started with."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


def load_checkpoint(path: str | Path, device: str = "cpu") -> dict:
    """Read a checkpoint without running code, and only one that is whole and consistent: its
    SHA-256 catches corruption (bit flips resumed silently to another model), `weights_only`
    admits tensors and plain containers only (a crafted pickle ran a shell command), and its
    config, round, history and client bank must agree (resuming also checks the states
    against what the config builds).

    The checksum is no signature: whoever can write the run folder can re-sign a changed
    checkpoint, and values changed within their types, shapes and ranges (a bit flipped in a
    weight) resume undetected. Keep run folders as private as the data."""
    data = Path(path).read_bytes()
    n = len(CHECKPOINT_MAGIC)
    if not data.startswith(CHECKPOINT_MAGIC):
        raise ValueError(f"{path} is not a privlearn checkpoint (or one from an older version)")
    digest, payload = data[n : n + 32], data[n + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError(f"{path} fails its SHA-256 check: the checkpoint is corrupt")
    try:
        ckpt = torch.load(io.BytesIO(payload), map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(
            f"{path} is not a privlearn checkpoint of plain tensors and containers; refusing to "
            f"load it ({first})"
        ) from None
    except Exception as e:  # a payload re-signed after corruption: torch's reader gives up
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise ValueError(f"{path} is not a readable checkpoint ({first})") from None
    problem = _inconsistency(ckpt)
    if problem:
        raise ValueError(f"{path} is inconsistent: {problem}")
    return ckpt


def _inconsistency(ckpt: Any) -> str | None:
    """What in a (checksummed, so self-written or re-signed) checkpoint contradicts itself."""
    keys = {"config", "round", "threads", "server", "bank", "rounds", "defence"}
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    if isinstance(config, dict) and config.get("compress") is not None:
        keys.add("compress")  # the compressor's memory
    if not isinstance(ckpt, dict) or set(ckpt) != keys:
        return f"expected the fields {sorted(keys)}"
    cfg, r, history = ckpt["config"], ckpt["round"], ckpt["rounds"]
    if not isinstance(cfg, dict) or type(r) is not int or not isinstance(history, list):
        return "config, round or rounds has the wrong type"
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    if set(cfg) != fields:
        return f"config keys {sorted(map(str, set(cfg) ^ fields))} missing or unknown"
    try:
        RunConfig.from_dict(cfg)
    except ValueError as e:
        return str(e)
    if not 1 <= r <= cfg["rounds"] or len(history) != r:
        return f"round {r} of {cfg['rounds']} with {len(history)} rounds of history"
    for i, entry in enumerate(history):
        problem = _entry_problem(entry, i + 1)
        if problem is None and ("epsilon" in entry) != (cfg["dp"] is not None):
            problem = "epsilon where no DP ran" if "epsilon" in entry else "no epsilon under DP"
        if problem:
            return f"rounds[{i}]: {problem}"
    rows = {leaf.shape[0] for leaf in T.leaves(ckpt["bank"]) if isinstance(leaf, torch.Tensor)}
    if rows and rows != {cfg.get("n_clients")}:
        return f"a client bank of {sorted(rows)} rows for {cfg.get('n_clients')} clients"
    return None


_NUMBERS = ("clients", "train_loss", "seconds", "dropped_stragglers", "partial_stragglers")
_EVALUATION = ("test_acc", "test_loss", "personal_acc", "eval_seconds")  # written together


def _entry_problem(entry: Any, round_no: int) -> str | None:
    """Why a metrics entry of a checkpoint's history is not one `_run` wrote for that round."""
    if not isinstance(entry, dict) or not all(isinstance(k, str) for k in entry):
        return "not a mapping of names"
    if type(entry.get("round")) is not int or entry["round"] != round_no:
        return f"round {entry.get('round')!r} where {round_no} belongs"
    missing = [k for k in ("rejected", *_NUMBERS) if k not in entry]
    evaluated = [k for k in _EVALUATION if k in entry]
    if missing or evaluated and len(evaluated) != len(_EVALUATION):
        return f"fields missing ({', '.join(missing) or set(_EVALUATION) - set(evaluated)})"
    optional = [k for k in ("backdoor_acc", "epsilon") if k in entry]
    for key in (*_NUMBERS, *evaluated, *optional):
        v = entry[key]
        if v is not None and (type(v) not in (int, float) or not math.isfinite(v)):
            return f"{key} is {_shown(v)}, not a finite number"
        low, high = (0, 1) if key.endswith("_acc") else (0, math.inf)
        if v is not None and "loss" not in key and not low <= v <= high:
            return f"{key} is {v}, outside [{low}, {high}]"  # accuracies, counts and seconds
    if not _plain(entry):
        return "holds something other than numbers, strings, lists and mappings"
    return None


def _plain(v: Any) -> bool:
    """JSON's values: what a metrics entry holds."""
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    if isinstance(v, list):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, (bool, int, float, str))


def _state_mismatch(saved: Any, fresh: Any, name: str) -> str | None:
    """Where a checkpoint's server state or client bank differs from the fresh one the config
    builds, in structure, shape or dtype, or holds values no round can produce."""
    try:
        got, got_spec = pytree.tree_flatten(saved)
    except Exception:  # noqa: BLE001 - a structure pytree cannot walk is just wrong
        return f"{name} is not a tree of tensors"
    want, want_spec = pytree.tree_flatten(fresh)
    if got_spec != want_spec:
        return f"{name} has other fields than this config's {name}"
    paths = [pytree.keystr(p) for p, _ in pytree.tree_flatten_with_path(fresh)[0]]
    for path, g, w in zip(paths, got, want, strict=True):
        if not isinstance(g, torch.Tensor) or g.shape != w.shape or g.dtype != w.dtype:
            what = f"{g.dtype} {tuple(g.shape)}" if isinstance(g, torch.Tensor) else _shown(g)
            return f"{name}{path} is {what}, expected {w.dtype} {tuple(w.shape)}"
        if g.is_floating_point() and not (g.abs() <= magnitude_limit(g.dtype)).all():
            return f"{name}{path} holds NaN, Inf or values beyond ±{magnitude_limit(g.dtype):.2g}"
    return None


def _write_json(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def plot_metrics(rounds: list[dict], path: Path, title: str) -> Path:
    """Accuracy (global and personal) and training loss per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (
        ("test_acc", "global model, pooled test set"),
        ("personal_acc", "personal models, own test rows"),
        ("backdoor_acc", "attack success (backdoor accuracy)"),
    ):
        pts = [(m["round"], m[key]) for m in rounds if m.get(key) is not None]
        if pts:
            a1.plot(*zip(*pts, strict=False), marker=".", label=label)
    a1.set_xlabel("round")
    a1.set_ylabel("test accuracy")
    a1.set_ylim(0, 1)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    pts = [(m["round"], m["train_loss"]) for m in rounds if m.get("train_loss") is not None]
    if pts:
        a2.plot(*zip(*pts, strict=False), marker=".", color="C3")
    a2.set_xlabel("round")
    a2.set_ylabel("mean local training loss")
    a2.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _check_resume(saved: dict, cfg: RunConfig) -> None:
    now = asdict(cfg)
    diff = {k: (saved[k], now[k]) for k in now if k not in RESUMABLE and saved.get(k) != now[k]}
    if diff:
        shown = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"cannot resume with a different config ({shown}). Only "
            f"{', '.join(RESUMABLE)} may change; start a new --out instead"
        )


def run_experiment(
    cfg: RunConfig, resume: bool = False, console: Console | None = None, progress: bool = True
) -> dict:
    """Run (or resume) an experiment; returns the metrics document also written to JSON."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out), contextlib.ExitStack() as stack:
        return _run(cfg, resume, console or Console(), progress, stack)


@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold ``out`` for one run: two runs (or a resume during a run) on one folder each
    "completed" while the last writer silently won. The lock goes with the process."""
    with open(out / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(
                f"{out} is in use by another privlearn run; wait for it or choose another --out"
            ) from None
        yield


def _run(
    cfg: RunConfig, resume: bool, console: Console, progress: bool, stack: contextlib.ExitStack
) -> dict:
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise FileExistsError(
            f"{out} already holds a checkpoint; pass --resume to continue it "
            "or choose another --out"
        )
    if resume and not ckpt_path.exists():
        raise FileNotFoundError(f"nothing to resume: {ckpt_path} does not exist")
    exp = stack.enter_context(Experiment.build(cfg))  # closed when the run ends, or fails
    counts = label_counts(exp.data.y_train.cpu().numpy(), exp.data.clients, exp.data.n_classes)
    doc = {
        "config": asdict(cfg),
        "status": "running",
        "dataset": {
            "name": exp.data.name,
            "n_train": int(len(exp.data.y_train)),
            "n_test": int(len(exp.data.y_test)),
            "heterogeneity": summary(counts),
        },
        "model": {"name": exp.model.name, "n_params": exp.model.n_params()},
        "algorithm": exp.algo.name,
        **({"privacy": exp.privacy()} if exp.budget is not None else {}),
        **({"secure_aggregation": exp.secure_summary()} if exp.secure is not None else {}),
        "rounds": [],
    }
    if resume:
        ckpt = load_checkpoint(ckpt_path, cfg.device)
        _check_resume(ckpt["config"], cfg)
        fresh_server, fresh_bank = exp.init_state()
        states = [("server", fresh_server), ("bank", fresh_bank)]
        if exp.compression is not None:
            states.append(("compress", exp.compression.state))
        for name, fresh in states:
            problem = _state_mismatch(ckpt[name], fresh, name)
            if problem:
                raise ValueError(f"{ckpt_path} is inconsistent: {problem}")
        saved_threads = ckpt.get("threads")
        if saved_threads is not None and cfg.threads is None:
            set_threads(saved_threads)
        elif saved_threads is not None and cfg.threads != saved_threads:
            console.print(
                f"[yellow]warning: resuming with {cfg.threads} threads, the run started with "
                f"{saved_threads}; rounds after {ckpt['round']} may differ in the last digits[/]"
            )
        server, bank, doc["rounds"], start = (
            ckpt["server"],
            ckpt["bank"],
            ckpt["rounds"],
            ckpt["round"],
        )
        if exp.scenario is not None:
            exp.scenario.state = ckpt["defence"]
        if exp.compression is not None:
            exp.compression.state = ckpt["compress"]
        console.print(f"resuming {out} after round {start}")
    else:
        server, bank = exp.init_state()
        start = 0
        plot_heatmap(
            counts, out / PARTITION_PLOT, f"{cfg.dataset} / {cfg.partition}: label share per client"
        )
    title = f"{cfg.algorithm} on {cfg.dataset} ({cfg.partition}, {cfg.n_clients} clients)"
    if exp.budget is not None:
        b = exp.budget
        console.print(
            f"{cfg.dp} DP: noise multiplier {b.noise_multiplier:.4g}"
            f"{' (calibrated)' if b.calibrated else ''}, delta {b.delta:.3g}, {b.accountant} "
            f"accountant, {b.sampling()}"
        )
        if cfg.dp_seed is not None:
            console.print(
                f"[yellow]warning: dp_seed {cfg.dp_seed} makes the DP noise predictable: this run "
                "is NOT private[/]"
            )
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[acc]}"),
        console=console,
        disable=not progress,
    )
    saved = start  # rounds whose checkpoint is on disk
    try:
        with bar, _interrupt_between_rounds(console) as interrupted:
            task = bar.add_task(
                f"{cfg.algorithm} rounds", total=cfg.rounds, completed=start, acc=""
            )
            for r in range(start, cfg.rounds):
                if exp.budget is not None and not exp.budget.allows(r + 1):
                    spent = exp.budget.epsilon(r)
                    console.print(
                        f"[yellow]privacy budget spent: round {r + 1} would take epsilon to "
                        f"{exp.budget.epsilon(r + 1):.4g} > target {cfg.target_epsilon}; stopped "
                        f"after {r} rounds at epsilon {spent:.4g} (delta {exp.budget.delta:.3g})[/]"
                    )
                    doc["status"] = "budget spent"
                    break
                server, stats, plan = exp.round(server, bank, r)
                entry = {
                    "round": r + 1,
                    "clients": len(stats.clients),
                    "train_loss": stats.train_loss,
                    "seconds": round(stats.seconds, 4),
                    "rejected": [str(x) for x in stats.rejected],
                    "skipped": stats.skipped,
                    "dropped_stragglers": len(plan.dropped),
                    "partial_stragglers": len(plan.stragglers),
                    **round_report(exp.scenario, stats),
                    **({"secure": stats.secure} if stats.secure is not None else {}),
                    **({"upload": stats.upload} if stats.upload is not None else {}),
                }
                if exp.budget is not None:
                    entry["epsilon"] = exp.budget.epsilon(r + 1)
                lost = "not in the secure sum" if stats.secure else "rejected update from"
                for rej in stats.rejected:
                    console.print(f"[yellow]round {r + 1}: {lost} {rej}[/]")
                if stats.skipped:
                    console.print(
                        f"[yellow]round {r + 1} left the model unchanged: {stats.skipped}[/]"
                    )
                if (r + 1) % cfg.eval_every == 0 or r + 1 == cfg.rounds:
                    t0 = time.perf_counter()
                    entry.update(exp.evaluate(server, bank))
                    entry["eval_seconds"] = round(time.perf_counter() - t0, 4)
                doc["rounds"].append(entry)
                _atomic_save(
                    {
                        "config": asdict(cfg),
                        "round": r + 1,
                        "threads": torch.get_num_threads(),
                        "server": server,
                        "bank": bank,
                        "rounds": doc["rounds"],
                        "defence": None if exp.scenario is None else exp.scenario.state,
                        **({"compress": exp.compression.state} if exp.compression else {}),
                    },
                    ckpt_path,
                )
                saved = r + 1
                _write_json(doc, out / METRICS)
                acc = (
                    entry.get("test_acc")
                    if entry.get("test_acc") is not None
                    else entry.get("personal_acc")
                )
                shown = [] if acc is None else [f"acc {acc:.3f}"]
                if "epsilon" in entry:
                    shown.append(f"ε {entry['epsilon']:.3g}")
                bar.update(task, advance=1, acc=" ".join(shown))
                if interrupted():
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        # a round interrupted after its entry but before its checkpoint is not saved: the
        # metrics must not claim it (resuming recomputes it). The checkpoint on disk decides:
        # an interrupt just after its atomic rename comes before ``saved`` is updated
        if ckpt_path.exists():
            saved = max(saved, load_checkpoint(ckpt_path)["round"])
        doc["rounds"] = [e for e in doc["rounds"] if e["round"] <= saved]
        doc["status"] = "interrupted"
        _write_json(doc, out / METRICS)
        if doc["rounds"]:
            plot_metrics(doc["rounds"], out / PLOT, title + " (interrupted)")
        done = doc["rounds"][-1]["round"] if doc["rounds"] else 0
        console.print(
            f"[yellow]interrupted: {done} of {cfg.rounds} rounds are saved in {out}; "
            f"continue with `privlearn fl run --resume {out}`[/]"
        )
        raise
    if doc["status"] == "running":
        doc["status"] = "complete"
    actual = exp.client_epsilons(bank)
    if actual is not None:
        doc["privacy"].update(actual)
    skipped = [e["round"] for e in doc["rounds"] if e.get("skipped")]
    if skipped:
        console.print(
            f"[yellow]warning: {len(skipped)} of {cfg.rounds} rounds applied no update "
            f"(rounds {', '.join(map(str, skipped[:10]))}{' ...' if len(skipped) > 10 else ''}); "
            "see 'skipped' in metrics.json[/]"
        )
    _write_json(doc, out / METRICS)
    plot_metrics(doc["rounds"], out / PLOT, title)
    return doc


@contextlib.contextmanager
def _interrupt_between_rounds(console: Console):
    """Turn the first Ctrl-C into a request honoured after the round's checkpoint.

    A KeyboardInterrupt raised inside torch's function transforms leaves their internal
    stack inconsistent (torch then fails its own assertion instead of unwinding), so the
    first SIGINT only sets a flag; a second one interrupts at once, as Python would.
    """
    requested = []
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield lambda: False  # SIGINT is ignored or owned by someone else: leave it alone
        return

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        console.print("[yellow]stopping after this round; Ctrl-C again to stop now[/]")

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def load_checkpoint_config(out: str | Path) -> RunConfig:
    """The config a checkpointed run was started with (for `--resume DIR`)."""
    path = Path(out) / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    return RunConfig.from_dict(load_checkpoint(path)["config"])


def summarise(doc: dict) -> dict:
    """Final and best accuracies of a metrics document."""
    rounds = doc["rounds"]
    out = {}
    for key in ("test_acc", "personal_acc", "backdoor_acc"):
        vals = [m[key] for m in rounds if m.get(key) is not None]
        if vals:
            out[f"final_{key}"] = vals[-1]
            out[f"best_{key}"] = float(np.max(vals))
    out["seconds_per_round"] = float(np.mean([m["seconds"] for m in rounds])) if rounds else None
    return out
