"""The vectorised engine computes what the sequential reference computes, for every
algorithm: same seed, same plan, results equal to float tolerance."""

from __future__ import annotations

import pytest
import torch

from privlearn.fl.algorithms import ALGORITHMS
from privlearn.fl.engine import make_engine

from .helpers import LocalWork, Sampling, make, max_abs_diff, run

# unequal work on purpose: heterogeneous epochs, partial-work stragglers, a partial cohort
WORK = LocalWork(
    epochs=2, batch_size=16, epochs_range=(1, 3), stragglers=0.34, straggler_policy="partial"
)
SAMPLING = Sampling("uniform", 4)
HP = {
    "fedfomo": {"n_candidates": 2},
    "pfedme": {"inner_steps": 2},
    "perfedavg": {"variant": "hf"},
    "ifca": {"n_clusters": 3},
}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_vectorised_matches_sequential(name, digits_dir):
    model, algo = make(name, digits_dir, momentum=0.5, weight_decay=1e-3, **HP.get(name, {}))
    # batch norm on the 1-3 sample tails of some batches is ill-conditioned in float32 (both
    # engines agree to 1e-12 in float64, to ~1e-3 in float32), so BN models compare in float64
    dtype = torch.float64 if model.local_keys else torch.float32
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    out = {}
    for engine in ("sequential", "vectorised"):
        out[engine] = run(
            algo, model, digits_dir, make_engine(engine), 2, SAMPLING, WORK, dtype=dtype
        )
    seq, vec = out["sequential"], out["vectorised"]
    assert max_abs_diff(seq[0], vec[0]) < tol  # server state
    assert max_abs_diff(seq[1], vec[1]) < tol  # every client's persistent state
    for a, b in zip(seq[2], vec[2], strict=True):
        assert a.clients == b.clients and a.train_loss == pytest.approx(b.train_loss, rel=1e-4)


@pytest.mark.parametrize("name", ["fedavg", "scaffold", "ifca"])
def test_chunked_vectorised_matches_sequential(name, digits_dir):
    model, algo = make(name, digits_dir, momentum=0.9)
    seq = run(algo, model, digits_dir, make_engine("sequential"), 2, SAMPLING, WORK)
    vec = run(algo, model, digits_dir, make_engine("vectorised", chunk_size=3), 2, SAMPLING, WORK)
    assert max_abs_diff(seq[0], vec[0]) < 2e-5 and max_abs_diff(seq[1], vec[1]) < 2e-5


def test_same_seed_repeats_exactly_and_another_seed_differs(digits_dir):
    model, algo = make("scaffold", digits_dir)
    a = run(algo, model, digits_dir, make_engine("vectorised"), 2, SAMPLING, WORK, seed=5)
    b = run(algo, model, digits_dir, make_engine("vectorised"), 2, SAMPLING, WORK, seed=5)
    c = run(algo, model, digits_dir, make_engine("vectorised"), 2, SAMPLING, WORK, seed=6)
    assert max_abs_diff(a[0], b[0]) == 0.0
    assert max_abs_diff(a[0], c[0]) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fedprox", "scaffold"])
def test_compiled_vectorised_matches_sequential(name, digits_dir):
    model, algo = make(name, digits_dir, momentum=0.5)
    seq = run(algo, model, digits_dir, make_engine("sequential"), 2, SAMPLING, WORK)
    vec = run(algo, model, digits_dir, make_engine("vectorised", compile=True), 2, SAMPLING, WORK)
    assert max_abs_diff(seq[0], vec[0]) < 2e-5 and max_abs_diff(seq[1], vec[1]) < 2e-5
