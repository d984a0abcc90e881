"""NIID-Bench partitions: golden index lists from the reference code, and properties."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privlearn.fl.data import partition as P
from privlearn.fl.data.heterogeneity import label_counts
from privlearn.fl.data.synthetic import fcube

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE_NAMES = {
    "homo": ("homo", {}),
    "noniid-labeldir": ("label-dirichlet", {}),
    "noniid-#label1": ("label-quantity", {"k": 1}),
    "noniid-#label2": ("label-quantity", {"k": 2}),
    "noniid-#label3": ("label-quantity", {"k": 3}),
    "iid-diff-quantity": ("quantity-dirichlet", {}),
    "mixed": ("mixed", {}),
}
GOLDEN = json.loads((FIXTURES / "niid_partitions.json").read_text())


@pytest.mark.parametrize(
    "case", GOLDEN["cases"], ids=lambda c: f"{c['labels']}-{c['scheme']}-seed{c['seed']}"
)
def test_reference_partitions_reproduced_exactly(case):
    labels = np.array(GOLDEN["labels"][case["labels"]])
    scheme, kw = REFERENCE_NAMES[case["scheme"]]
    ours = P.partition(labels, case["n_clients"], scheme, case["seed"], beta=case["beta"], **kw)
    assert [p.tolist() for p in ours] == case["parts"]


def test_fcube_matches_reference_points():
    ref = json.loads((FIXTURES / "fcube.json").read_text())
    train, test = fcube(4, seed=0)
    x = np.concatenate([u.x for u in train]).astype(np.float64)
    np.testing.assert_allclose(x[:5], ref["x_train_head"], rtol=1e-7)
    assert x.sum() == pytest.approx(ref["x_train_sum"], rel=1e-9)
    assert sum(int(u.y.sum()) for u in train) == ref["y_train_sum"]
    np.testing.assert_allclose(test.x[:5], ref["x_test_head"], rtol=1e-7)
    assert int(test.y.sum()) == ref["y_test_sum"]
    offsets = np.cumsum([0] + [len(u.y) for u in train])
    assert [[int(offsets[i]), int(offsets[i + 1] - 1)] for i in range(4)] == ref["parts_first_last"]


def test_fcube_geometry():
    train, test = fcube(4, seed=3)
    x = np.concatenate([u.x for u in train])
    y = np.concatenate([u.y for u in train])
    assert x.shape == (4000, 3) and np.abs(x).max() <= 1
    # label 0 points have p1 >= 0, label 1 points are their mirror images
    assert (x[y == 0, 0] >= 0).all() and (x[y == 1, 0] <= 0).all()
    # each client holds one symmetric pair of octants: the sign pattern of (p2, p3)
    for u in train:
        signs = {
            tuple(np.sign(p[1:]) * (1 if lab == 0 else -1))
            for p, lab in zip(u.x, u.y, strict=False)
        }
        assert len(signs) == 1
    assert ((test.x[:, 0] <= 0) == (test.y == 1)).all()


labels_st = st.integers(2, 10).flatmap(
    lambda k: st.lists(st.integers(0, k - 1), min_size=200, max_size=600).map(np.array)
)


def _is_cover(parts, n):
    allidx = np.concatenate(parts)
    return len(allidx) == n and len(np.unique(allidx)) == n


@settings(max_examples=25, deadline=None)
@given(labels=labels_st, n=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_homogeneous_is_a_near_equal_disjoint_cover(labels, n, seed):
    parts = P.homogeneous(labels, n, seed)
    assert _is_cover(parts, len(labels))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=25, deadline=None)
@given(
    labels=labels_st,
    n=st.integers(2, 8),
    beta=st.sampled_from([0.1, 0.5, 5.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_label_dirichlet_cover_min_size_and_balancing_rule(labels, n, beta, seed):
    if len(labels) < 10 * n * 2:
        return
    k = int(labels.max()) + 1
    parts = P.label_dirichlet(labels, n, beta, seed, n_classes=k)
    assert _is_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= P.MIN_PARTY_SIZE
    counts = label_counts(labels, parts, k)
    before = np.cumsum(counts, axis=1) - counts  # samples a client held before each class
    # balancing: a client that already held >= n/N samples gets proportion 0 of later classes;
    # the reference cuts at int(cumsum(p) * n_c), where float rounding of a cumsum that should
    # be exactly 1 (0.9999...) can still hand the last such client one sample
    assert (counts[before >= len(labels) / n] <= 1).all()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 12), k=st.integers(1, 10), seed=st.integers(0, 2**31 - 1))
def test_label_quantity_gives_each_client_k_classes(n, k, seed):
    labels = np.repeat(np.arange(10), 40)
    parts = P.label_quantity(labels, n, k, seed, n_classes=10)
    counts = label_counts(labels, parts, 10)
    assert ((counts > 0).sum(axis=1) == k).all()
    for i in range(n):
        assert counts[i, i % 10] > 0  # client i always holds class i % K
    held = counts.sum(axis=0) > 0
    # each held class is split in near-equal chunks among its holders, nothing duplicated
    for c in np.flatnonzero(held):
        owners = counts[:, c][counts[:, c] > 0]
        assert owners.sum() == 40 and owners.max() - owners.min() <= 1
    allidx = np.concatenate(parts)
    assert len(allidx) == len(np.unique(allidx))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 6), beta=st.sampled_from([0.5, 1.0, 5.0]), seed=st.integers(0, 2**31 - 1))
def test_quantity_dirichlet_cover_and_min_size(n, beta, seed):
    labels = np.arange(500) % 7
    parts = P.quantity_dirichlet(labels, n, beta, seed)
    assert _is_cover(parts, 500)
    assert min(len(p) for p in parts) >= P.MIN_PARTY_SIZE - 1  # cuts floor cumsum(q) n


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 10), seed=st.integers(0, 2**31 - 1))
def test_mixed_gives_two_classes_per_client_and_two_holders_per_class(n, seed):
    labels = np.repeat(np.arange(10), 30)
    try:
        parts = P.mixed(labels, n, 0.5, seed, n_classes=10)
    except ValueError as e:  # the class draw can dead-end only when every class has an owner
        assert "no second class" in str(e) and n == 10
        return
    counts = label_counts(labels, parts, 10)
    assert ((counts > 0).sum(axis=1) <= 2).all()
    assert ((counts > 0).sum(axis=0) <= 2).all()
    allidx = np.concatenate(parts)
    assert len(allidx) == len(np.unique(allidx))
    if n == 10:  # every class has exactly two holders, so nothing is dropped
        assert len(allidx) == len(labels)


def _digits_labels() -> np.ndarray:
    from privlearn.fl.data.datasets import load_digits

    return load_digits().y_train


@pytest.mark.parametrize("seed", range(5))
def test_quantity_dirichlet_gives_up_naming_the_setting_to_raise(seed):
    # beta = 0.1, 10 clients, 1437 labels: NIID-Bench needs 14k-158k draws on seeds 0-4
    with pytest.raises(
        ValueError,
        match=r"after 10000 draws; raise partition_max_tries \(--partition-max-tries\)",
    ):
        P.partition(_digits_labels(), 10, "quantity-dirichlet", seed, beta=0.1)


def test_quantity_dirichlet_with_more_tries_finds_niid_bench_split():
    labels = _digits_labels()
    parts = P.partition(labels, 10, "quantity-dirichlet", 0, beta=0.1, max_tries=100_000)
    assert _is_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= P.MIN_PARTY_SIZE - 1  # cuts floor cumsum(q) n
    sizes = sorted(len(p) for p in parts)
    assert sizes[-1] > 10 * sizes[0]  # Dir(0.1): strongly skewed sizes


def test_max_tries_reaches_every_dirichlet_scheme():
    labels = np.arange(100) % 10
    for scheme in ("label-dirichlet", "quantity-dirichlet", "mixed"):
        with pytest.raises(ValueError, match="after 1 draws; raise partition_max_tries"):
            P.partition(labels, 10, scheme, 0, beta=0.01, max_tries=1)


@pytest.mark.timeout(60)
def test_mixed_dead_end_is_an_error_not_an_endless_loop():
    # seed 4, 10 clients: client 9's only class with one holder is its own class 9
    labels = np.repeat(np.arange(10), 30)
    with pytest.raises(ValueError, match="client 9 has no second class.*another seed"):
        P.partition(labels, 10, "mixed", 4)
    assert len(P.partition(labels, 10, "mixed", 5)) == 10  # seed 5 has no dead end


def test_noise_levels_follow_the_reference_code():
    np.testing.assert_allclose(P.feature_noise_levels(5, 0.1), [0, 0.025, 0.05, 0.075, 0.1])
    assert P.feature_noise_levels(1, 0.1).tolist() == [0.0]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: P.partition(np.zeros(5), 10, "homo", 0), "cannot be split over 10 clients"),
        (lambda: P.partition(np.arange(100) % 10, 4, "bogus", 0), "unknown partition scheme"),
        (lambda: P.label_quantity(np.arange(100) % 10, 4, 11, 0), "must be in"),
        (lambda: P.label_dirichlet(np.arange(100) % 10, 4, 0.0, 0), "beta must be > 0"),
        (lambda: P.label_dirichlet(np.arange(100) % 10, 9, 0.5, 0, max_tries=5), ">= 10 samples"),
        (lambda: P.mixed(np.arange(100) % 10, 12, 0.5, 0), "n_clients <= n_classes"),
    ],
)
def test_bad_partition_requests_say_what_to_do(call, message):
    with pytest.raises(ValueError, match=message):
        call()
