"""The one front door to a training run: the :class:`TrainSpec` and the scaled features.

The estimator, :func:`privlearn.transfer.experiment.run_task` and ``bench transfer`` all
build their spec here, so they share one set of defaults (``TrainSpec``'s) and one treatment
of rows beyond the training range, chosen by ``out_of_range``.

Features are standardised, then divided by one factor that brings the longest training row to
Euclidean norm 1: with the softmax's logit range, that is the input range the encrypted
approximation supports. A later row (validation, test, inference) whose scaled norm exceeds
``1 + range_tolerance`` is beyond that range: ``"clip"`` shrinks it to that norm (its
direction kept), ``"error"`` refuses the batch and names every such row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privlearn.transfer.train import TrainSpec

OUT_OF_RANGE = ("clip", "error")


@dataclass(frozen=True, eq=False)
class FeatureScaler:
    """z-scores per feature, one factor bringing the longest training row to norm 1, and the
    policy for rows beyond ``1 + tolerance``. Plain arrays: it pickles with the estimator."""

    mean: np.ndarray
    std: np.ndarray
    norm: float
    out_of_range: str = "clip"
    tolerance: float = 0.25

    def __post_init__(self) -> None:
        if self.out_of_range not in OUT_OF_RANGE:
            raise ValueError(
                f"out_of_range must be one of {OUT_OF_RANGE}, got {self.out_of_range!r}"
            )
        if not self.tolerance >= 0:
            raise ValueError(f"range_tolerance must be >= 0, got {self.tolerance!r}")

    @classmethod
    def fit(
        cls, x: np.ndarray, *, out_of_range: str = "clip", tolerance: float = 0.25
    ) -> FeatureScaler:
        x = np.asarray(x, np.float64)
        mean, std = x.mean(axis=0), x.std(axis=0)
        std[std == 0] = 1.0
        norm = float(np.linalg.norm((x - mean) / std, axis=1).max()) or 1.0
        return cls(mean, std, norm, out_of_range, tolerance)

    @property
    def limit(self) -> float:
        """The largest scaled row norm let through unchanged."""
        return 1.0 + self.tolerance

    def _scale(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) / self.std / self.norm

    def beyond(self, x: np.ndarray) -> np.ndarray:
        """Indices of the rows of ``x`` beyond the range (scaled norm over ``limit``)."""
        return np.flatnonzero(np.linalg.norm(self._scale(x), axis=1) > self.limit)

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = self._scale(x)
        norms = np.linalg.norm(z, axis=1)
        far = np.flatnonzero(norms > self.limit)
        if far.size and self.out_of_range == "error":
            shown = ", ".join(map(str, far[:20])) + (", ..." if far.size > 20 else "")
            raise ValueError(
                f"{far.size} row(s) lie beyond the training range the encrypted softmax "
                f"supports (scaled norm over {self.limit:.2f}, the training rows' at most "
                f"1): rows {shown}. Check those features, refit on data that covers them, "
                f"or use out_of_range='clip'"
            )
        z[far] *= (self.limit / norms[far])[:, None]
        return z


def prepare(
    x: np.ndarray,
    classes: int,
    *,
    out_of_range: str = "clip",
    range_tolerance: float = 0.25,
    **hyper,
) -> tuple[TrainSpec, FeatureScaler]:
    """The spec for training on ``x`` (its columns plus the bias) with ``classes`` classes,
    and the scaler fitted on ``x`` that every split goes through. ``hyper`` are
    :class:`TrainSpec` fields overriding its defaults (``lr=1.0, epochs=1``, ...)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty 2-D array of features, got shape {x.shape}")
    scaler = FeatureScaler.fit(x, out_of_range=out_of_range, tolerance=range_tolerance)
    return TrainSpec(classes=classes, features=x.shape[1] + 1, **hyper), scaler
