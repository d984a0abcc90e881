"""Where DP noise comes from: a generator nobody can predict, whose state a checkpoint keeps.

Noise drawn from the run's seed is known to whoever knows the seed, and a guarantee that
assumes secret noise does not hold for it. The generator is therefore seeded from OS entropy;
its state travels in the server or client state (and so in the checkpoint), so a resumed run
draws exactly the noise the uninterrupted one would. A fixed seed (`--dp-seed`) makes runs
repeatable for experiments, and the run's output says it is not private.
"""

from __future__ import annotations

import os

import torch


def noise_state(seed: int | None = None) -> torch.Tensor:
    """The state of a fresh noise generator: from `seed` when given (not private), else from
    64 bits of OS entropy."""
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    return torch.Generator().manual_seed(seed).get_state()


def draw_normal(
    state: torch.Tensor, shapes: list[torch.Size]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Standard normal draws of the given shapes from a generator `state` (CPU, float64),
    and the state after them. Callers scale and cast: the draw never depends on the device."""
    g = torch.Generator()
    g.set_state(state.clone())  # set_state misreads a view (a row of a stack) and crashes
    out = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    return out, g.get_state()
