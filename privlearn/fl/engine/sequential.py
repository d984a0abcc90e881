"""The reference engine: one client after another, one step after another, no padding.

It calls the same pure algorithm functions as the vectorised engine, unbatched, on
unpadded batches (mask all ones), so it is the plain loop a reader can check by eye. It is
also where a malformed update (wrong fields or shapes) can appear, since each client's
update is built on its own before stacking; such a client is recorded as rejected."""

from __future__ import annotations

from typing import Any

from privlearn.fl import tree as T
from privlearn.fl.aggregate import shape_mismatch
from privlearn.fl.algorithms.base import Algorithm
from privlearn.fl.engine.base import CohortResult, TrainData, client_info, poisoned
from privlearn.fl.plan import RoundPlan


class SequentialEngine:
    name = "sequential"

    def run_clients(
        self, algo: Algorithm, server: dict, client_states: Any, plan: RoundPlan, data: TrainData
    ) -> CohortResult:
        info_all = client_info(plan, data.dtype)
        updates, states, rejected = [], [], {}
        template = None
        for row in range(len(plan)):
            cs = T.rows(client_states, row)
            info = T.rows(info_all, row)
            if algo.client_score is not None:
                info["score"] = sum(
                    algo.client_score(server, cs, info, data.batch(plan.client_batch(row, t)))
                    for t in range(int(plan.nb[row]))
                )
            local = algo.client_init(server, cs, info)
            if template is None:  # what a well-formed update looks like: no training needed
                template = algo.client_final(server, local)[0]
            for t in range(int(plan.steps[row])):
                batch = data.batch(plan.client_batch(row, t))
                if algo.step_noise is not None:  # local DP: this client's own noise draws
                    local, batch["noise"] = algo.step_noise(local, False)
                local = algo.client_step(local, batch)
            update, new_cs = algo.client_final(server, local)
            reason = shape_mismatch(update, template)
            if reason is not None:  # keep the row, poisoned, so screening drops it by name
                rejected[row] = f"malformed update: {reason}"
                update = T.tree_map(poisoned, template)
                new_cs = cs
            updates.append(update)
            states.append(new_cs)
        return CohortResult(T.stack(updates), T.stack(states), rejected)
