"""Any privlearn `Algorithm` on a real Flower federation (Message API, flwr 1.30).

Flower owns the round loop, so it is a host, not an engine. The ServerApp here is the
server side of `rounds.run_round` unchanged: `plan_round` samples the cohort and assigns the
work, screening drops bad updates by name, `algo.server_update` steps the model. Only the
engine is different: `Fleet.run_clients` sends each planned client the server state as an
ArrayRecord and collects its update, so a reply that is missing (a node that left), an
error, or malformed (wrong fields, shapes or dtypes against the update template) becomes
that client's rejected row, named with its node. The ClientApp runs the algorithm's own
client_init / client_step / client_final through the sequential engine on the node's one
client and its own rows. Client state (SCAFFOLD's c_i, Ditto's personal model) lives on the
node (Flower's `Context.state`), never on the server: the node keeps its new state pending
and commits it when the server's next message says that update was kept, so a node's state
follows the same rule as the bank of `run_round`.

Both apps read the run's `RunConfig` from the Flower run config (`privlearn-config`, JSON);
`flower_deploy.write_app` writes the app folder that `flwr run` submits. Each node builds
the dataset the config names and keeps only its `partition-id`'s rows; the server plans
from the sample counts the nodes report and evaluates on the pooled test set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from torch.utils import _pytree as pytree

from privlearn.fl import tree as T
from privlearn.fl.aggregate import shape_mismatch
from privlearn.fl.algorithms.base import Algorithm
from privlearn.fl.engine.base import CohortResult, TrainData
from privlearn.fl.engine.sequential import SequentialEngine
from privlearn.fl.evaluate import global_accuracy
from privlearn.fl.plan import RoundPlan, client_plan, plan_round
from privlearn.fl.rounds import RoundStats, init_federation, run_round, server_rng
from privlearn.fl.run import Experiment, RunConfig

CONFIG_KEY = "privlearn-config"  # the Flower run-config key holding the RunConfig as JSON
SERVER_STATE = "server.pt"  # the final server state, beside metrics.json in cfg.out
_STATE, _PENDING = "privlearn.client-state", "privlearn.pending"


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
    if algo.client_score is not None:
        info["score"] = algo.client_score(server, client_state, info, probe)
    return algo.client_final(server, algo.client_init(server, client_state, info))[0]


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
    if _STATE in context.state:
        state = from_record(context.state[_STATE], state)
    plan = client_plan(len(idx), pid, steps, nb, batch, cfg.work(), cfg.seed, r)
    data = TrainData(exp.data.round_features(r)[idx], exp.data.y_train[idx])
    result = SequentialEngine().run_clients(exp.algo, server, T.repeat(state, 1), plan, data)
    if result.rejected:
        raise ValueError(f"this node's own update is malformed: {result.rejected[0]}")
    context.state[_PENDING] = to_record(T.rows(result.client_states, 0))
    context.state[_PENDING + ".round"] = ConfigRecord({"round": r})
    return Message(RecordDict({"update": to_record(T.rows(result.updates, 0))}), reply_to=msg)


# --- the server -----------------------------------------------------------------------------


class Fleet:
    """The joined nodes as an engine: which node holds which client, and each client's last
    kept round (what tells a node to commit its pending state)."""

    name = "flower"

    def __init__(self, grid: Grid, exp: Experiment, node_of: dict[int, int], sizes: list[int]):
        self.grid, self.exp, self.node_of, self.sizes = grid, exp, node_of, sizes
        self.kept: dict[int, int] = {}
        self.round_idx = 0  # the round run_clients serves (set by the server loop)
        self.bytes_down = self.bytes_up = 0
        x = exp.data.x_test
        self.probe = {"x": x[:1], "y": exp.data.y_test[:1], "mask": torch.ones(1, dtype=x.dtype)}
        self.dtype = TrainData(x, exp.data.y_test).dtype

    @classmethod
    def join(cls, grid: Grid, exp: Experiment) -> Fleet:
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
        node_of, sizes = {}, [0] * cfg.n_clients
        for src, m in zip(nodes, exchange(grid, ask, cfg.flower_timeout), strict=True):
            if m is None:
                raise TimeoutError(
                    f"SuperNode {src} did not answer within {cfg.flower_timeout:g} s "
                    "(flower_timeout)"
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
        return cls(grid, exp, node_of, sizes)

    def plan(self, r: int) -> RoundPlan:
        cfg = self.exp.cfg
        sizes = [np.arange(n) for n in self.sizes]
        w = cfg.work()
        return plan_round(
            sizes, cfg.sampling_spec(), w, cfg.seed, r, self.exp.algo.batches_per_step
        )

    def run_clients(
        self, algo: Algorithm, server: dict, client_states: Any, plan: RoundPlan, data: TrainData
    ) -> CohortResult:
        r = self.round_idx
        _, bank0 = init_federation(algo, self.exp.model, 1, self.exp.cfg.seed)
        out, node_row = [], {}
        state = to_record(server)
        for row, c in enumerate(plan.clients.tolist()):
            job = ConfigRecord(
                {
                    "round": r,
                    "client": c,
                    "n": int(plan.n[row]),
                    "nb": int(plan.nb[row]),
                    "steps": int(plan.steps[row]),
                    "batch": plan.batch_size,
                    "kept": self.kept.get(c, -1),
                }
            )
            content = RecordDict({"server": state, "plan": job})
            self.bytes_down += wire_bytes(content)
            node_row[self.node_of[c]] = row
            out.append(
                Message(content, dst_node_id=self.node_of[c], message_type=MessageType.TRAIN)
            )
        timeout = self.exp.cfg.flower_timeout
        replies = exchange(self.grid, out, timeout)
        updates, rejected = [], {}
        for row, (c, reply) in enumerate(zip(plan.clients.tolist(), replies, strict=True)):
            node = self.node_of[c]
            like = _template(
                algo, server, T.rows(bank0, 0), c, int(plan.n[row]), self.dtype, self.probe
            )
            try:
                if reply is None:
                    raise ValueError(
                        f"sent no reply within {timeout:g} s (flower_timeout): "
                        "it left the federation or is too slow"
                    )
                if reply.has_error():
                    raise ValueError(f"failed: {reply.error.reason}")
                self.bytes_up += wire_bytes(reply.content)
                if "update" not in reply.content:
                    raise ValueError("replied without an update")
                updates.append(from_record(reply.content["update"], like))
            except ValueError as e:
                rejected[row] = f"SuperNode {node}: {e}"
                updates.append(T.tree_map(_poisoned, like))
        return CohortResult(T.stack(updates), {}, rejected)

    def commit(self, plan: RoundPlan, stats: RoundStats, r: int) -> None:
        """Record whose update round r kept (run_round writes those clients' states)."""
        if stats.skipped is None:
            lost = {x.client for x in stats.rejected}
            for c in plan.clients.tolist():
                if c not in lost:
                    self.kept[c] = r


def exchange(grid: Grid, messages: list[Message], timeout: float) -> list[Message | None]:
    """Push `messages`, then pull until each has its reply or `timeout` seconds pass: the
    replies in message order, None where none came. (Grid.send_and_receive returns replies
    unordered, and an error the SuperLink sends for a node it lost comes from the SuperLink,
    not the node, so replies are matched by the message they answer.)"""
    ids = list(grid.push_messages(messages))
    got: dict[str, Message] = {}
    pending = {i for i in ids if i is not None}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for m in grid.pull_messages(pending):
            got[m.metadata.reply_to_message_id] = m
        pending -= set(got)
        if pending:
            time.sleep(0.5)
    return [got.get(i) for i in ids]


def _poisoned(t: torch.Tensor) -> torch.Tensor:
    """A rejected client's stand-in leaf, as the sequential engine makes it."""
    return torch.full_like(t, float("nan")) if t.is_floating_point() else torch.zeros_like(t)


server_app = ServerApp()


@server_app.main()
def _serve(grid: Grid, context: Context) -> None:
    cfg = config_of(context.run_config)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    exp = Experiment.build(cfg)
    fleet = Fleet.join(grid, exp)
    server, _ = init_federation(exp.algo, exp.model, 1, cfg.seed)
    doc = {
        "config": cfg.__dict__,
        "host": "flower",
        "status": "running",
        "nodes": {str(c): n for c, n in fleet.node_of.items()},
        "rounds": [],
    }
    empty = TrainData(exp.data.x_test[:0], exp.data.y_test[:0])
    for r in range(cfg.rounds):
        plan = fleet.plan(r)
        fleet.round_idx = r
        down, up = fleet.bytes_down, fleet.bytes_up
        t0 = time.perf_counter()
        server, stats = run_round(exp.algo, fleet, server, {}, plan, empty, server_rng(cfg.seed, r))
        fleet.commit(plan, stats, r)
        entry = {
            "round": r + 1,
            "clients": len(stats.clients),
            "train_loss": stats.train_loss,
            "seconds": round(time.perf_counter() - t0, 4),
            "rejected": [str(x) for x in stats.rejected],
            "skipped": stats.skipped,
            "bytes_down": fleet.bytes_down - down,
            "bytes_up": fleet.bytes_up - up,
        }
        if (r + 1) % cfg.eval_every == 0 or r + 1 == cfg.rounds:
            g = global_accuracy(exp.algo, exp.model, server, exp.data)
            entry["test_acc"] = None if g is None else g[0]
        doc["rounds"].append(entry)
        print(f"privlearn round {r + 1}: {json.dumps(entry)}", flush=True)
        (out / "metrics.json").write_text(json.dumps(doc, indent=1))
    torch.save(server, out / SERVER_STATE)
    doc["status"] = "complete"
    (out / "metrics.json").write_text(json.dumps(doc, indent=1))
