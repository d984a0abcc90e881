from __future__ import annotations

import numpy as np
import pytest

from privlearn.approx import rows
from privlearn.approx.planner import LevelManager
from privlearn.he import ClientContext, Evaluator
from tests.conftest import BACKENDS

ROTATIONS = sorted(set(rows.rotations(16)) | {k for c in (3, 4) for k in range(-c, c)} - {0})


@pytest.fixture(scope="package", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="package")
def client(backend) -> ClientContext:
    return ClientContext.create("toy-n12", backend, seed=3, insecure_for_testing=True)


@pytest.fixture(scope="package")
def ev(client) -> Evaluator:
    return Evaluator.from_bundle(client.public_bundle(ROTATIONS), insecure_for_testing=True)


@pytest.fixture
def lm(ev) -> LevelManager:
    return LevelManager(ev)


def noise_tol(client: ClientContext) -> float:
    """Room for CKKS noise through the deepest computations here (toy-n12: ~36 bits fresh)."""
    return 1e-6 if client.is_real_encryption else 1e-7


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)
