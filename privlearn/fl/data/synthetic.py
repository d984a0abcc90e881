"""Procedural federated datasets, each following its reference generator step by step.

- `fedprox_synthetic`: FedProx's Synthetic(alpha, beta) and Synthetic-IID (Li et al., MLSys
  2020, `data/synthetic_*/generate_*.py`). The reference has no seed; here every draw comes
  from one `RandomState(seed)`, in the reference's order.
- `leaf_synthetic`: LEAF's generator (`data/synthetic/{main,data_generator}.py`), which
  seeds numpy twice with the same seed, as reproduced here.
- `fcube`: NIID-Bench's FCUBE (`partition_data`, dataset `generated`), drawn with Python's
  `random` seeded like the reference, so the points are the reference's exactly.

Each returns per-user arrays, already federated: the split is part of the data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UserData:
    """One user's samples: features `x` (float32) and integer labels `y`."""

    x: np.ndarray
    y: np.ndarray


def _power_law_cov(dim: int) -> np.ndarray:
    return np.diag(np.power(np.arange(1, dim + 1, dtype=np.float64), -1.2))


def fedprox_synthetic(
    alpha: float,
    beta: float,
    n_users: int = 30,
    seed: int = 0,
    *,
    iid: bool = False,
    dim: int = 60,
    n_classes: int = 10,
) -> list[UserData]:
    """FedProx Synthetic(alpha, beta) with `n_users` users, or Synthetic-IID with iid=True.

    n_i = int(lognormal(4, 2)) + 50; W_i ~ N(u_i, 1), b_i ~ N(u_i, 1), u_i ~ N(0, alpha);
    x ~ N(v_i, Sigma), v_i ~ N(B_i, 1), B_i ~ N(0, beta), Sigma = diag(j^-1.2);
    y = argmax(x W_i + b_i). As in the reference, alpha and beta are passed to numpy as
    standard deviations (the paper writes variances). IID: one W, b ~ N(0, 1) and v = 0.

    u_i is one scalar per user, so it adds u_i (1 + sum x) to every class's logit alike and
    never changes the argmax: alpha has no effect on the data, only beta does.
    """
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1, got {n_users}")
    rs = np.random.RandomState(seed)
    sizes = rs.lognormal(4, 2, n_users).astype(int) + 50
    cov = _power_law_cov(dim)
    users = []
    if iid:
        w = rs.normal(0, 1, (dim, n_classes))
        b = rs.normal(0, 1, n_classes)
        for i in range(n_users):
            x = rs.multivariate_normal(np.zeros(dim), cov, sizes[i])
            users.append(UserData(x.astype(np.float32), np.argmax(x @ w + b, axis=1)))
        return users
    mean_w = rs.normal(0, alpha, n_users)
    mean_b = mean_w
    b_shift = rs.normal(0, beta, n_users)
    mean_x = np.stack([rs.normal(b_shift[i], 1, dim) for i in range(n_users)])
    for i in range(n_users):
        w = rs.normal(mean_w[i], 1, (dim, n_classes))
        b = rs.normal(mean_b[i], 1, n_classes)
        x = rs.multivariate_normal(mean_x[i], cov, sizes[i])
        users.append(UserData(x.astype(np.float32), np.argmax(x @ w + b, axis=1)))
    return users


def leaf_synthetic(
    n_users: int = 1000,
    n_classes: int = 5,
    dim: int = 60,
    seed: int = 931231,
    prob_clusters: tuple[float, ...] = (1.0,),
) -> list[UserData]:
    """LEAF's synthetic tasks: n_i = min(int(lognormal(3, 2)) + 5, 1000); per task
    x ~ N(N(B, 1), Sigma), B ~ N(0, 1); w = Q . N(cluster_mean, 0.1);
    y = argmax softmax([1, x] w + N(0, 0.1))."""
    rs = np.random.RandomState(seed)
    sizes = [min(s + 5, 1000) for s in rs.lognormal(3, 2, n_users).astype(int)]
    rs = np.random.RandomState(seed)  # LEAF's SyntheticDataset re-seeds with the same seed
    n_clusters = len(prob_clusters)
    q = rs.normal(0.0, 1.0, (dim + 1, n_classes, n_clusters))
    cov = _power_law_cov(dim)
    means = []
    for _ in range(n_clusters):
        loc = rs.normal(0, 1.0)
        means.append(rs.normal(loc, 1.0, n_clusters))
    users = []
    for n in sizes:
        cluster = rs.choice(range(n_clusters), size=None, replace=True, p=list(prob_clusters))
        b_shift = rs.normal(0.0, 1.0)
        loc = rs.normal(b_shift, 1.0, dim)
        x = np.ones((n, dim + 1))
        x[:, 1:] = rs.multivariate_normal(loc, cov, n)
        info = rs.normal(means[cluster], 0.1, means[cluster].shape)
        w = q @ info
        logits = x @ w + rs.normal(0.0, 0.1, (n, n_classes))
        users.append(UserData(x[:, 1:].astype(np.float32), np.argmax(logits, axis=1)))
    return users


def fcube(n_clients: int = 4, seed: int = 0) -> tuple[list[UserData], UserData]:
    """NIID-Bench FCUBE: 4000 training points in [-1, 1]^3 in 4 octant pairs, cut in order
    into `n_clients` parts (synthetic feature imbalance), and 1000 uniform test points with
    label [p1 <= 0]. Returns (per-client training data, test data)."""
    if not 1 <= n_clients <= 4000:
        raise ValueError(f"FCUBE has 4000 training points; n_clients={n_clients} is out of range")
    py = random.Random(seed)
    xs, ys = [], []
    for loc in range(4):
        for i in range(1000):
            p1, p2, p3 = py.random(), py.random(), py.random()
            if loc > 1:
                p2 = -p2
            if loc % 2 == 1:
                p3 = -p3
            if i % 2 == 0:
                xs.append([p1, p2, p3])
                ys.append(0)
            else:
                xs.append([-p1, -p2, -p3])
                ys.append(1)
    xt, yt = [], []
    for _ in range(1000):
        p = [py.random() * 2 - 1 for _ in range(3)]
        xt.append(p)
        yt.append(0 if p[0] > 0 else 1)
    x, y = np.array(xs, dtype=np.float32), np.array(ys, dtype=np.int64)
    parts = np.array_split(np.arange(4000), n_clients)
    train = [UserData(x[p], y[p]) for p in parts]
    return train, UserData(np.array(xt, dtype=np.float32), np.array(yt, dtype=np.int64))
