"""Who trains in a round and on which samples, drawn once, before any engine runs.

A `RoundPlan` fixes the cohort, each client's amount of local work (epochs, heterogeneous
epochs E ~ U{a..b}, stragglers) and its shuffled sample order for every epoch. Engines only
read it, so the vectorised engine and the sequential reference see identical batches; that
is what makes their results comparable to float tolerance.

Client i's step t reads its epoch e = t // nb_i, batch b = t % nb_i: samples
order[base_i + e n_i + b B : ... + B], cut at the end of the epoch (the last batch of an
epoch is short, as a PyTorch DataLoader without drop_last makes it; with `drop_last` the
epoch's rows past its last full batch are skipped, as DataLoader(drop_last=True) does).

With the `poisson` sampler (record-level Poisson sampling, which DP-SGD's accountant
assumes) each of client i's n_i records enters each step independently with probability
q_i = min(1, B / n_i), for the same nb_i steps per epoch; batches then vary in size and are
padded to the largest batch drawn in the cohort this round, so no draw is ever cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MAX_EPOCHS = 1_000  # a plan holds every epoch's sample order: beyond this it never fits


def _refuse(field: str, accepted: str, value) -> None:
    """One message form for a field out of range, naming the field as the config does
    (`RunConfig` relies on these checks and prefixes "config key ")."""
    raise ValueError(f"{field}: {accepted}, got {value!r}")


@dataclass(frozen=True)
class Sampling:
    """Client sampling: `uniform` (a fixed number without replacement), `poisson` (each
    client independently with probability `rate`, the config's sample_rate), or `all`.
    Checks are written so that NaN fails them."""

    kind: str = "uniform"
    clients_per_round: int = 10
    rate: float = 0.1

    def __post_init__(self):
        if self.kind not in ("uniform", "poisson", "all"):
            _refuse("sampling", "must be uniform, poisson or all", self.kind)
        if not self.clients_per_round >= 1:
            _refuse("clients_per_round", "must be >= 1", self.clients_per_round)
        if not 0 < self.rate <= 1:
            _refuse("sample_rate", "must be a fraction in (0, 1]", self.rate)


@dataclass(frozen=True)
class LocalWork:
    """How much each sampled client trains.

    epochs: E local epochs; epochs_range=(a, b) draws E_i ~ U{a..b} per client per round
    (FedNova's heterogeneous work). stragglers: the fraction of the cohort that cannot finish
    (FedProx: round(K (1 - s)) clients stay active); policy `drop` leaves them out of the
    round (FedAvg in the FedProx paper), `partial` keeps their partial work: U{1..E-1}
    epochs, or U{1..nb-1} steps when E = 1. Checks are written so that NaN fails them."""

    epochs: int = 1
    batch_size: int = 10
    epochs_range: tuple[int, int] | None = None
    stragglers: float = 0.0
    straggler_policy: str = "drop"
    drop_last: bool = False
    sampler: str = "shuffle"  # "shuffle" (a permutation per epoch) or "poisson" (see above)

    def __post_init__(self):
        if not 1 <= self.epochs <= MAX_EPOCHS:
            _refuse("epochs", f"must be in 1..{MAX_EPOCHS}", self.epochs)
        if not self.batch_size >= 1:
            _refuse("batch_size", "must be >= 1", self.batch_size)
        er = self.epochs_range
        if er is not None and not (len(er) == 2 and 1 <= er[0] <= er[1] <= MAX_EPOCHS):
            _refuse("epochs_range", f"must be [a, b] with 1 <= a <= b <= {MAX_EPOCHS}", er)
        if not 0 <= self.stragglers < 1:
            _refuse("stragglers", "must be a fraction in [0, 1)", self.stragglers)
        if self.straggler_policy not in ("drop", "partial"):
            _refuse("straggler_policy", "must be drop or partial", self.straggler_policy)
        if self.sampler not in ("shuffle", "poisson"):
            _refuse("sampler", "must be shuffle or poisson", self.sampler)
        if self.sampler == "poisson" and self.drop_last:
            _refuse("drop_last", "has no meaning for Poisson-sampled batches", self.drop_last)


def sample_cohort(n_clients: int, sampling: Sampling, rng: np.random.Generator) -> np.ndarray:
    """Sorted ids of the clients sampled this round (possibly empty under Poisson sampling)."""
    if sampling.kind == "all":
        return np.arange(n_clients)
    if sampling.kind == "poisson":
        return np.flatnonzero(rng.random(n_clients) < sampling.rate)
    if sampling.clients_per_round > n_clients:
        raise ValueError(
            f"clients_per_round={sampling.clients_per_round} exceeds the {n_clients} clients"
        )
    return np.sort(rng.choice(n_clients, sampling.clients_per_round, replace=False))


@dataclass
class RoundPlan:
    clients: torch.Tensor  # [K] global client ids, in plan order
    n: torch.Tensor  # [K] training samples per client
    nb: torch.Tensor  # [K] batches per epoch
    steps: torch.Tensor  # [K] local steps this round
    base: torch.Tensor  # [K] offset of the client's sample order in `order`
    order: torch.Tensor  # [sum_i epochs_i n_i] training-row indices
    batch_size: int  # samples per step (batch size x the algorithm's batches per step)
    stragglers: list[int]  # clients that did partial work
    dropped: list[int]  # clients sampled but left out (stragglers under `drop`)
    # Poisson sampler only (then `order` is empty and batch_size the padded width W):
    drawn: torch.Tensor | None = None  # [K, S, W] training rows of each step, 0-padded
    drawn_len: torch.Tensor | None = None  # [K, S] real rows in each step's batch

    def __len__(self) -> int:
        return len(self.clients)

    def to(self, device: torch.device | str) -> RoundPlan:
        f = lambda t: t.to(device)  # noqa: E731
        return RoundPlan(
            f(self.clients),
            f(self.n),
            f(self.nb),
            f(self.steps),
            f(self.base),
            f(self.order),
            self.batch_size,
            self.stragglers,
            self.dropped,
            None if self.drawn is None else f(self.drawn),
            None if self.drawn_len is None else f(self.drawn_len),
        )

    def take(self, rows: torch.Tensor) -> RoundPlan:
        """The plan of rows `rows` alone, in that order (a shard of the cohort): each client
        keeps its steps and batches, and the sample order holds only those clients' parts,
        so a shard ships no other client's indices."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.clients.device)
        members = set(self.clients[rows].tolist())
        keep = lambda ids: [c for c in ids if c in members]  # noqa: E731
        if self.drawn is not None:  # no sample order: each step's rows are in `drawn`
            order, base = self.order, self.base[rows]
        else:
            ends = torch.cat([self.base[1:], self.base.new_tensor([len(self.order)])])
            lengths = (ends - self.base)[rows]
            base = torch.cumsum(lengths, 0) - lengths
            pos = torch.repeat_interleave(self.base[rows] - base, lengths)
            order = self.order[pos + torch.arange(len(pos), device=pos.device)]
        return RoundPlan(
            self.clients[rows],
            self.n[rows],
            self.nb[rows],
            self.steps[rows],
            base,
            order,
            self.batch_size,
            keep(self.stragglers),
            keep(self.dropped),
            None if self.drawn is None else self.drawn[rows],
            None if self.drawn_len is None else self.drawn_len[rows],
        )

    def batch_rows(
        self, rows: torch.Tensor, t: int, limit: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample indices [k, B] and 0/1 mask for step t of the plan rows `rows`. Rows whose
        `limit` (default: their step count) is <= t get an all-zero mask."""
        n, nb, base = self.n[rows], self.nb[rows], self.base[rows]
        limit = self.steps[rows] if limit is None else limit
        if self.drawn is not None:
            t_in = min(t, self.drawn.shape[1] - 1)  # rows past their steps are masked anyway
            length = self.drawn_len[rows, t_in] * (limit > t)
            mask = torch.arange(self.batch_size, device=n.device)[None, :] < length[:, None]
            return self.drawn[rows, t_in], mask
        e = t // nb
        b = t - e * nb
        start = base + e * n + b * self.batch_size
        length = torch.minimum(n - b * self.batch_size, torch.full_like(n, self.batch_size)) * (
            limit > t
        )
        offs = torch.arange(self.batch_size, device=n.device)
        mask = offs[None, :] < length[:, None]
        pos = torch.where(
            mask, start[:, None] + offs[None, :], torch.zeros_like(mask, dtype=n.dtype)
        )
        return self.order[pos], mask

    def step_batches(
        self, rows: torch.Tensor, widths: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Every step's batch_rows at once, for an engine that stacks the first widths[t] of
        `rows` at step t: indices [sum(widths), B], mask, and each step's offset into them.
        Built in one pass per round, so a step only slices (no per-step index arithmetic)."""
        dev = self.n.device
        w = torch.as_tensor(widths, dtype=torch.long, device=dev)
        offsets = [0]
        for x in widths:
            offsets.append(offsets[-1] + x)
        total = offsets[-1]
        t = torch.repeat_interleave(torch.arange(len(widths), device=dev), w)
        starts = torch.as_tensor(offsets[:-1], dtype=torch.long, device=dev)
        r = rows[torch.arange(total, device=dev) - torch.repeat_interleave(starts, w)]
        live = self.steps[r] > t
        offs = torch.arange(self.batch_size, device=dev)
        if self.drawn is not None:
            t_in = t.clamp_max(max(self.drawn.shape[1] - 1, 0))
            mask = offs[None, :] < (self.drawn_len[r, t_in] * live)[:, None]
            return self.drawn[r, t_in], mask, offsets
        n, nb = self.n[r], self.nb[r]
        e = t // nb
        b = t - e * nb
        start = self.base[r] + e * n + b * self.batch_size
        length = torch.clamp(n - b * self.batch_size, max=self.batch_size) * live
        mask = offs[None, :] < length[:, None]
        pos = torch.where(mask, start[:, None] + offs[None, :], 0)
        return self.order[pos], mask, offsets

    def client_batch(self, row: int, t: int) -> torch.Tensor:
        """Sample indices of step t of plan row `row`, unpadded (the sequential engine)."""
        if self.drawn is not None:
            return self.drawn[row, t, : int(self.drawn_len[row, t])]
        n, nb, base = int(self.n[row]), int(self.nb[row]), int(self.base[row])
        e, b = divmod(t, nb)
        start = base + e * n + b * self.batch_size
        return self.order[start : start + min(self.batch_size, n - b * self.batch_size)]


def batches_per_epoch(n: np.ndarray | int, batch_size: int, drop_last: bool) -> np.ndarray | int:
    """Steps in one epoch of n samples. With ``drop_last`` a short tail batch is skipped (a
    client with fewer than ``batch_size`` samples keeps its one short batch): batch norm on
    2-3 samples amplifies rounding a thousandfold a round (tests/fl/test_equivalence.py)."""
    if drop_last:
        return np.maximum(n // batch_size, 1)
    return -(-n // batch_size)


def client_order(
    indices: np.ndarray, seed: int, round_idx: int, client: int, epochs: int
) -> np.ndarray:
    """Client `client`'s sample order for `epochs` epochs of round `round_idx`: one fresh
    permutation per epoch, from the client's own stream (seed, round, client), so the
    client can draw it itself (the Flower ClientApp in the speed benchmark does)."""
    rng = np.random.default_rng([seed, round_idx, 2, client])
    return (
        np.concatenate([rng.permutation(indices) for _ in range(epochs)])
        if epochs
        else (np.zeros(0, dtype=np.int64))
    )


def client_poisson(
    indices: np.ndarray, rate: float, steps: int, seed: int, round_idx: int, client: int
) -> list[np.ndarray]:
    """Client `client`'s Poisson-sampled batches for `steps` steps of round `round_idx`: each
    record in each step independently with probability `rate`, from the client's own stream
    (seed, round, client) as `client_order`."""
    rng = np.random.default_rng([seed, round_idx, 3, client])
    return [indices[row] for row in rng.random((steps, len(indices))) < rate]


def _padded(batches: list[list[np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack each client's batches into [K, S, W] rows (0-padded) and [K, S] lengths, W the
    largest batch drawn (at least 1, so an empty draw still has a row to mask)."""
    k, s = len(batches), max((len(b) for b in batches), default=0)
    w = max((len(x) for b in batches for x in b), default=0)
    rows = np.zeros((k, s, max(w, 1)), dtype=np.int64)
    lengths = np.zeros((k, s), dtype=np.int64)
    for i, b in enumerate(batches):
        for t, x in enumerate(b):
            rows[i, t, : len(x)] = x
            lengths[i, t] = len(x)
    return torch.as_tensor(rows), torch.as_tensor(lengths)


def client_plan(
    n: int,
    client: int,
    steps: int,
    nb: int,
    batch_size: int,
    work: LocalWork,
    seed: int,
    round_idx: int,
) -> RoundPlan:
    """Client `client`'s row of round `round_idx`'s plan, drawn by the client itself from the
    work the server assigned (`steps` of `nb` batches an epoch, `batch_size` samples a step:
    the batch size times the algorithm's batches per step, also under Poisson sampling),
    over its own n rows numbered 0..n-1 (a Flower node holds only its rows). Its batches are
    those `plan_round` draws for it: a permutation of local positions picks the same rows."""
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64))  # noqa: E731
    local = np.arange(n)
    if work.sampler == "poisson":
        drawn, drawn_len = _padded(
            [client_poisson(local, min(1.0, batch_size / n), steps, seed, round_idx, client)]
        )
        return RoundPlan(
            t([client]),
            t([n]),
            t([nb]),
            t([steps]),
            t([0]),
            t([]),
            drawn.shape[2],
            [],
            [],
            drawn,
            drawn_len,
        )
    order = client_order(local, seed, round_idx, client, -(-steps // max(nb, 1)))
    return RoundPlan(t([client]), t([n]), t([nb]), t([steps]), t([0]), t(order), batch_size, [], [])


def plan_round(
    clients: list[np.ndarray],
    sampling: Sampling,
    work: LocalWork,
    seed: int,
    round_idx: int,
    batches_per_step: int = 1,
) -> RoundPlan:
    """Draw round `round_idx`'s plan; the same (seed, round) always gives the same plan.

    The cohort, stragglers and epochs come from the round's stream; each client's sample
    order from its own (`client_order`)."""
    rng = np.random.default_rng([seed, round_idx, 0])
    cohort = sample_cohort(len(clients), sampling, rng)
    big_b = work.batch_size * batches_per_step
    k = len(cohort)
    sizes = np.array([len(clients[c]) for c in cohort], dtype=np.int64)
    nb = batches_per_epoch(sizes, big_b, work.drop_last)
    epochs = (
        rng.integers(work.epochs_range[0], work.epochs_range[1] + 1, size=k)
        if work.epochs_range
        else np.full(k, work.epochs)
    )
    steps = epochs * nb
    stragglers: list[int] = []
    dropped: list[int] = []
    keep = np.ones(k, dtype=bool)
    if work.stragglers > 0 and k > 0:
        n_active = int(round(k * (1 - work.stragglers)))
        active = rng.choice(k, n_active, replace=False)
        slow = np.setdiff1d(np.arange(k), active)
        if work.straggler_policy == "drop":
            keep[slow] = False
            dropped = cohort[slow].tolist()
        else:
            for i in slow:
                if epochs[i] > 1:
                    epochs[i] = rng.integers(1, epochs[i])
                    steps[i] = epochs[i] * nb[i]
                else:
                    steps[i] = rng.integers(1, nb[i]) if nb[i] > 1 else 1
            stragglers = cohort[slow].tolist()
    cohort, sizes, nb, steps = cohort[keep], sizes[keep], nb[keep], steps[keep]
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64))  # noqa: E731
    if work.sampler == "poisson":
        batches = [
            client_poisson(clients[c], min(1.0, big_b / n), int(s), seed, round_idx, int(c))
            for c, n, s in zip(cohort, sizes, steps, strict=True)
        ]
        drawn, drawn_len = _padded(batches)
        zero = np.zeros(len(cohort))
        return RoundPlan(
            t(cohort),
            t(sizes),
            t(nb),
            t(steps),
            t(zero),
            t([]),
            drawn.shape[2],
            stragglers,
            dropped,
            drawn,
            drawn_len,
        )
    n_epochs = -(-steps // np.maximum(nb, 1))
    orders = [
        client_order(clients[c], seed, round_idx, int(c), int(e))
        for c, e in zip(cohort, n_epochs, strict=True)
    ]
    lengths = sizes * n_epochs
    base = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0)
    order = np.concatenate(orders) if orders else np.zeros(0, dtype=np.int64)
    return RoundPlan(
        t(cohort), t(sizes), t(nb), t(steps), t(base), t(order), big_b, stragglers, dropped
    )
