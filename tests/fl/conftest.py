"""FL test set-up: one thread for torch and for numpy's BLAS (the CI box is small and
shared; several threads on contended cores make these small workloads far slower)."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits

torch.set_num_threads(1)
threadpool_limits(1)


@pytest.fixture(scope="session")
def digits_dir():
    """digits over 6 clients by Dirichlet(0.5), with 20 % of each client held out."""
    from privlearn.fl.data import DataSpec, build_federated

    return build_federated(
        DataSpec("digits", 6, "label-dirichlet", beta=0.5, local_test_fraction=0.2), seed=0
    )
