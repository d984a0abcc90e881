"""The vectorised engine: a whole cohort trains in one process with no loop over clients.

Clients' states are stacked along a leading axis; one `torch.func.vmap` of the algorithm's
`client_step` advances every client by one local step. Unequal data are handled by:
- sample masks: each step's batch is padded to B rows, padding has mask 0 and the loss
  averages over real rows only;
- step-count grouping: clients are sorted by planned steps (most first), and once a client
  has taken all its steps its rows leave the stack, so no padded step is ever computed for
  it (a heavy-tailed cohort costs the longest client's steps, not K times that); when one
  client is left, its remaining steps run unbatched, without vmap's per-call overhead;
- chunks: at most `chunk_size` clients are stacked at once, chosen from a memory budget when
  not given.

With `compile=True` the vmapped step goes through `torch.compile`. The stack's size then
shrinks in powers of two (rows of finished clients are carried along, masked, until the next
power of two) so that at most log2(K) + 1 shapes are compiled.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import vmap

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import Algorithm, is_real
from privlearn.fl.engine.base import CohortResult, TrainData, client_info
from privlearn.fl.plan import RoundPlan


def _gated(step):
    """A step that leaves a client's state untouched when its batch has no real sample."""

    def run(local, batch):
        new = step(local, batch)
        keep = is_real(batch) > 0
        return T.tree_map(lambda n, o: torch.where(keep, n, o), new, local)

    return run


def memory_budget_bytes(device: torch.device) -> int:
    """Half the free accelerator memory, or a quarter of the available host RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    try:
        with open("/proc/meminfo") as fh:
            avail = next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable"))
        return avail * 1024 // 4
    except (OSError, StopIteration):
        return 2 * 1024**3


class VectorisedEngine:
    name = "vectorised"

    def __init__(self, chunk_size: int | None = None, compile: bool = False):
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.compile = compile
        self._cache: dict[int, Any] = {}

    def _fns(self, algo: Algorithm):
        key = id(algo)
        if self.compile and algo.step_noise is not None:
            # the compiled step is gated on non-empty batches; a DP step on an empty one is not
            raise ValueError("local DP runs on the eager vectorised engine: set compile off")
        if key not in self._cache:
            step = vmap(_gated(algo.client_step) if self.compile else algo.client_step)
            if self.compile:
                # graphs of a previous algorithm share the vmap wrapper's code object and
                # would count against (and crowd) this one's recompile budget
                torch._dynamo.reset()
                # one graph per stack width: up to log2(K) + 1 widths for a cohort of K
                torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
                step = torch.compile(step, dynamic=False)
            self._cache = {
                key: (
                    vmap(algo.client_init, in_dims=(None, 0, 0)),
                    step,
                    vmap(algo.client_final, in_dims=(None, 0)),
                    None
                    if algo.client_score is None
                    else vmap(algo.client_score, in_dims=(None, 0, 0, 0)),
                    algo,  # keep the algorithm alive so id() stays unique while cached
                )
            }
        return self._cache[key]

    def _chunk(
        self, init, score, server, client_states, info, plan, data, order, per_sample
    ) -> int:
        """Clients per stack from the memory budget, measured on one client's local state."""
        rows = order[:1]
        inf = T.rows(info, rows)
        if score is not None:
            inf["score"] = self._score(score, server, client_states, info, plan, data, rows)
        probe = init(server, T.rows(client_states, rows), inf)
        state_bytes = sum(t.numel() * t.element_size() for t in T.leaves(probe))
        sample_bytes = data.x[:1].numel() * data.x.element_size()
        # state, its gradient and optimiser temporaries (~4x), the batch, activations (~16x)
        per_client = 4 * state_bytes + 17 * plan.batch_size * sample_bytes
        if per_sample:  # local DP-SGD: a gradient per sample, and temporaries of its size
            per_client += 2 * plan.batch_size * state_bytes
        return max(1, int(memory_budget_bytes(data.x.device) // max(per_client, 1)))

    def run_clients(
        self, algo: Algorithm, server: dict, client_states: Any, plan: RoundPlan, data: TrainData
    ) -> CohortResult:
        init, step, final, score, _ = self._fns(algo)
        k = len(plan)
        info = client_info(plan, data.dtype)
        # most steps first; stable so equal counts keep plan order
        order = torch.argsort(-plan.steps, stable=True)
        chunk = self.chunk_size or self._chunk(
            init, score, server, client_states, info, plan, data, order, algo.step_noise is not None
        )
        ups, states = [], []
        for lo in range(0, k, chunk):
            rows = order[lo : lo + chunk]
            cs = T.rows(client_states, rows)
            inf = T.rows(info, rows)
            if score is not None:
                inf["score"] = self._score(score, server, client_states, info, plan, data, rows)
            local = init(server, cs, inf)
            local = self._train(step, local, plan, data, rows, algo)
            u, s = final(server, local)
            ups.append(u)
            states.append(s)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(k, device=order.device)
        return CohortResult(T.rows(T.cat(ups), inverse), T.rows(T.cat(states), inverse))

    def _score(self, score, server, client_states, info, plan, data, rows):
        """Sum client_score over each client's first epoch (all its samples once)."""
        cs, inf = T.rows(client_states, rows), T.rows(info, rows)
        nb = plan.nb[rows]
        total = None
        for t in range(int(nb.max())):
            idx, mask = plan.batch_rows(rows, t, limit=nb)
            s = score(server, cs, inf, data.batch(idx, mask))
            total = s if total is None else total + s
        return total

    def _train(
        self, step, local: Any, plan: RoundPlan, data: TrainData, rows: torch.Tensor, algo
    ) -> Any:
        single_step, noise = algo.client_step, algo.step_noise
        steps = plan.steps[rows].tolist()  # descending
        if not steps or steps[0] == 0:
            return local
        if self.compile:  # compiled graphs are specialised on strides: no expanded views
            local = T.tree_map(lambda t: t.contiguous(), local)
        widths = self._widths(steps)
        idx, mask, at = plan.step_batches(rows, widths)
        mask = mask.to(data.dtype)
        done = []  # rows of clients that finished, most recently finished first
        width = len(rows)
        for t, keep in enumerate(widths):
            if keep < width:
                done.append(T.rows(local, slice(keep, width)))
                local = T.rows(local, slice(0, keep))
                width = keep
            if width == 1 and not self.compile:
                # one client left (a heavy tail): unbatched steps skip vmap's overhead
                one = T.rows(local, 0)
                real = mask[at[t] :].sum(1).to(torch.long).tolist()  # unpadded, as sequential
                for tt in range(t, len(widths)):
                    batch = data.batch(idx[at[tt], : real[at[tt] - at[t]]])
                    if noise is not None:
                        one, batch["noise"] = noise(one, False)
                    one = single_step(one, batch)
                local = T.tree_map(lambda v: v.unsqueeze(0), one)
                break
            batch = data.batch(idx[at[t] : at[t + 1]], mask[at[t] : at[t + 1]])
            if noise is not None:
                local, batch["noise"] = noise(local, True)
            local = step(local, batch)
        return T.cat([local] + done[::-1])

    def _widths(self, steps: list[int]) -> list[int]:
        """Rows stacked at each step, for clients sorted by descending step counts."""
        widths, width, active = [], len(steps), len(steps)
        for t in range(steps[0]):
            while active > 0 and steps[active - 1] <= t:
                active -= 1
            width = self._stack_width(active, width)
            widths.append(width)
        return widths

    def _stack_width(self, active: int, width: int) -> int:
        """How many rows to keep stacked: exactly the active ones in eager mode; the next power
        of two (at most the current width) when compiled, to bound recompilation."""
        if not self.compile:
            return active
        return min(width, 1 << max(active - 1, 0).bit_length())
