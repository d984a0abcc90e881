"""What engines share: the cohort's inputs, their result, and the Engine protocol.

An engine runs one round's cohort: client_init, the planned local steps, client_final.
It returns stacked updates in plan order. The vectorised engine is checked against the
sequential one (same plan, same algorithm) to float tolerance, the ray engine against the
vectorised one. An engine that starts processes (ray) also has `close()`, which
`Experiment.close` calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from privlearn.fl.algorithms.base import Algorithm, ClientUpdate
from privlearn.fl.plan import RoundPlan


@dataclass(frozen=True)
class TrainData:
    """The pooled training rows the plan's indices point into (on the engine's device)."""

    x: torch.Tensor
    y: torch.Tensor

    @property
    def dtype(self) -> torch.dtype:
        """The precision of weights computed from the data (masks, sample counts)."""
        return self.x.dtype if self.x.is_floating_point() else torch.get_default_dtype()

    def batch(self, idx: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        """Rows `idx` with their mask (default: all real). An empty unpadded batch (a Poisson
        draw that took no record) becomes one padding row, so that per-sample vmaps have a
        row to map over and the step still runs (a DP-SGD step then adds only noise)."""
        if mask is None and idx.numel() == 0:
            idx = torch.zeros(1, dtype=idx.dtype, device=idx.device)
            mask = torch.zeros(1, device=self.x.device)
        # the mask weighs losses and counts: in the features' precision, so float64 runs stay exact
        m = torch.ones(idx.shape, device=self.x.device) if mask is None else mask
        return {"x": self.x[idx], "y": self.y[idx], "mask": m.to(self.dtype)}


@dataclass
class CohortResult:
    updates: ClientUpdate  # stacked: each field has a leading client axis, rows in plan order
    client_states: Any  # stacked new client states, rows in plan order
    rejected: dict[int, str] = field(default_factory=dict)  # plan row -> reason (engine-level)


class Engine(Protocol):
    name: str

    def run_clients(
        self, algo: Algorithm, server: dict, client_states: Any, plan: RoundPlan, data: TrainData
    ) -> CohortResult: ...


def client_info(plan: RoundPlan, dtype: torch.dtype) -> dict:
    """What client_init learns about each cohort member: its id and sample count (in the
    data's precision: update weights built from it meet float64 deltas in float64 runs)."""
    return {"id": plan.clients, "n": plan.n.to(dtype)}


def untrained_update(
    algo: Algorithm, server: dict, client_state: Any, info: dict, probe: dict | None
) -> ClientUpdate:
    """What a well-formed update looks like, without training: client_final right after
    client_init (`probe`, one batch, gives the score of algorithms that score clients)."""
    if algo.client_score is not None:
        info = {**info, "score": algo.client_score(server, client_state, info, probe)}
    return algo.client_final(server, algo.client_init(server, client_state, info))[0]


def poisoned(t: torch.Tensor) -> torch.Tensor:
    """A rejected client's stand-in leaf: NaN, or 0 where the field holds integers (so that
    screening drops the row by name)."""
    return torch.full_like(t, float("nan")) if t.is_floating_point() else torch.zeros_like(t)
