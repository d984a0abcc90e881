from __future__ import annotations

import pytest

from privlearn.he import ClientContext, Evaluator
from tests.conftest import BACKENDS

ROTATIONS = [1, 2, 3, 5, 8, 100, -1, -7]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def client(backend) -> ClientContext:
    return ClientContext.create("toy-n12", backend, seed=1, insecure_for_testing=True)


@pytest.fixture(scope="module")
def ev(client) -> Evaluator:
    return Evaluator.from_bundle(
        client.public_bundle(ROTATIONS, conjugation=True), insecure_for_testing=True
    )
