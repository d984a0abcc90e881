"""A run's threat model: who attacks, with what, when, and how the server defends.

`Scenario` is what a round consults (fl/rounds.py): it poisons the attackers' training
rows, wraps the client step for attackers, forges their uploads, and runs the defence over
the screened uploads. It is built once per run from the config and holds the defence's
state between rounds (saved in the checkpoint, so a resumed run defends the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import Algorithm, ClientUpdate, LocalSGD
from privlearn.fl.models import Model
from privlearn.fl.robust.threat import (
    Attack,
    AttackContext,
    Defence,
    DefenceContext,
    Verdict,
    verdict,
)


@dataclass
class Scenario:
    attack: Attack | None
    attackers: np.ndarray  # fixed attacker ids (empty: no attack)
    defence: Defence | None
    clients: list[np.ndarray]  # each client's rows of the pooled training data
    seed: int
    f: int | None = None  # attackers the defence assumes per cohort; None: the true count
    window: tuple[int, int] | None = None  # 1-based rounds [a, b] in which attackers act
    model: Model | None = None
    local: LocalSGD | None = None
    root: tuple[torch.Tensor, torch.Tensor] | None = None
    state: Any = None
    _poisoned: dict = field(default_factory=dict, repr=False)

    @property
    def n_clients(self) -> int:
        return len(self.clients)

    def __post_init__(self) -> None:
        if self.defence is not None and self.state is None:
            self.state = self.defence.init(self.n_clients)
        if self.defence is not None and self.defence.needs_root and self.root is None:
            raise ValueError(f"defence {self.defence.name} needs a server root data set")

    # --- attacker side ---------------------------------------------------------------------

    def active(self, r: int) -> bool:
        """Whether attackers act in round r (0-based)."""
        if self.attack is None or len(self.attackers) == 0:
            return False
        return self.window is None or self.window[0] <= r + 1 <= self.window[1]

    def attacker_rows(self, cohort: torch.Tensor) -> torch.Tensor:
        """[K] bool: which cohort rows the attacker controls."""
        ids = torch.as_tensor(self.attackers, device=cohort.device)
        return (cohort[:, None] == ids[None, :]).any(1)

    def train_data(
        self, x: torch.Tensor, y: torch.Tensor, r: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled training rows of round r, the attackers' rows poisoned while active.
        Poisoned copies are cached per feature tensor (per-round noise gives a new one)."""
        if not self.active(r) or self.attack.data is None:
            return x, y
        key = id(x)
        if key not in self._poisoned:
            rows = {int(c): self.clients[c] for c in self.attackers}
            rng = np.random.default_rng([self.seed, 105])
            self._poisoned = {key: self.attack.data(x, y, rows, rng)}
        return self._poisoned[key]

    def algorithm(self, algo: Algorithm, r: int, server: dict) -> Algorithm:
        """The algorithm attacker rows run in round r (the honest rows' steps are unchanged)."""
        if not self.active(r) or self.attack.wrap is None:
            return algo
        ids = torch.as_tensor(self.attackers)
        return self.attack.wrap(algo, ids, server)

    def forge(
        self, updates: ClientUpdate, cohort: torch.Tensor, server: dict, r: int
    ) -> ClientUpdate:
        """The uploads after attackers rewrite theirs (model poisoning)."""
        if not self.active(r) or self.attack.updates is None:
            return updates
        mask = self.attacker_rows(cohort)
        if not mask.any():
            return updates
        ctx = AttackContext(
            round=r,
            attacker=mask,
            params=server["params"],
            rng=_rng(self.seed, r, 106),
            defence=self.defence,
            n_attackers=len(self.attackers),
        )
        return self.attack.updates(updates, ctx)

    # --- server side -------------------------------------------------------------------------

    def assumed_f(self, cohort: torch.Tensor) -> int:
        return int(self.attacker_rows(cohort).sum()) if self.f is None else self.f

    def check(self, k: int, f: int, where: str = "") -> None:
        """Refuse a cohort of k rows with f attackers that the defence's assumptions forbid."""
        why = None if self.defence is None else self.defence.check(k, f)
        if why is not None:
            raise ValueError(
                f"defence {self.defence.name} cannot run on a cohort of {k}{where} with {f} "
                f"attackers: {why}"
            )

    def most_f(self, k: int) -> int:
        """The most attackers the defence must assume in a cohort of k (checked up front)."""
        return min(k, len(self.attackers)) if self.f is None else self.f

    def defend(
        self, updates: ClientUpdate, cohort: torch.Tensor, server: dict, r: int
    ) -> tuple[ClientUpdate, Verdict]:
        """The updates the algorithm reduces after the defence, and what it decided.

        An algorithm whose server holds one model per cluster (IFCA: each row's choice in
        the "onehot" extra) is defended cluster by cluster, against that cluster's model,
        each cluster with a state of its own: rows of different models are never compared
        or mixed."""
        if self.defence is None:
            return updates, Verdict()
        onehot = updates.extras.get("onehot")
        if onehot is None:
            out, self.state, factor = self._apply(updates, cohort, server, r, self.state)
            return out, verdict(cohort, factor)
        if not (isinstance(self.state, dict) and "per_cluster" in self.state):
            self.state = {"per_cluster": {}}
        states = self.state["per_cluster"]
        chose = onehot.argmax(1)
        parts, factor = [], torch.zeros(len(cohort), dtype=torch.float64)
        for m in chose.unique().tolist():
            rows = torch.nonzero(chose == m).flatten()
            model = {k: T.rows(server[k], m) for k in ("params", "buffers") if k in server}
            state = states.get(m, self.defence.init(self.n_clients))
            out, states[m], fac = self._apply(
                T.rows(updates, rows), cohort[rows], model, r, state, f" (cluster {m})"
            )
            parts.append(out)
            factor[rows.cpu()] = fac.to(torch.float64).cpu()
        return T.cat(parts), verdict(cohort, factor)

    def _apply(
        self,
        updates: ClientUpdate,
        cohort: torch.Tensor,
        server: dict,
        r: int,
        state,
        where: str = "",
    ):
        f = self.assumed_f(cohort)
        self.check(len(cohort), f, where)
        ctx = DefenceContext(
            round=r,
            params=server["params"],
            buffers=server.get("buffers", {}),
            clients=cohort,
            f=f,
            rng=_rng(self.seed, r, 107),
            model=self.model,
            local=self.local,
            root=self.root,
            n_clients=self.n_clients,
        )
        return self.defence.apply(updates, state, ctx)


def _rng(seed: int, r: int, stream: int) -> torch.Generator:
    s = int(np.random.default_rng([seed, r, stream]).integers(2**62))
    return torch.Generator().manual_seed(s)
