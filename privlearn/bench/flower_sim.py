"""The speed benchmark's Flower side: Flower's own simulation (Ray backend) running FedAvg
with a ClientApp that does the same local training as privlearn's engines.

Same work, step for step: the ServerApp samples privlearn's cohort for each round (a
FedAvg strategy whose `configure_train` follows `plan_round`), and each ClientApp draws
its sample order with `client_order`, exactly as privlearn's engines do, then trains with
plain PyTorch (autograd and `torch.optim.SGD`). Aggregation is Flower's own sample-weighted
average. So the final models agree with privlearn's to float tolerance, and the timing
difference is the cost of the two ways of running clients.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from privlearn.fl.plan import batches_per_epoch, client_order, plan_round
from privlearn.fl.run import Experiment, RunConfig

_CACHE: dict[str, Any] = {}  # per Ray worker process: the dataset and model, built once


def _experiment(cfg_dict: dict) -> Experiment:
    key = repr(sorted(cfg_dict.items()))
    if _CACHE.get("key") != key:
        torch.set_num_threads(1)
        _CACHE.update(key=key, exp=Experiment.build(RunConfig(**cfg_dict)))
    return _CACHE["exp"]


def local_train(
    exp: Experiment, params: dict, client: int, round_idx: int, steps: int, epochs: int
) -> dict:
    """Plain PyTorch local training of one client for one round (the ClientApp's work)."""
    cfg = exp.cfg
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.SGD(
        leaves.values(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    idx = exp.data.clients[client]
    order = torch.as_tensor(client_order(idx, cfg.seed, round_idx, client, epochs))
    n, b = len(idx), cfg.batch_size
    nb = batches_per_epoch(n, b, cfg.drop_last)
    for t in range(steps):
        e, k = divmod(t, nb)
        rows = order[e * n + k * b : e * n + min((k + 1) * b, n)]
        logits, _ = exp.model.apply(leaves, {}, exp.data.x_train[rows], train=True)
        loss = F.cross_entropy(logits, exp.data.y_train[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in leaves.items()}


def run_flower(cfg: RunConfig, rounds: int, workers: int = 2) -> dict:
    """Run `rounds` FedAvg rounds in Flower's simulation; returns per-round seconds, the
    final parameters and the final test accuracy."""
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
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    if cfg.algorithm != "fedavg" or cfg.stragglers or cfg.epochs_range:
        raise ValueError("the Flower comparison runs plain FedAvg with fixed local epochs")
    cfg_dict = {**cfg.__dict__, "engine": "sequential", "compile": False, "threads": 1}
    exp = Experiment.build(RunConfig(**cfg_dict))
    server0, _ = exp.init_state()
    out: dict[str, Any] = {"round_seconds": []}

    client_app = ClientApp()

    @client_app.query()
    def whoami(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"m": MetricRecord({"pid": pid})}), reply_to=msg)

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        ex = _experiment(cfg_dict)
        pid = int(context.node_config["partition-id"])
        c = msg.content["config"]
        params = msg.content["arrays"].to_torch_state_dict()
        new = local_train(ex, params, pid, int(c["round"]), int(c["steps"]), int(c["epochs"]))
        metrics = MetricRecord({"num-examples": len(ex.data.clients[pid])})
        return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=msg)

    class PlannedFedAvg(FedAvg):
        """FedAvg whose cohort and per-client work follow privlearn's round plan."""

        def __init__(self, node_of: dict[int, int]):
            super().__init__(fraction_evaluate=0.0, min_available_nodes=cfg.n_clients)
            self.node_of = node_of

        def configure_train(self, server_round, arrays, config, grid):
            self.t0 = time.perf_counter()
            r = server_round - 1
            plan = plan_round(exp.data.clients, cfg.sampling_spec(), cfg.work(), cfg.seed, r)
            messages = []
            for row, client in enumerate(plan.clients.tolist()):
                nb = int(plan.nb[row])
                steps = int(plan.steps[row])
                conf = ConfigRecord({"round": r, "steps": steps, "epochs": -(-steps // nb)})
                messages.append(
                    Message(
                        RecordDict({"arrays": arrays, "config": conf}),
                        message_type=MessageType.TRAIN,
                        dst_node_id=self.node_of[client],
                    )
                )
            return messages

        def aggregate_train(self, server_round, replies):
            result = super().aggregate_train(server_round, replies)
            out["round_seconds"].append(time.perf_counter() - self.t0)
            return result

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        nodes = list(grid.get_node_ids())
        while len(nodes) < cfg.n_clients:
            time.sleep(0.2)
            nodes = list(grid.get_node_ids())
        queries = [
            Message(
                RecordDict({"q": ConfigRecord({"who": 1})}),
                message_type=MessageType.QUERY,
                dst_node_id=n,
            )
            for n in nodes
        ]
        replies = grid.send_and_receive(queries)
        node_of = {int(m.content["m"]["pid"]): m.metadata.src_node_id for m in replies}
        t0 = time.perf_counter()
        result = PlannedFedAvg(node_of).start(
            grid, ArrayRecord(server0["params"]), num_rounds=rounds
        )
        out["train_seconds"] = time.perf_counter() - t0
        out["params"] = result.arrays.to_torch_state_dict()

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=cfg.n_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": workers, "num_gpus": 0, "include_dashboard": False},
        },
    )
    if "params" not in out:
        raise RuntimeError("the Flower simulation ended without a final model; see its log")
    params = {k: v.to(torch.float32) for k, v in out["params"].items()}
    from privlearn.fl.evaluate import accuracy

    out["test_acc"] = accuracy(exp.model, params, {}, exp.data.x_test, exp.data.y_test)[0]
    out["params"] = params
    out["round_seconds"] = [float(s) for s in np.asarray(out["round_seconds"])]
    return out
