"""Shared set-up for the matrix-product tests: clients, and running one algorithm end to end."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from privlearn.he import ClientContext, Counts
from privlearn.linalg import Algorithm, BlockShape, Dims, EncMatrix, keyed_evaluator


@pytest.fixture(scope="session")
def full_sim() -> ClientContext:
    """n16-d24 on the simulator: HETAL's 2^15 slots, fast."""
    return ClientContext.create("n16-d24", "simulator", seed=0)


@pytest.fixture(scope="session")
def toy_sim() -> ClientContext:
    return ClientContext.create("toy-n12", "simulator", seed=0, insecure_for_testing=True)


@pytest.fixture(scope="session")
def toy_openfhe() -> ClientContext:
    return ClientContext.create("toy-n12", "openfhe", insecure_for_testing=True)


@dataclass
class Run:
    out: EncMatrix
    counts: Counts
    a: EncMatrix
    b: EncMatrix
    want: np.ndarray


def operands(alg: Algorithm, d: Dims, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sa, sb = alg.operand_shapes(d)
    return rng.uniform(-1, 1, sa), rng.uniform(-1, 1, sb)


def run(
    client: ClientContext,
    alg: Algorithm,
    d: Dims,
    block: BlockShape,
    *,
    seed: int = 0,
    level: int | None = None,
) -> Run:
    """Encrypt random operands, run ``alg`` on a fresh evaluator, and count what it did."""
    a, b = operands(alg, d, seed)
    ev = keyed_evaluator(client, alg.name, d, block)
    ea, eb = alg.encrypt_operands(client, a, b, block, level=level)
    with ev.cost.measure() as counts:
        out = alg(ev, ea, eb)
    return Run(out, counts, ea, eb, a @ b.T if alg.product == "abt" else a.T @ b)


def max_error(r: Run, client: ClientContext) -> float:
    return float(np.max(np.abs(r.out.decrypt(client) - r.want)))
