"""Shared test set-up. With CI=true a missing OpenFHE fails the run instead of skipping."""

from __future__ import annotations

import os

import pytest

from privlearn.he import available_backends

_REASON = available_backends()["openfhe"]
HAVE_OPENFHE = _REASON is None
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config):
    if IN_CI and not HAVE_OPENFHE:
        raise pytest.UsageError(f"CI=true but the OpenFHE backend does not load: {_REASON}")


def pytest_collection_modifyitems(config, items):
    if HAVE_OPENFHE:
        return
    skip = pytest.mark.skip(reason=f"OpenFHE not available: {_REASON}")
    for item in items:
        if "openfhe" in item.keywords:
            item.add_marker(skip)


BACKENDS = ["simulator", pytest.param("openfhe", marks=pytest.mark.openfhe)]
