"""Synthetic generators, loaders from local files, the federated view, non-IID metrics."""

from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from privlearn.fl.data import DataSpec, build_federated, label_counts, plot_heatmap, summary
from privlearn.fl.data.datasets import hold_out, load_cifar10, load_idx_images
from privlearn.fl.data.heterogeneity import hellinger, js_distance
from privlearn.fl.data.synthetic import fcube, fedprox_synthetic, leaf_synthetic
from privlearn.fl.run import Experiment, RunConfig


def test_fedprox_synthetic_follows_the_generator():
    users = fedprox_synthetic(1.0, 1.0, n_users=12, seed=3)
    assert len(users) == 12
    assert all(len(u.y) >= 50 and u.x.shape[1] == 60 for u in users)
    assert all(u.y.min() >= 0 and u.y.max() < 10 for u in users)
    again = fedprox_synthetic(1.0, 1.0, n_users=12, seed=3)
    assert all(
        (a.x == b.x).all() and (a.y == b.y).all() for a, b in zip(users, again, strict=False)
    )
    # sizes: int(lognormal(4, 2)) + 50 drawn first from RandomState(seed)
    rs = np.random.RandomState(3)
    assert [len(u.y) for u in users] == (rs.lognormal(4, 2, 12).astype(int) + 50).tolist()


def test_synthetic_iid_shares_one_labelling_and_feature_mean():
    users = fedprox_synthetic(0, 0, n_users=8, seed=1, iid=True)
    x = np.concatenate([u.x for u in users])
    y = np.concatenate([u.y for u in users])
    # one shared linear labelling: a linear classifier separates all users' data perfectly
    from sklearn.linear_model import LogisticRegression

    assert LogisticRegression(C=100, max_iter=500).fit(x, y).score(x, y) > 0.95
    assert np.abs(x.mean(0)).max() < 0.2  # mean_x = 0 for every user
    hetero = fedprox_synthetic(1, 1, n_users=8, seed=1)
    means = np.stack([u.x.mean(0) for u in hetero])
    assert means.std(0).mean() > 0.5  # Synthetic(1,1): users' feature means differ


def test_leaf_synthetic_sizes_and_classes():
    users = leaf_synthetic(50, n_classes=5, dim=10, seed=931231)
    sizes = [len(u.y) for u in users]
    assert min(sizes) >= 5 and max(sizes) <= 1000
    assert all(u.x.shape[1] == 10 and u.y.max() < 5 for u in users)


SYNTHETIC_REF = json.loads(
    (Path(__file__).parent / "fixtures" / "synthetic_reference.json").read_text()
)


def _check_against_reference(users, case, n_classes):
    assert [len(u.y) for u in users] == case["sizes"]
    assert [np.bincount(u.y, minlength=n_classes).tolist() for u in users] == case["label_counts"]
    # the features are the reference's float64 values rounded to float32 (relative 2^-24)
    np.testing.assert_allclose(users[0].x[0], case["x_first_row"], rtol=2.0**-24)
    sums = np.array([u.x.astype(np.float64).sum() for u in users])
    bound = 2.0**-24 * np.array([np.abs(u.x.astype(np.float64)).sum() for u in users])
    assert (np.abs(sums - case["x_sums"]) <= bound + 1e-9).all()


@pytest.mark.parametrize("case", SYNTHETIC_REF["fedprox"], ids=lambda c: f"seed{c['seed']}")
def test_fedprox_synthetic_is_the_reference_script_seeded(case):
    users = fedprox_synthetic(case["alpha"], case["beta"], 30, case["seed"], iid=case["iid"])
    _check_against_reference(users, case, 10)


@pytest.mark.parametrize("case", SYNTHETIC_REF["leaf"], ids=lambda c: f"seed{c['seed']}")
def test_leaf_synthetic_is_the_reference_script_seeded(case):
    users = leaf_synthetic(
        case["n_users"], case["n_classes"], case["dim"], case["seed"], tuple(case["prob_clusters"])
    )
    _check_against_reference(users, case, case["n_classes"])


P_FALSE_ALARM = 1e-7  # per checked statistic; the bounds below are exact for Gaussian draws


def _variance_interval(expected: float, dof: int) -> tuple[float, float]:
    """Where a sample variance with `dof` degrees of freedom of N(., expected) data falls with
    probability 1 - 2 P_FALSE_ALARM (chi-square)."""
    lo, hi = stats.chi2.ppf([P_FALSE_ALARM, 1 - P_FALSE_ALARM], dof) / dof
    return expected * lo, expected * hi


def _binomial_band(p: float, n: int) -> tuple[float, float]:
    lo, hi = stats.binom.ppf([P_FALSE_ALARM, 1 - P_FALSE_ALARM], n, p) / n
    return lo, hi


def _check_within_user_covariance(users, dim):
    """x ~ N(v_k, Sigma) within a user, Sigma = diag(j^-1.2), j = 1..dim."""
    dev = np.concatenate([u.x.astype(np.float64) - u.x.astype(np.float64).mean(0) for u in users])
    dof = len(dev) - len(users)
    cov = dev.T @ dev / dof
    for j, expected in enumerate(np.arange(1, dim + 1) ** -1.2):
        lo, hi = _variance_interval(expected, dof)
        assert lo <= cov[j, j] <= hi, (j, cov[j, j], expected)
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    off = corr[~np.eye(dim, dtype=bool)]
    assert np.abs(off).max() < stats.norm.isf(P_FALSE_ALARM) / np.sqrt(dof)  # Sigma is diagonal


def _check_user_means(users, dim, shift_var):
    """v_k ~ N(B_k, 1) per coordinate with B_k ~ N(0, shift_var): the mean of v_k over its dim
    coordinates has variance shift_var + 1/dim across users, and v_k's coordinates spread
    around it with variance 1 (each plus Sigma's share from estimating v_k by a sample mean)."""
    sigma = np.arange(1, dim + 1) ** -1.2
    n = np.array([len(u.y) for u in users])
    means = np.stack([u.x.astype(np.float64).mean(0) for u in users])
    lo, hi = _variance_interval(shift_var + 1 / dim + np.mean(sigma.sum() / dim**2 / n), len(n) - 1)
    assert lo <= means.mean(1).var(ddof=1) <= hi
    spread = means.var(1, ddof=1)  # each ~ (1 + mean(Sigma)/n_k) chi2(dim-1)/(dim-1)
    lo, hi = _variance_interval(1.0, len(n) * (dim - 1))
    assert lo <= np.mean(spread / (1 + sigma.mean() / n)) <= hi


def test_fedprox_synthetic_moments_read_beta_as_a_standard_deviation():
    beta, n_users = 3.0, 200
    users = fedprox_synthetic(1.0, beta, n_users, seed=1)
    # B_k ~ N(0, beta) as numpy's normal(0, beta): beta is the standard deviation (variance 9);
    # the paper's notation read as a variance (3) lies outside the band
    _check_user_means(users, 60, shift_var=beta**2)
    lo, _ = _variance_interval(beta**2 + 1 / 60, n_users - 1)
    assert lo > beta + 1 / 60
    _check_within_user_covariance(users, 60)
    # n_k = int(lognormal(4, 2)) + 50: int(L) <= 54 iff L < 55, int(L) >= 403 iff L >= 403
    extra = np.array([len(u.y) for u in users]) - 50
    for frac, p in (
        (np.mean(extra <= 54), stats.norm.cdf((np.log(55) - 4) / 2)),
        (np.mean(extra >= 403), stats.norm.sf((np.log(403) - 4) / 2)),
    ):
        lo, hi = _binomial_band(p, n_users)
        assert lo <= frac <= hi


def test_fedprox_synthetic_alpha_leaves_the_data_unchanged():
    # W_k, b_k ~ N(u_k, 1) entrywise with one scalar u_k ~ N(0, alpha): u_k adds
    # u_k (1 + sum x) to every class's logit alike, so the argmax labels never see it
    a = fedprox_synthetic(0.0, 1.0, n_users=10, seed=4)
    b = fedprox_synthetic(5.0, 1.0, n_users=10, seed=4)
    assert all((u.x == v.x).all() and (u.y == v.y).all() for u, v in zip(a, b, strict=True))


def test_synthetic_iid_moments():
    users = fedprox_synthetic(0, 0, n_users=60, seed=2, iid=True)
    _check_within_user_covariance(users, 60)
    x = np.concatenate([u.x for u in users]).astype(np.float64)
    se = np.sqrt(np.arange(1, 61) ** -1.2 / len(x))  # v = 0 for every user
    assert (np.abs(x.mean(0)) < stats.norm.isf(P_FALSE_ALARM) * se).all()


def test_leaf_synthetic_moments():
    n_users, dim = 300, 60
    users = leaf_synthetic(n_users, n_classes=5, dim=dim, seed=2)
    _check_within_user_covariance(users, dim)
    _check_user_means(users, dim, shift_var=1.0)  # loc ~ N(B, 1), B ~ N(0, 1)
    # n = min(int(lognormal(3, 2)) + 5, 1000): capped iff L >= 995; n - 5 <= 20 iff L < 21
    sizes = np.array([len(u.y) for u in users])
    for frac, p in (
        (np.mean(sizes == 1000), stats.norm.sf((np.log(995) - 3) / 2)),
        (np.mean(sizes - 5 <= 20), stats.norm.cdf((np.log(21) - 3) / 2)),
    ):
        lo, hi = _binomial_band(p, n_users)
        assert lo <= frac <= hi
    # one cluster: every task's w = Q info with info ~ N(mean, 0.1), one labelling up to noise
    from sklearn.linear_model import LogisticRegression

    x, y = np.concatenate([u.x for u in users]), np.concatenate([u.y for u in users])
    assert LogisticRegression(C=100, max_iter=1000).fit(x, y).score(x, y) > 0.95


@pytest.mark.parametrize(
    "make",
    [
        lambda s: fedprox_synthetic(1.0, 1.0, n_users=5, seed=s),
        lambda s: fedprox_synthetic(0, 0, n_users=5, seed=s, iid=True),
        lambda s: leaf_synthetic(5, seed=s),
        lambda s: fcube(4, seed=s)[0],
    ],
    ids=["fedprox", "fedprox-iid", "leaf", "fcube"],
)
def test_generators_repeat_under_a_seed_and_differ_across_seeds(make):
    a, b, c = make(11), make(11), make(12)
    assert all((u.x == v.x).all() and (u.y == v.y).all() for u, v in zip(a, b, strict=True))
    assert not np.array_equal(a[0].x[:5], c[0].x[:5])


def _write_idx(path, arr, gz):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    (gzip.open if gz else open)(path, "wb").write(header + arr.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [False, True])
def test_idx_loader_reads_mnist_lookalike_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    xtr, xte = rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 256, (10, 28, 28))
    ytr, yte = rng.integers(0, 10, 30), rng.integers(0, 10, 10)
    suffix = ".gz" if gz else ""
    for stem, arr in (
        ("train-images-idx3-ubyte", xtr),
        ("train-labels-idx1-ubyte", ytr),
        ("t10k-images-idx3-ubyte", xte),
        ("t10k-labels-idx1-ubyte", yte),
    ):
        _write_idx(tmp_path / (stem + suffix), arr, gz)
    ds = load_idx_images(tmp_path)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    np.testing.assert_allclose(ds.x_train[:, 0] * 255, xtr, atol=1e-4)
    assert (ds.y_test == yte).all()


def test_idx_loader_errors_name_the_missing_file_and_bad_magic(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*downloads nothing"):
        load_idx_images(tmp_path)
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (tmp_path / stem).write_bytes(b"\x00\x00\x09\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        load_idx_images(tmp_path)


def test_cifar10_loader_reads_pickled_batches(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {
            b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, 4).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(d))
    ds = load_cifar10(tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1
    (folder / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_cifar10(tmp_path)


def test_dataset_that_needs_files_says_so():
    with pytest.raises(ValueError, match="loads from local files"):
        build_federated(DataSpec("mnist"), seed=0)


def test_build_federated_digits_and_noise():
    ds = build_federated(DataSpec("digits", 5, "noise", noise=0.4), seed=0)
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.n_clients == 5
    base = build_federated(DataSpec("digits", 5, "homo"), seed=0)
    assert [c.tolist() for c in ds.clients] == [c.tolist() for c in base.clients]
    # client i's inputs carry N(0, (0.4 i / 4)^2) noise; client 0 is untouched
    for i, idx in enumerate(ds.clients):
        diff = (ds.x_train[idx] - base.x_train[idx]).numpy()
        assert diff.std() == pytest.approx(0.1 * i, abs=0.01)
    assert (ds.x_test == base.x_test).all()  # the global test set stays clean


def _noise_std_band(std: float, n: int) -> tuple[float, float]:
    lo, hi = _variance_interval(std**2, n)
    return np.sqrt(lo), np.sqrt(hi)


def test_per_round_noise_is_redrawn_every_round_and_tests_on_noisy_copies():
    spec = DataSpec("digits", 5, "noise", noise=0.4, noise_mode="per-round")
    ds = build_federated(spec, seed=0)
    base = build_federated(DataSpec("digits", 5, "homo"), seed=0)
    assert (ds.x_clean == base.x_train).all()
    draws = [ds.round_features(r) for r in (0, 1, 2)]
    assert (ds.round_features(1) == draws[1]).all()  # a function of (seed, round): resumable
    for i, idx in enumerate(ds.clients):
        for x in draws:
            diff = (x[idx] - base.x_train[idx]).numpy().astype(np.float64)
            if i == 0:
                assert (diff == 0).all()
            else:
                lo, hi = _noise_std_band(0.1 * i, diff.size)
                assert lo <= np.sqrt((diff**2).mean()) <= hi
        if i > 0:  # every round draws afresh
            assert not (draws[1][idx] == draws[2][idx]).any()
    # NIID-Bench's global test set: one copy per client, copy i at client i's noise level
    n_test = len(base.y_test)
    assert len(ds.y_test) == 5 * n_test and (ds.y_test == base.y_test.repeat(5)).all()
    for i in range(5):
        diff = (ds.x_test[i * n_test : (i + 1) * n_test] - base.x_test).numpy()
        if i == 0:
            assert (diff == 0).all()
        else:
            lo, hi = _noise_std_band(0.1 * i, diff.size)
            assert lo <= np.sqrt((diff.astype(np.float64) ** 2).mean()) <= hi
    fixed = build_federated(DataSpec("digits", 5, "noise", noise=0.4), seed=0)
    assert fixed.x_clean is None and fixed.round_features(3) is fixed.x_train


def test_per_round_noise_on_natural_local_tests():
    spec = DataSpec("fedprox_synthetic", 4, "natural", noise=0.3, noise_mode="per-round")
    ds = build_federated(spec, seed=0)
    clean = build_federated(DataSpec("fedprox_synthetic", 4, "natural"), seed=0)
    assert len(ds.y_test) == 4 * len(clean.y_test)
    for i, rows in enumerate(ds.local_tests):  # client i's own test rows carry its noise level
        same = (ds.x_local[rows] == clean.x_local[rows]).all()
        assert bool(same) == (i == 0)


def test_per_round_noise_reaches_the_training_rounds(monkeypatch):
    cfg = RunConfig(
        dataset="digits",
        partition="noise",
        noise=0.4,
        noise_mode="per-round",
        n_clients=3,
        clients_per_round=3,
        model="mclr",
        rounds=1,
    )
    exp = Experiment.build(cfg)
    seen = []

    def spy(r):
        seen.append(r)
        return type(exp.data).round_features(exp.data, r)

    monkeypatch.setattr(exp.data, "round_features", spy)
    server, bank = exp.init_state()
    exp.round(server, bank, 4)
    assert seen == [4]


def test_unknown_noise_mode_is_refused():
    with pytest.raises(ValueError, match="unknown noise_mode 'epoch'; expected one of fixed, per"):
        build_federated(DataSpec("digits", 4, "noise", noise=0.1, noise_mode="epoch"), seed=0)


def test_partition_max_tries_goes_from_the_config_to_the_partition():
    cfg = RunConfig(dataset="digits", partition="quantity-dirichlet", beta=0.1)
    with pytest.raises(ValueError, match="after 10000 draws; raise partition_max_tries"):
        build_federated(cfg.data_spec(), seed=0)
    cfg.partition_max_tries = 100_000  # seed 0 needs 32,324 draws
    ds = build_federated(cfg.data_spec(), seed=0)
    assert ds.n_clients == 10 and ds.sizes().min() >= 9
    with pytest.raises(ValueError, match="partition_max_tries must be >= 1"):
        build_federated(DataSpec("digits", 4, "mixed", partition_max_tries=0), seed=0)


def test_natural_split_and_local_tests_for_synthetic():
    ds = build_federated(DataSpec("fedprox_synthetic", 7, "natural"), seed=2)
    assert ds.n_clients == 7 and ds.local_tests is not None
    assert sum(len(t) for t in ds.local_tests) == len(ds.y_test)
    with pytest.raises(ValueError, match="no natural client split"):
        build_federated(DataSpec("digits", 4, "natural"), seed=0)


def test_hold_out_moves_rows_to_local_tests():
    ds = build_federated(DataSpec("digits", 4, "homo"), seed=0)
    before = [len(c) for c in ds.clients]
    hold_out(ds, 0.25, seed=0)
    assert [len(c) + len(t) for c, t in zip(ds.clients, ds.local_tests, strict=False)] == before
    assert all(len(t) == round(0.25 * b) for t, b in zip(ds.local_tests, before, strict=False))


def test_empty_client_is_reported_before_training():
    ds = build_federated(DataSpec("digits", 4, "homo"), seed=0)
    ds.clients[2] = ds.clients[2][:0]
    with pytest.raises(
        ValueError, match="left 1 of 4 clients without training data \\(clients 2\\)"
    ):
        ds.check_not_empty()


def test_distances_on_known_distributions(tmp_path):
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    q = np.array([[0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(hellinger(p, q), [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(js_distance(p, q), [1.0, 0.0], atol=1e-12)
    labels = np.array([0, 0, 1, 1, 2, 2])
    counts = label_counts(labels, [np.array([0, 1]), np.array([2, 3, 4, 5])], 3)
    assert counts.tolist() == [[2, 0, 0], [0, 2, 2]]
    s = summary(counts)
    assert s["classes_per_client"] == [1, 2] and s["sizes"] == [2, 4]
    assert s["hellinger"][0] > s["hellinger"][1] > 0
    path = plot_heatmap(counts, tmp_path / "h.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_crafted_cifar_batch_cannot_run_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload()}))
    with pytest.raises(ValueError, match="refusing to unpickle .*system"):
        load_cifar10(tmp_path)
    assert not (tmp_path / "ran").exists()
