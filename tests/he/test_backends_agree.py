"""The simulator tracks levels, costs and noise like OpenFHE for the same code."""

from __future__ import annotations

import numpy as np
import pytest

from privlearn.he import ClientContext, Evaluator


def _program(client, ev, x):
    """A small circuit touching every kind of op, returning its result and level trace."""
    a = client.encrypt(x)
    b = client.encrypt(x[::-1].copy(), level=client.params.depth - 2)
    trace = []
    t = ev.mul(a, a)
    trace.append(t.level)
    t = ev.add(ev.mul(t, 0.75, rescale=False), ev.mul(t, x, rescale=False))
    t = ev.rescale(t)
    trace.append(t.level)
    t = ev.mul(t, b)
    trace.append(t.level)
    r = ev.rotate_many(t, [1, 2])
    t = ev.add(ev.add(r[1], r[2]), ev.conjugate(t))
    t = ev.level_down(ev.mul(t, 3), 5)
    trace.append(t.level)
    return t, trace


@pytest.mark.openfhe
def test_same_levels_same_counts_similar_values():
    x = np.random.default_rng(3).uniform(-0.9, 0.9, 2048)
    results = {}
    for backend in ("simulator", "openfhe"):
        client = ClientContext.create("toy-n12", backend, seed=0, insecure_for_testing=True)
        ev = Evaluator.from_bundle(
            client.public_bundle([1, 2], conjugation=True), insecure_for_testing=True
        )
        out, trace = _program(client, ev, x)
        results[backend] = (client.decrypt(out), trace, ev.cost.total.as_dict())
    (sv, st, sc), (ov, ot, oc) = results["simulator"], results["openfhe"]
    assert st == ot
    assert sc == oc
    assert np.max(np.abs(sv - ov)) < 1e-7


@pytest.mark.openfhe
def test_simulator_noise_matches_openfhe_within_a_factor_of_two():
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, 2048)
    errs = {}
    for backend in ("simulator", "openfhe"):
        client = ClientContext.create("toy-n12", backend, seed=0, insecure_for_testing=True)
        ev = Evaluator.from_bundle(client.public_bundle([1]), insecure_for_testing=True)
        c = client.encrypt(x)
        fresh = client.decrypt(c) - x
        prod = client.decrypt(ev.mul(c, c)) - x * x
        rot = client.decrypt(ev.rotate(c, 1)) - np.roll(x, -1)
        errs[backend] = np.array([fresh.std(), prod.std(), rot.std()])
    ratio = errs["simulator"] / errs["openfhe"]
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
