"""``EncryptedSoftmaxClassifier``: HETAL's encrypted fine-tuning behind scikit-learn's face.

    clf = EncryptedSoftmaxClassifier(preset="n15-d11", refresh="client", epochs=10)
    clf.fit(X, y)              # the server trains on ciphertexts; the client keeps the key
    clf.predict(X_test)        # plaintext inference with the decrypted weights
    clf.predict(X_test, encrypted=True)   # encrypted inference on the server

Features are standardised and scaled so that training rows have Euclidean norm at most 1
(``scaler_``): together with the softmax's logit range this is the input range the
approximation supports. Rows beyond ``1 + range_tolerance`` after scaling are refused.
"""

from __future__ import annotations

import warnings
import weakref

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from privlearn.transfer.reference import add_bias, exact_softmax
from privlearn.transfer.session import EncryptedRun, EncryptedSession
from privlearn.transfer.train import TrainSpec


class FeatureScaler:
    """z-scores per feature, then one factor that brings the longest training row to norm 1."""

    def fit(self, x: np.ndarray) -> FeatureScaler:
        self.mean_ = x.mean(axis=0)
        self.std_ = x.std(axis=0)
        self.std_[self.std_ == 0] = 1.0
        self.norm_ = float(np.linalg.norm((x - self.mean_) / self.std_, axis=1).max()) or 1.0
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean_) / self.std_ / self.norm_


class EncryptedSoftmaxClassifier(ClassifierMixin, BaseEstimator):
    """A softmax-regression head trained by a server on encrypted features (HETAL).

    Parameters mirror :class:`~privlearn.transfer.train.TrainSpec`; ``refresh`` is
    ``"client"`` (interactive: the client decrypts and re-encrypts exhausted ciphertexts) or
    ``"bootstrap"`` (non-interactive; needs a bootstrappable preset such as ``n16-boot7``).
    ``validation_fraction`` of the training data is held out for early stopping when
    ``fit`` gets no validation set.
    """

    def __init__(
        self,
        backend: str = "openfhe",
        preset: str = "n15-d11",
        refresh: str = "client",
        lr: float = 4.0,
        epochs: int = 10,
        batch_size: int = 128,
        early_stopping: bool = True,
        patience: int = 3,
        nesterov: bool = True,
        softmax: str = "ours",
        logit_range: float = 32.0,
        matmul: str = "ours",
        validation_fraction: float = 0.15,
        range_tolerance: float = 0.25,
        separate_process: bool = False,
        random_state: int = 0,
        progress: bool = True,
        insecure_for_testing: bool = False,
    ) -> None:
        self.backend, self.preset, self.refresh = backend, preset, refresh
        self.lr, self.epochs, self.batch_size = lr, epochs, batch_size
        self.early_stopping, self.patience, self.nesterov = early_stopping, patience, nesterov
        self.softmax, self.logit_range, self.matmul = softmax, logit_range, matmul
        self.validation_fraction, self.range_tolerance = validation_fraction, range_tolerance
        self.separate_process, self.random_state = separate_process, random_state
        self.progress, self.insecure_for_testing = progress, insecure_for_testing

    # -- validation ------------------------------------------------------------------------------
    def _check_x(self, x, *, fitted: bool) -> np.ndarray:
        """Finite 2-D features; with ``fitted``, as many columns as at fit."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"expected a non-empty 2-D array of features, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            bad = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(
                f"features contain NaN or infinity (first at row {bad[0]}, "
                f"column {bad[1]}); impute or drop them before encrypting"
            )
        if fitted and x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"features have {x.shape[1]} columns but the encrypted model was "
                f"trained on {self.n_features_in_}"
            )
        return x

    def _scaled(self, x: np.ndarray) -> np.ndarray:
        z = self.scaler_.transform(x)
        norms = np.linalg.norm(z, axis=1)
        limit = 1.0 + self.range_tolerance
        if norms.max() > limit:
            i = int(norms.argmax())
            raise ValueError(
                f"row {i} lies outside the range the encrypted softmax supports: its scaled "
                f"norm is {norms[i]:.2f}, the training rows' at most 1 (tolerance "
                f"{limit:.2f}). Such inputs are unlike the training data; check the features "
                f"or refit on data that covers them"
            )
        return z

    def _labels(self, y) -> np.ndarray:
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {y.shape}")
        unseen = np.setdiff1d(np.unique(y), self.classes_)
        if unseen.size:
            raise ValueError(
                f"labels {unseen.tolist()} were not seen at fit (classes {self.classes_.tolist()})"
            )
        return np.searchsorted(self.classes_, y)

    # -- scikit-learn's face ----------------------------------------------------------------------
    def fit(self, x, y, x_val=None, y_val=None) -> EncryptedSoftmaxClassifier:
        x = self._check_x(x, fitted=False)
        y = np.asarray(y)
        if y.shape != (x.shape[0],):
            raise ValueError(f"got {x.shape[0]} feature rows but labels of shape {y.shape}")
        self.classes_ = np.unique(y)
        if self.classes_.size < 2:
            raise ValueError("need at least two classes to fit a softmax head")
        self.n_features_in_ = x.shape[1]
        if x_val is None:
            from sklearn.model_selection import train_test_split

            x, x_val, y, y_val = train_test_split(
                x, y, test_size=self.validation_fraction, random_state=self.random_state, stratify=y
            )
        x_val = self._check_x(x_val, fitted=True)
        self.scaler_ = FeatureScaler().fit(x)
        spec = TrainSpec(
            classes=int(self.classes_.size),
            features=self.n_features_in_ + 1,
            batch_size=self.batch_size,
            lr=self.lr,
            epochs=self.epochs,
            refresh=self.refresh,
            nesterov=self.nesterov,
            early_stopping=self.early_stopping,
            patience=self.patience,
            softmax=self.softmax,
            logit_range=self.logit_range,
            matmul=self.matmul,
        )
        self.close()  # a refit ends the previous server session
        self.session_ = EncryptedSession(
            spec,
            preset=self.preset,
            backend=self.backend,
            seed=self.random_state,
            separate_process=self.separate_process,
            insecure_for_testing=self.insecure_for_testing,
        )
        weakref.finalize(self, self.session_.close)  # no leaked process or temp dir
        self.run_: EncryptedRun = self.session_.fit(
            self.scaler_.transform(x),
            self._labels(y),
            self._scaled(x_val),
            self._labels(y_val),
            progress=self.progress,
        )
        self.coef_, self.intercept_ = self.run_.weights[:, :-1], self.run_.weights[:, -1]
        self.max_train_logit_ = float(np.abs(self.decision_function(x)).max())
        if self.max_train_logit_ > self.logit_range:
            warnings.warn(
                f"training logits reached {self.max_train_logit_:.1f}, beyond the "
                f"softmax's range {self.logit_range:g}: encrypted probabilities were "
                f"approximate there; raise logit_range",
                RuntimeWarning,
                stacklevel=2,
            )
        return self

    def _require_fitted(self) -> None:
        if not hasattr(self, "run_"):
            raise AttributeError("this classifier is not fitted yet; call fit first")

    def decision_function(self, x, *, encrypted: bool = False) -> np.ndarray:
        """Logits; ``encrypted=True`` has the server compute them on encrypted features."""
        self._require_fitted()
        z = self._scaled(self._check_x(x, fitted=True))
        if encrypted:
            return self.session_.predict(z)
        return add_bias(z) @ self.run_.weights.T

    def predict_proba(self, x, *, encrypted: bool = False) -> np.ndarray:
        """Softmax probabilities; ``encrypted=True`` runs the softmax approximation on the
        server too, under encryption (the plaintext path uses the exact softmax)."""
        if encrypted:
            self._require_fitted()
            z = self._scaled(self._check_x(x, fitted=True))
            return self.session_.predict(z, probabilities=True)[:, : self.classes_.size]
        return exact_softmax(self.decision_function(x))

    def predict(self, x, *, encrypted: bool = False) -> np.ndarray:
        z = self.decision_function(x, encrypted=encrypted)
        return self.classes_[z.argmax(axis=1)]

    def score(self, x, y) -> float:
        """Mean accuracy (plaintext inference with the decrypted weights)."""
        pred = self.predict(x)
        return float(np.mean(np.searchsorted(self.classes_, pred) == self._labels(y)))

    def close(self) -> None:
        """End the server session (its process, its stored ciphertexts)."""
        if hasattr(self, "session_"):
            self.session_.close()
