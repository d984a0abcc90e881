"""Shared set-up for the matrix-product tests: clients, and running one algorithm end to end."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from privlearn.he import ClientContext, Counts, Evaluator
from privlearn.linalg import Algorithm, BlockShape, Dims, EncMatrix, rotation_keys


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


def evaluator(client: ClientContext, alg: Algorithm, d: Dims, block: BlockShape) -> Evaluator:
    """A server holding exactly the keys ``alg`` needs at this shape (through a bundle
    directory: as bytes, OpenFHE's keys at N=2^16 would be copied several times)."""
    keys, conj = rotation_keys(alg.name, d, block)
    with tempfile.TemporaryDirectory(prefix="privlearn-keys-") as tmp:
        path = client.public_bundle(sorted(keys), conjugation=conj, path=Path(tmp) / "bundle")
        return Evaluator.from_bundle(path)


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
    ev = evaluator(client, alg, d, block)
    ea, eb = alg.encrypt_operands(client, a, b, block, level=level)
    with ev.cost.measure() as counts:
        out = alg(ev, ea, eb)
    return Run(out, counts, ea, eb, a @ b.T if alg.product == "abt" else a.T @ b)


def max_error(r: Run, client: ClientContext) -> float:
    return float(np.max(np.abs(r.out.decrypt(client) - r.want)))
