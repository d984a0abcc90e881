"""The Ray engine: each round's cohort is split into shards, one per Ray actor, and every
actor runs the vectorised engine on its shard.

What travels: the training data once per actor (put in Ray's object store when the engine
first sees it, or when it changes, and fetched by each actor once); the algorithm once
(again only when it changes); per round only the server state, the shard's client states and
the shard's plan rows (`RoundPlan.take`). Clients train independently, so the shards'
results, put back in plan order, are the single-process engine's (tests/fl/test_ray.py).

A worker that dies mid-round (its process or node lost) is replaced and its shard retried
once; if the retry fails too, the shard's clients are reported as rejected with the reason
(NaN stand-in updates, states unchanged), so screening leaves them out and the round
completes with the others. An error raised by the algorithm itself is not a lost worker:
it propagates.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from typing import Any

import ray
import ray.exceptions as rex
import torch

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import Algorithm
from privlearn.fl.engine.base import (
    CohortResult,
    TrainData,
    client_info,
    poisoned,
    untrained_update,
)
from privlearn.fl.engine.vectorised import VectorisedEngine
from privlearn.fl.plan import RoundPlan

CONNECT_TIMEOUT_S = 5.0  # reaching a given cluster address (a TCP connect)
START_TIMEOUT_S = 120.0  # a worker (Ray actor) starting and importing torch
RETRIES = 1  # attempts after the first for a shard whose worker died (default)
LOST = (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError)


class _Worker:
    """One Ray actor: the training data it was sent, the current algorithm, and its own
    vectorised engine. Keys say which data and algorithm it holds, so each travels once."""

    def __init__(self, threads: int, chunk_size: int | None, compile: bool):
        torch.set_num_threads(threads)
        self.engine = VectorisedEngine(chunk_size=chunk_size, compile=compile)
        self.keys: dict[str, int] = {}
        self.held: dict[str, Any] = {}
        self.fetched = {"algo": 0, "data": 0}  # how often each was fetched: once per change

    def status(self) -> dict:
        return {"pid": os.getpid(), "fetched": dict(self.fetched)}

    def _fetch(self, name: str, key: int, boxed: list) -> Any:
        # `boxed` is [ObjectRef]: a ref inside a list is not resolved by Ray, so the object
        # is fetched here, and only when this worker does not hold it yet
        if self.keys.get(name) != key:
            self.held[name], self.keys[name] = ray.get(boxed[0]), key
            self.fetched[name] += 1
        return self.held[name]

    def run(self, algo: tuple, data: tuple, server: dict, client_states: Any, plan: RoundPlan):
        """The shard's CohortResult and the seconds this worker spent on it."""
        a, d = self._fetch("algo", *algo), self._fetch("data", *data)
        t0 = time.perf_counter()
        result = self.engine.run_clients(a, server, client_states, plan, d)
        return result, time.perf_counter() - t0


def _reachable(address: str, timeout: float) -> None:
    """Fail fast, naming the address, when nothing listens there (ray.init would wait)."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(
            f"ray_address {address!r}: expected host:port (a head node's GCS address, e.g. "
            "10.0.0.5:6379), ray://host:port, or auto"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ValueError(
            f"ray_address {address!r}: cannot reach a Ray cluster there ({e}); start its head "
            "with `ray start --head` and pass the address it prints, or leave ray_address "
            "unset to start a local cluster"
        ) from None


class RayEngine:
    """Shard each round's cohort across `workers` Ray actors (default: the cluster's CPUs
    over `threads`). `address` None starts a local cluster on loopback, sized to the
    workers; otherwise it is an existing cluster's address (host:port, ray://host:port or
    auto). If Ray is already initialised in this process, that cluster is used as it is.
    `retries`: attempts, each on a fresh worker, after a shard's worker died.
    `close()` (or leaving a `with` block) stops the workers, and the cluster if it was
    started here."""

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        address: str | None = None,
        chunk_size: int | None = None,
        compile: bool = False,
        threads: int = 1,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        retries: int = RETRIES,
    ):
        if workers is not None and workers < 1:
            raise ValueError(f"ray_workers must be >= 1, got {workers}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads, self.options, self.retries = threads, (threads, chunk_size, compile), retries
        self.shard_seconds: list[float] = []  # each shard's time in its worker, last round
        self._placed: dict[str, tuple] = {}  # "algo"/"data" -> (parts, key, [ObjectRef])
        self._key = 0
        self._owns_ray = False
        self.actors: list = []
        if address is not None and address != "auto":
            _reachable(address, connect_timeout)
        if ray.is_initialized():
            self.address = ray.get_runtime_context().gcs_address
            if address not in (None, "auto", self.address):
                raise ValueError(
                    f"ray_address {address!r}: this process is already connected to the Ray "
                    f"cluster at {self.address}; leave ray_address unset to use it"
                )
        else:
            self._start(workers, address)
        try:
            cpus = int(ray.cluster_resources().get("CPU", 0))
            self.workers = workers or max(1, cpus // threads)
            self.actors = [self._new_actor() for _ in range(self.workers)]
            self._await_ready(self.actors)
        except BaseException:
            self.close()
            raise

    def _start(self, workers: int | None, address: str | None) -> None:
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        with warnings.catch_warnings():  # Ray's tip about accelerator variables, at every start
            warnings.filterwarnings("ignore", "Tip: In future versions of Ray", FutureWarning)
            if address is None:  # a local cluster on loopback, one CPU slot per worker thread
                ray.init(
                    address="local",
                    num_cpus=(workers or os.cpu_count() or 1) * self.threads,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    **quiet,
                )
            else:
                ray.init(address=address, **quiet)
        self.address = ray.get_runtime_context().gcs_address
        self._owns_ray = True

    def _new_actor(self):
        return ray.remote(num_cpus=self.threads)(_Worker).remote(*self.options)

    def _await_ready(self, actors: list) -> None:
        try:
            ray.get([a.status.remote() for a in actors], timeout=START_TIMEOUT_S)
        except rex.GetTimeoutError:
            raise ValueError(
                f"ray_workers: the Ray cluster at {self.address} did not start {len(actors)} "
                f"workers of {self.threads} CPU each within {START_TIMEOUT_S:.0f} s (its "
                f"resources: {ray.cluster_resources()}); lower ray_workers or threads"
            ) from None

    def close(self) -> None:
        if ray.is_initialized():
            for a in self.actors:
                ray.kill(a)
        self.actors, self._placed = [], {}
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _place(self, name: str, what: Any, parts: tuple) -> tuple:
        """(key, [ref]) of `what` in the object store, put there only when one of `parts`
        is not the object last placed under `name` (identity: no hashing of tensors)."""
        held = self._placed.get(name)
        if held is None or any(a is not b for a, b in zip(held[0], parts, strict=True)):
            self._key += 1
            # the entry keeps `parts` alive, so their identities stay meaningful
            self._placed[name] = (parts, self._key, [ray.put(what)])
        return self._placed[name][1:]

    def _shards(self, plan: RoundPlan) -> list[torch.Tensor]:
        """Plan rows dealt round-robin by planned steps (most first), so every shard gets
        the same mix of long and short clients and they finish together."""
        order = torch.argsort(-plan.steps.cpu(), stable=True)
        n = min(len(self.actors), len(plan))
        return [order[i::n] for i in range(n)]

    def run_clients(
        self, algo: Algorithm, server: dict, client_states: Any, plan: RoundPlan, data: TrainData
    ) -> CohortResult:
        if not self.actors:
            raise RuntimeError("this Ray engine is closed; build a new one")
        algo_ref = self._place("algo", algo, (algo,))
        data_ref = self._place("data", data, (data.x, data.y))
        shards = self._shards(plan)

        def submit(i: int):
            rows = shards[i]
            cs = T.rows(client_states, rows.to(plan.clients.device))
            return self.actors[i].run.remote(algo_ref, data_ref, server, cs, plan.take(rows))

        pending = {submit(i): (i, 0) for i in range(len(shards))}
        done: dict[int, CohortResult] = {}
        lost: dict[int, str] = {}
        self.shard_seconds = [0.0] * len(shards)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            i, attempt = pending.pop(ref)
            try:
                done[i], self.shard_seconds[i] = ray.get(ref)
            except LOST as e:
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                self.actors[i] = self._new_actor()
                if attempt < self.retries:
                    try:
                        self._await_ready([self.actors[i]])
                        pending[submit(i)] = (i, attempt + 1)
                        continue
                    except ValueError as start:
                        reason = f"{reason}; no replacement worker: {start}"
                lost[i] = (
                    f"worker lost: the Ray worker running this client's shard of "
                    f"{len(shards[i])} died ({attempt + 1} attempt(s); {reason})"
                )
        return self._assemble(algo, server, client_states, plan, data, shards, done, lost)

    def _assemble(self, algo, server, client_states, plan, data, shards, done, lost):
        """The shards' results as one CohortResult in plan order; a lost shard's rows are
        NaN updates with unchanged states, rejected with the reason."""
        ups, states, rows_all, rejected = [], [], [], {}
        blank = _blank_update(algo, server, client_states, plan, data) if lost else None
        for i, rows in enumerate(shards):
            if i in lost:
                ups.append(T.repeat(blank, len(rows)))
                states.append(T.rows(client_states, rows.to(plan.clients.device)))
                rejected.update({int(r): lost[i] for r in rows})
            else:
                ups.append(done[i].updates)
                states.append(done[i].client_states)
                rejected.update({int(rows[j]): why for j, why in done[i].rejected.items()})
            rows_all.append(rows)
        order = torch.cat(rows_all)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return CohortResult(T.rows(T.cat(ups), inverse), T.rows(T.cat(states), inverse), rejected)


def _blank_update(algo: Algorithm, server: dict, client_states: Any, plan, data) -> Any:
    """One NaN update of the right fields and shapes (plan row 0's, untrained): a lost
    client's stand-in, which screening rejects by name."""
    cs, info = T.rows(client_states, 0), T.rows(client_info(plan, data.dtype), 0)
    probe = None if algo.client_score is None else data.batch(plan.client_batch(0, 0))
    update = untrained_update(algo, server, cs, info, probe)
    return T.tree_map(poisoned, update)
