"""Compressed uploads on the Flower host without a deployment: the strategy's messages are
handed to the ClientApp's train function, one Flower `Context` per node kept across rounds
(as a SuperNode keeps it), and the replies back to the strategy.

Stated tolerance: the nodes and the sequential engine run the same functions on the same
batches, and both sides encode and decode with the same Compressor, so the final models must
agree to 1e-6 (float32) and the payload byte counts exactly."""

from __future__ import annotations

import dataclasses
import json

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from privlearn.fl import tree as T
from privlearn.fl.flower import CONFIG_KEY, AlgorithmStrategy, Fleet, _train, refuse
from privlearn.fl.run import Experiment, RunConfig

N = 3
TINY = dict(
    dataset="digits",
    n_clients=N,
    sampling="all",
    epochs=1,
    batch_size=32,
    model="mclr",
    threads=1,
    engine="sequential",
    algorithm="fedavg",
    out="unused",
)


def _flower_rounds(cfg: RunConfig, tamper=None) -> AlgorithmStrategy:
    """cfg.rounds rounds of the strategy with every node's train function run in process;
    `tamper(round, sent, reply)` may replace a reply."""
    exp = Experiment.build(cfg)
    node_of = {c: 10 + c for c in range(N)}
    strategy = AlgorithmStrategy(Fleet(exp, node_of, [len(c) for c in exp.data.clients]))
    contexts = {
        10 + c: Context(
            run_id=1,
            node_id=10 + c,
            node_config={"partition-id": c, "num-partitions": N},
            state=RecordDict(),
            run_config={CONFIG_KEY: json.dumps(dataclasses.asdict(cfg))},
        )
        for c in range(N)
    }
    for r in range(cfg.rounds):
        sent = strategy.configure_train(r + 1, None, None, None)
        replies = []
        for i, m in enumerate(sent):
            m.metadata.__dict__["_message_id"] = f"r{r}m{i}"  # as Flower's grid sets it
            reply = _train(m, contexts[m.metadata.dst_node_id])
            replies.append(reply if tamper is None else tamper(r, m, reply))
        strategy.aggregate_train(r + 1, replies)
    return strategy


def _engine_rounds(cfg: RunConfig) -> tuple[dict, list]:
    exp = Experiment.build(cfg)
    server, bank = exp.init_state()
    stats = []
    for r in range(cfg.rounds):
        server, s, _ = exp.round(server, bank, r)
        stats.append(s)
    return server, stats


def _gap(a: dict, b: dict) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(T.leaves(a), T.leaves(b), strict=True))


@pytest.fixture(scope="module")
def plain_bytes_up() -> int:
    """Round 0's bytes up without compression."""
    return _flower_rounds(RunConfig(**TINY, rounds=1)).rounds[0]["bytes_up"]


@pytest.mark.parametrize(
    "compress",
    [
        dict(compress="topk", compress_ratio=0.05, error_feedback="ef21"),
        dict(compress="topk", compress_ratio=0.05, error_feedback="ef"),
        dict(compress="randk", compress_ratio=0.1, error_feedback="ef21-sgdm"),
        dict(compress="qsgd", compress_levels=4),
    ],
    ids=["topk-ef21", "topk-ef", "randk-ef21-sgdm", "qsgd"],
)
def test_a_compressed_flower_round_equals_the_compressed_simulation(compress, plain_bytes_up):
    cfg = RunConfig(**TINY, rounds=3, **compress)
    strategy = _flower_rounds(cfg)
    server, stats = _engine_rounds(cfg)
    assert _gap(strategy.server, server) <= 1e-6
    for entry, s in zip(strategy.rounds, stats, strict=True):
        assert entry["rejected"] == [] and entry["upload"] == s.upload
        assert entry["bytes_up"] >= entry["upload"]["bytes"]
    # the payload, not the delta, went up: the reply shrank by most of what compression saved
    saved = stats[0].upload["uncompressed_bytes"] - stats[0].upload["bytes"]
    assert plain_bytes_up - strategy.rounds[0]["bytes_up"] >= 0.9 * saved


def test_a_rejected_payload_leaves_both_memories_as_they_were():
    """Client 1's round-0 payload is cut short: the server names it and leaves its g_1 at 0,
    and node 1, told its round-0 update was not kept, does not commit its g_1 either, so
    round 1 aggregates what a simulation whose engine rejected client 1 in round 0 does."""

    def cut(r, sent, reply):
        if r > 0 or sent.metadata.dst_node_id != 11:
            return reply
        short = ConfigRecord({"payload": reply.content["upload"]["payload"][:9]})
        return Message(
            RecordDict({"update": reply.content["update"], "upload": short}), reply_to=sent
        )

    cfg = RunConfig(**TINY, rounds=2, compress="topk", compress_ratio=0.05, error_feedback="ef21")
    strategy = _flower_rounds(cfg, cut)
    (lost,) = strategy.rounds[0]["rejected"]
    assert lost.startswith("client 1: SuperNode 11: sent a 9-byte payload where"), lost
    assert strategy.rounds[1]["rejected"] == []

    exp = Experiment.build(cfg)
    exp.engine = _Rejecting(exp.engine, round_idx=0, row=1)
    server, bank = exp.init_state()
    for r in range(cfg.rounds):
        exp.engine.round = r
        server, _, _ = exp.round(server, bank, r)
    assert _gap(strategy.server, server) <= 1e-6
    assert _gap(strategy.fleet.memory, {"g": exp.compression.state["g"]}) <= 1e-6


class _Rejecting:
    """An engine that rejects one row in one round (as a malformed reply is rejected)."""

    def __init__(self, engine, round_idx: int, row: int):
        self.engine, self.at, self.row, self.round = engine, round_idx, row, 0

    def run_clients(self, algo, server, states, plan, data):
        result = self.engine.run_clients(algo, server, states, plan, data)
        if self.round == self.at:
            result.rejected[self.row] = "rejected"
        return result


def test_dadaquant_is_refused_on_flower():
    cfg = RunConfig(**TINY, rounds=1, compress="dadaquant")
    with pytest.raises(ValueError, match="config key compress: dadaquant's per-client levels"):
        refuse(cfg)


def test_bench_flower_refuses_dadaquant_before_starting_anything(tmp_path):
    from typer.testing import CliRunner

    from privlearn.cli import app

    work, out = tmp_path / "work", tmp_path / "bench.json"
    args = ["bench", "flower", "--compress", "dadaquant", "--work", str(work), "--out", str(out)]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2 and "dadaquant's per-client levels" in done.output, done.output
    assert not (work / "serve.log").exists() and not out.exists()
