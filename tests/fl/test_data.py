"""Synthetic generators, loaders from local files, the federated view, non-IID metrics."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from privlearn.fl.data import DataSpec, build_federated, label_counts, plot_heatmap, summary
from privlearn.fl.data.datasets import hold_out, load_cifar10, load_idx_images
from privlearn.fl.data.heterogeneity import hellinger, js_distance
from privlearn.fl.data.synthetic import fedprox_synthetic, leaf_synthetic
from privlearn.fl.run import RunConfig


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
