"""Scoring models: the global model on the global test set, personal models on each
client's own test rows."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import Algorithm
from privlearn.fl.data.datasets import FederatedDataset
from privlearn.fl.models import Model


@torch.no_grad()
def accuracy(
    model: Model, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor, batch: int = 2048
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a model on (x, y), in eval mode."""
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch):
        logits, _ = model.apply(params, buffers, x[i : i + batch], train=False)
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
        loss += float(F.cross_entropy(logits, y[i : i + batch], reduction="sum"))
    n = max(len(y), 1)
    return correct / n, loss / n


@torch.no_grad()
def global_accuracy(
    algo: Algorithm, model: Model, server: dict, ds: FederatedDataset
) -> tuple[float, float] | None:
    """The server model on the pooled test set; None for algorithms without one."""
    gm = algo.global_model(server)
    if gm is None:
        return None
    return accuracy(model, gm[0], gm[1], ds.x_test, ds.y_test)


def personal_accuracy(
    algo: Algorithm, model: Model, server: dict, bank: Any, ds: FederatedDataset, batch_size: int
) -> float | None:
    """Test accuracy of each client's personal model on its own test rows, pooled over
    clients (total correct / total rows). None when the algorithm or data has none."""
    if algo.personal_model is None or ds.local_tests is None:
        return None
    correct = total = 0
    for k in range(ds.n_clients):
        test = torch.as_tensor(ds.local_tests[k], device=ds.x_local.device)
        if len(test) == 0:
            continue
        train = torch.as_tensor(
            ds.clients[k][: batch_size * algo.batches_per_step], device=ds.x_train.device
        )
        batch = {
            "x": ds.x_train[train],
            "y": ds.y_train[train],
            "mask": torch.ones(len(train), device=ds.x_train.device),
        }
        info = {
            "id": torch.tensor(k, device=ds.x_train.device),
            "n": torch.tensor(float(len(ds.clients[k])), device=ds.x_train.device),
        }
        params, buffers = algo.personal_model(server, T.rows(bank, k), info, batch)
        with torch.no_grad():
            logits, _ = model.apply(params, buffers, ds.x_local[test], train=False)
        correct += int((logits.argmax(1) == ds.y_local[test]).sum())
        total += len(test)
    return correct / total if total else None
