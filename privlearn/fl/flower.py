"""Any privlearn `Algorithm` on a real Flower federation (Message API, flwr 1.30).

Flower owns the round loop, so it is a host, not an engine. `AlgorithmStrategy` is a
Flower Message-API strategy whose rounds are `rounds.run_round` unchanged: configure_train
is `plan_round` (the cohort and each client's work) and one message per planned client
carrying the server state as an ArrayRecord; aggregate_train hands the replies to
run_round through `Fleet`, the engine, so a reply that is missing (a node that left), an
error, or malformed (wrong fields, shapes or dtypes against the update template) becomes
that client's rejected row, named with its node, and screening and `algo.server_update`
do the rest. The ClientApp runs the algorithm's own client_init / client_step /
client_final through the sequential engine on the node's one client and its own rows.
Client state (SCAFFOLD's c_i, Ditto's personal model) lives on the
node (Flower's `Context.state`), never on the server: the node keeps its new state pending
and commits it when the server's next message says that update was kept, so a node's state
follows the same rule as the bank of `run_round`.

With `compress` (privlearn.fl.compress), a node encodes its delta with the run's Compressor
and replies with the payload's bytes instead of the raw delta; its compressor memory (EF's
e_i, EF21's g_i) is pending and committed by the same rule. The server decodes the payloads
(keeping its own EF21 g_i bank, committed for the updates it kept) and hands the decoded rows
to run_round, so a Flower run aggregates what the compressed simulation aggregates.

Both apps read the run's `RunConfig` from the Flower run config (`privlearn-config`, JSON);
`flower_deploy.write_app` writes the app folder that `flwr run` submits. Each node builds
the dataset the config names and keeps only its `partition-id`'s rows; the server plans
from the sample counts the nodes report and evaluates on the pooled test set.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from torch.utils import _pytree as pytree

from privlearn.fl import tree as T
from privlearn.fl.aggregate import shape_mismatch
from privlearn.fl.algorithms.base import Algorithm
from privlearn.fl.compress import decode, delta_rows
from privlearn.fl.engine.base import CohortResult, TrainData, poisoned, untrained_update
from privlearn.fl.engine.sequential import SequentialEngine
from privlearn.fl.evaluate import global_accuracy
from privlearn.fl.plan import RoundPlan, client_plan, plan_round
from privlearn.fl.rounds import RoundStats, init_federation, run_round, server_rng
from privlearn.fl.run import Experiment, RunConfig

CONFIG_KEY = "privlearn-config"  # the Flower run-config key holding the RunConfig as JSON
SERVER_STATE = "server.pt"  # the final server state, beside metrics.json in cfg.out
_STATE, _PENDING = "privlearn.client-state", "privlearn.pending"
_MEMORY, _MEMORY_PENDING = "privlearn.compress", "privlearn.compress-pending"


# --- the wire format ------------------------------------------------------------------------


def to_record(tree: Any) -> ArrayRecord:
    """A tree of tensors as an ArrayRecord keyed by each leaf's path."""
    flat = pytree.tree_flatten_with_path(tree)[0]
    return ArrayRecord({pytree.keystr(p): t.detach().cpu().contiguous() for p, t in flat})


def from_record(record: Any, like: Any) -> Any:
    """The tree an ArrayRecord holds, checked against `like` (fields, shapes, dtypes); a
    ValueError says what differs."""
    if not isinstance(record, ArrayRecord):
        raise ValueError(f"expected an ArrayRecord, got {type(record).__name__}")
    flat, spec = pytree.tree_flatten_with_path(like)
    want = [pytree.keystr(p) for p, _ in flat]
    missing, extra = sorted(set(want) - set(record)), sorted(set(record) - set(want))
    if missing or extra:
        raise ValueError(f"fields missing {missing[:3]} / unexpected {extra[:3]}")
    leaves = []
    for key in want:
        try:
            leaves.append(torch.from_numpy(np.array(record[key].numpy())))
        except Exception as e:  # noqa: BLE001 - bytes that do not parse as an array
            raise ValueError(f"{key} is not a readable array ({type(e).__name__})") from None
    tree = pytree.tree_unflatten(leaves, spec)
    problem = shape_mismatch(tree, like)
    if problem:
        raise ValueError(problem)
    return tree


def wire_bytes(content: RecordDict) -> int:
    """Bytes of a message's content as Flower serialises it (every record object, arrays
    included; not gRPC framing)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(o.deflate()) for o in get_all_nested_objects(content).values())


# --- the config both apps share -------------------------------------------------------------


def config_of(run_config: dict) -> RunConfig:
    if CONFIG_KEY not in run_config:
        raise ValueError(
            f"the Flower run config has no {CONFIG_KEY!r}; submit the app that "
            "`privlearn fl serve` writes (privlearn.fl.flower_deploy.write_app)"
        )
    cfg = RunConfig.from_dict(json.loads(str(run_config[CONFIG_KEY])))
    refuse(cfg)
    return cfg


def refuse(cfg: RunConfig) -> None:
    """What the Flower host does not run yet, as one error before anything starts."""
    unsupported = {
        "dp": cfg.dp,
        "secure_aggregation": cfg.secure_aggregation,
        "attack": cfg.attack,
        "defence": cfg.defence,
    }
    given = [k for k, v in unsupported.items() if v is not None]
    if given:
        raise ValueError(
            f"config keys {', '.join(given)}: the Flower deployment runs plain algorithms "
            "(no DP, secure aggregation, attacks or defences yet); use `privlearn fl run`"
        )
    if cfg.compress == "dadaquant":
        raise ValueError(
            "config key compress: dadaquant's per-client levels come from the whole cohort's "
            "weights and the server's loss schedule, which the Flower deployment does not "
            "send yet; use topk, randk or qsgd there, or `privlearn fl run`"
        )


def _template(
    algo: Algorithm,
    server: dict,
    client_state: Any,
    client: int,
    n: int,
    dtype: torch.dtype,
    probe: dict,
) -> Any:
    """What a well-formed update of `client` looks like, without training (as the
    sequential engine builds it); `probe` is one batch for algorithms that score clients."""
    info = {"id": torch.tensor(client), "n": torch.tensor(float(n), dtype=dtype)}
    return untrained_update(algo, server, client_state, info, probe)


# --- the node -------------------------------------------------------------------------------

client_app = ClientApp()


def _node(context: Context) -> tuple[RunConfig, Experiment, int]:
    cfg = config_of(context.run_config)
    pid, parts = (context.node_config.get(k) for k in ("partition-id", "num-partitions"))
    if (
        not (isinstance(pid, int) and isinstance(parts, int))
        or parts != cfg.n_clients
        or not (0 <= pid < parts)
    ):
        raise ValueError(
            f"this SuperNode's node config (partition-id={pid!r}, num-partitions={parts!r}) "
            f"does not fit a run of {cfg.n_clients} clients: start it with --node-config "
            f"'partition-id=<0..{cfg.n_clients - 1}> num-partitions={cfg.n_clients}'"
        )
    return cfg, Experiment.build(cfg), pid


@client_app.query()
def _who(msg: Message, context: Context) -> Message:
    """This node's partition and its number of training rows (what the server plans from)."""
    _, exp, pid = _node(context)
    me = ConfigRecord({"partition-id": pid, "n": len(exp.data.clients[pid])})
    return Message(RecordDict({"node": me}), reply_to=msg)


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    """One round of local work with the algorithm's own functions, on this node's rows."""
    cfg, exp, pid = _node(context)
    job = msg.content["plan"]
    r, steps, nb, batch, kept = (int(job[k]) for k in ("round", "steps", "nb", "batch", "kept"))
    idx = torch.as_tensor(exp.data.clients[pid])
    if int(job["client"]) != pid or int(job["n"]) != len(idx):
        raise ValueError(
            f"the server planned client {job['client']} with {job['n']} rows; "
            f"this node holds partition {pid} with {len(idx)}"
        )
    server0, bank0 = init_federation(exp.algo, exp.model, 1, cfg.seed)
    server = from_record(msg.content["server"], server0)
    state = T.rows(bank0, 0)
    if _PENDING in context.state and int(context.state[_PENDING + ".round"]["round"]) == kept:
        context.state[_STATE] = context.state[_PENDING]  # the server kept that update
        if _MEMORY_PENDING in context.state:
            context.state[_MEMORY] = context.state[_MEMORY_PENDING]
    if _STATE in context.state:
        state = from_record(context.state[_STATE], state)
    plan = client_plan(len(idx), pid, steps, nb, batch, cfg.work(), cfg.seed, r)
    data = TrainData(exp.data.round_features(r)[idx], exp.data.y_train[idx])
    result = SequentialEngine().run_clients(exp.algo, server, T.repeat(state, 1), plan, data)
    if result.rejected:
        raise ValueError(f"this node's own update is malformed: {result.rejected[0]}")
    reply = {"update": to_record(T.rows(result.updates, 0))}
    if cfg.compress is not None:
        reply = _compressed(exp, context, result.updates, pid, r)
    context.state[_PENDING] = to_record(T.rows(result.client_states, 0))
    context.state[_PENDING + ".round"] = ConfigRecord({"round": r})
    return Message(RecordDict(reply), reply_to=msg)


def _compressed(exp: Experiment, context: Context, u: Any, pid: int, r: int) -> dict:
    """The reply's content under compression: the update without its delta, and the payload
    that encodes the delta with this node's compressor memory (its new memory left pending)."""
    compressor, n_params = exp.cfg.compressor(), exp.model.n_params()
    flat = delta_rows(u, n_params)
    if not torch.isfinite(flat).all():
        raise ValueError("this node's delta is not finite; compression sends only finite ones")
    memory = compressor.init(1, n_params, flat.dtype)
    if _MEMORY in context.state:
        memory = from_record(context.state[_MEMORY], memory)
    one = torch.tensor([pid])
    up = compressor.upload(memory, flat, one, u.weight, r, slots=torch.tensor([0]))
    context.state[_MEMORY_PENDING] = to_record(up.memory)
    rest = dataclasses.replace(T.rows(u, 0), delta={})
    return {"update": to_record(rest), "upload": ConfigRecord({"payload": up.payloads[0]})}


# --- the server -----------------------------------------------------------------------------


class Fleet:
    """The joined nodes as an engine: which node holds which client, each client's last kept
    round (what tells a node to commit its pending state), and the bytes sent both ways.
    `messages` is what a round sends; `run_clients` reads the replies the strategy hands it
    (`replies`, in message order, None where none came). Under compression it decodes the
    replies' payloads (`memory`: the server's EF21 g bank; `upload`: the round's payload
    bytes, as run_round reports them in a simulation)."""

    name = "flower"

    def __init__(self, exp: Experiment, node_of: dict[int, int], sizes: list[int]):
        self.exp, self.node_of, self.sizes = exp, node_of, sizes
        self.kept: dict[int, int] = {}
        self.bytes_down = self.bytes_up = 0
        self.replies: list[Message | None] = []
        self.timeout = exp.cfg.flower_timeout
        x = exp.data.x_test
        self.probe = {"x": x[:1], "y": exp.data.y_test[:1], "mask": torch.ones(1, dtype=x.dtype)}
        self.dtype = TrainData(x, exp.data.y_test).dtype
        self.compressor, self.n_params = exp.cfg.compressor(), exp.model.n_params()
        self.upload: dict | None = None
        self._received = None  # the round's (sending clients, Upload) until commit
        # a fresh client state: what the update templates are built from
        server, bank = init_federation(exp.algo, exp.model, 1, exp.cfg.seed)
        self.state0 = T.rows(bank, 0)
        if self.compressor is not None:
            like = _template(exp.algo, server, self.state0, 0, 1, self.dtype, self.probe)
            flat = delta_rows(T.stack([like]), self.n_params)  # refuses what it cannot encode
            self.value_bytes = flat.element_size()
            self.payload_size = self.compressor.payload_size(self.n_params)
            self.memory = self.compressor.server_init(len(sizes), self.n_params, flat.dtype)

    def plan(self, r: int) -> RoundPlan:
        """Round r's plan, from the sample counts the nodes reported."""
        cfg, sizes = self.exp.cfg, [np.arange(n) for n in self.sizes]
        steps = self.exp.algo.batches_per_step
        return plan_round(sizes, cfg.sampling_spec(), cfg.work(), cfg.seed, r, steps)

    def messages(self, server: dict, plan: RoundPlan, r: int) -> list[Message]:
        """One train message per planned client: the server state and its work."""
        state, out = to_record(server), []
        # samples a step (a Poisson plan's batch_size is its padded width instead)
        batch = self.exp.cfg.batch_size * self.exp.algo.batches_per_step
        for row, c in enumerate(plan.clients.tolist()):
            job = {
                "round": r,
                "client": c,
                "n": int(plan.n[row]),
                "nb": int(plan.nb[row]),
                "steps": int(plan.steps[row]),
                "batch": batch,
                "kept": self.kept.get(c, -1),
            }
            content = RecordDict({"server": state, "plan": ConfigRecord(job)})
            self.bytes_down += wire_bytes(content)
            out.append(
                Message(content, dst_node_id=self.node_of[c], message_type=MessageType.TRAIN)
            )
        return out

    def run_clients(
        self, algo: Algorithm, server: dict, client_states: Any, plan: RoundPlan, data: TrainData
    ) -> CohortResult:
        updates, rejected, payloads, sent = [], {}, {}, []
        if len(plan):  # fields and shapes are every client's: one template serves the round
            c0, n0 = int(plan.clients[0]), int(plan.n[0])
            like = _template(algo, server, self.state0, c0, n0, self.dtype, self.probe)
        for row, (c, reply) in enumerate(zip(plan.clients.tolist(), self.replies, strict=True)):
            node = self.node_of[c]
            try:
                if reply is None:
                    raise ValueError(
                        f"sent no reply within {self.timeout:g} s (flower_timeout): "
                        "it left the federation or is too slow"
                    )
                if reply.has_error():
                    raise ValueError(f"failed: {reply.error.reason}")
                self.bytes_up += wire_bytes(reply.content)
                if "update" not in reply.content:
                    raise ValueError("replied without an update")
                if self.compressor is None:
                    updates.append(from_record(reply.content["update"], like))
                    continue
                rest = from_record(reply.content["update"], dataclasses.replace(like, delta={}))
                payload = _payload(reply.content)
                if len(payload) != self.payload_size:
                    raise ValueError(
                        f"sent a {len(payload)}-byte payload where this run's compression "
                        f"settings give {self.payload_size} bytes"
                    )
                sent.append(decode([payload], self.n_params))
                payloads[row] = payload
                updates.append(dataclasses.replace(rest, delta=like.delta))
            except ValueError as e:
                rejected[row] = f"SuperNode {node}: {e}"
                updates.append(T.tree_map(poisoned, like))
        u = T.stack(updates)
        if self.compressor is not None:
            u = self._decoded(u, plan, payloads, sent)
        return CohortResult(u, {}, rejected)

    def _decoded(self, u: Any, plan: RoundPlan, payloads: dict, sent: list) -> Any:
        """The cohort's update with each sending row's delta what the server aggregates from
        that row's payload (`Compressor.receive`)."""
        rows = torch.tensor(sorted(payloads), dtype=torch.long)
        self._received = None
        if not len(rows):
            self.upload = {"bytes": 0, "uncompressed_bytes": 0, "clients": 0}
            return u
        slots = plan.clients[rows]
        up = self.compressor.receive(self.memory, list(payloads.values()), torch.cat(sent), slots)
        self._received = (slots, up)
        self.upload = up.report(self.n_params, self.value_bytes)
        flat = T.flat_rows(u.delta).clone()
        flat[rows] = up.rows.to(flat.dtype)
        return dataclasses.replace(u, delta=T.unflat(flat, u.delta))

    def commit(self, plan: RoundPlan, stats: RoundStats, r: int) -> None:
        """Record whose update round r kept (run_round writes those clients' states), and
        keep their EF21 g rows."""
        if stats.skipped is None:
            lost = {x.client for x in stats.rejected}
            for c in plan.clients.tolist():
                if c not in lost:
                    self.kept[c] = r
            if self._received is not None:
                slots, up = self._received
                kept = torch.tensor([int(c) not in lost for c in slots.tolist()])
                self.compressor.keep(self.memory, slots, up, torch.nonzero(kept).flatten())


def _payload(content: RecordDict) -> bytes:
    """A compressed reply's payload bytes."""
    record = content.get("upload")
    payload = record.get("payload") if isinstance(record, ConfigRecord) else None
    if not isinstance(payload, bytes):
        raise ValueError("replied without a compressed payload (run config sets compress)")
    return payload


def answers(sent: list[Message], replies: Any) -> list[Message | None]:
    """The replies in the order of the messages they answer (Flower's grid sets each sent
    message's id as it pushes it), None where none came. Matched by id, not by sender: the
    error the SuperLink sends for a node it lost comes from the SuperLink."""
    by_id = {m.metadata.reply_to_message_id: m for m in replies}
    return [by_id.get(m.metadata.message_id) for m in sent]


def join(grid: Grid, exp: Experiment) -> Fleet:
    """Wait for one node per client (cfg.flower_timeout) and ask each its partition."""
    cfg, deadline = exp.cfg, time.monotonic() + exp.cfg.flower_timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < cfg.n_clients and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    if len(nodes) < cfg.n_clients:
        raise TimeoutError(
            f"{len(nodes)} of {cfg.n_clients} SuperNodes joined within "
            f"{cfg.flower_timeout:g} s (flower_timeout); start one per partition: "
            f"privlearn fl join --partition-id i --num-partitions {cfg.n_clients}"
        )
    ask = [
        Message(
            RecordDict({"who": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY
        )
        for n in nodes
    ]
    replies = answers(ask, grid.send_and_receive(ask, timeout=cfg.flower_timeout))
    node_of, sizes = {}, [0] * cfg.n_clients
    for src, m in zip(nodes, replies, strict=True):
        if m is None:
            raise TimeoutError(
                f"SuperNode {src} did not answer within {cfg.flower_timeout:g} s (flower_timeout)"
            )
        if m.has_error():
            raise ValueError(f"SuperNode {src} refused to join: {m.error.reason}")
        pid, n = int(m.content["node"]["partition-id"]), int(m.content["node"]["n"])
        if pid in node_of:
            raise ValueError(f"SuperNodes {node_of[pid]} and {src} both hold partition {pid}")
        node_of[pid], sizes[pid] = src, n
    missing = sorted(set(range(cfg.n_clients)) - set(node_of))
    if missing:
        raise ValueError(f"no SuperNode answered for partitions {missing}")
    return Fleet(exp, node_of, sizes)


class AlgorithmStrategy(Strategy):
    """A privlearn Algorithm as a Flower Message-API strategy. configure_train: the round's
    plan (cohort and work) and one message per planned client; aggregate_train: each reply
    checked against the update template, then `rounds.run_round` (screening, the
    algorithm's server_update). The full server state (SCAFFOLD's c, a server optimiser's
    moments) stays here; the arrays Flower passes around are the global model's. Each
    round's entry (clients, loss, rejections with why, bytes both ways, seconds) is kept in
    `rounds`."""

    def __init__(self, fleet: Fleet):
        exp = fleet.exp
        self.fleet, self.exp = fleet, exp
        self.server, _ = init_federation(exp.algo, exp.model, 1, exp.cfg.seed)
        self.rounds: list[dict] = []
        self._sent: list[Message] = []

    def global_arrays(self) -> ArrayRecord:
        """The global model's parameters by state-dict name (empty for models kept local)."""
        gm = self.exp.algo.global_model(self.server)
        return ArrayRecord({} if gm is None else {k: t.detach().cpu() for k, t in gm[0].items()})

    def configure_train(self, server_round, arrays, config, grid) -> list[Message]:
        r = server_round - 1
        self._t0, self._bytes = time.perf_counter(), (self.fleet.bytes_down, self.fleet.bytes_up)
        self._plan = self.fleet.plan(r)
        self._sent = self.fleet.messages(self.server, self._plan, r)
        return self._sent

    def aggregate_train(self, server_round, replies) -> tuple[ArrayRecord, MetricRecord]:
        r, plan, exp = server_round - 1, self._plan, self.exp
        self.fleet.replies = answers(self._sent, replies)
        empty = TrainData(exp.data.x_test[:0], exp.data.y_test[:0])
        rng = server_rng(exp.cfg.seed, r)
        self.server, stats = run_round(exp.algo, self.fleet, self.server, {}, plan, empty, rng)
        self.fleet.commit(plan, stats, r)
        down, up = self._bytes
        entry = {
            "round": server_round,
            "clients": len(stats.clients),
            "train_loss": stats.train_loss,
            "seconds": round(time.perf_counter() - self._t0, 4),
            "rejected": [str(x) for x in stats.rejected],
            "skipped": stats.skipped,
            "bytes_down": self.fleet.bytes_down - down,
            "bytes_up": self.fleet.bytes_up - up,
        }
        if self.fleet.compressor is not None:
            entry["upload"] = self.fleet.upload
        self.rounds.append(entry)
        metrics = {k: entry[k] for k in ("clients", "bytes_down", "bytes_up")}
        if stats.train_loss is not None:
            metrics["train_loss"] = stats.train_loss
        return self.global_arrays(), MetricRecord(metrics)

    def configure_evaluate(self, server_round, arrays, config, grid) -> list[Message]:
        return []  # the server evaluates the global model itself (evaluate)

    def aggregate_evaluate(self, server_round, replies) -> None:
        return None

    def summary(self) -> None:
        cfg = self.exp.cfg
        print(f"privlearn {cfg.algorithm} on {cfg.dataset}, {cfg.n_clients} SuperNodes", flush=True)

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Central evaluation on the pooled test set (Flower's evaluate_fn)."""
        cfg = self.exp.cfg
        if server_round == 0 or (server_round % cfg.eval_every and server_round != cfg.rounds):
            return None
        g = global_accuracy(self.exp.algo, self.exp.model, self.server, self.exp.data)
        if g is None:
            return None
        self.rounds[-1]["test_acc"] = g[0]
        return MetricRecord({"test_acc": g[0]})


server_app = ServerApp()


@server_app.main()
def _serve(grid: Grid, context: Context) -> None:
    cfg = config_of(context.run_config)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    exp = Experiment.build(cfg)
    strategy = AlgorithmStrategy(join(grid, exp))
    doc = {
        "config": cfg.__dict__,
        "host": "flower",
        "status": "running",
        "nodes": {str(c): n for c, n in strategy.fleet.node_of.items()},
        "rounds": strategy.rounds,
    }
    strategy.start(
        grid,
        strategy.global_arrays(),
        num_rounds=cfg.rounds,
        timeout=cfg.flower_timeout,
        evaluate_fn=strategy.evaluate,
    )
    torch.save(strategy.server, out / SERVER_STATE)
    doc["status"] = "complete"
    (out / "metrics.json").write_text(json.dumps(doc, indent=1))
