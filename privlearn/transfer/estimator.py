"""``EncryptedSoftmaxClassifier``: HETAL's encrypted fine-tuning behind scikit-learn's face.

    clf = EncryptedSoftmaxClassifier(preset="n15-d11", refresh="client", epochs=10)
    clf.fit(X, y)              # the server trains on ciphertexts; the client keeps the key
    clf.predict(X_test)        # plaintext inference with the decrypted weights
    clf.predict(X_test, encrypted=True)   # encrypted inference on the server

Features are scaled as :mod:`privlearn.transfer.prepare` says (``scaler_``); a row beyond the
training range is clipped onto it or refused, by ``out_of_range``.

A fitted classifier pickles (``pickle``, ``joblib``) without its session: no server, process
or key travels. The pickle holds the decrypted weights (``coef_``, ``intercept_``), the
scaler, the spec, the classes and the run's figures (``run_``); no key at all. Plaintext
inference needs only the decrypted weights. Encrypted inference after unpickling opens a new
session on first use: fresh keys, as ``fit`` generated, and the weights encrypted under them
(nothing encrypted under the old key survives, so it is not needed). ``save(path)`` writes
that pickle and a ``manifest.json`` saying what it holds into a folder; ``load(path)`` reads
it back. Unpickling runs code: load only folders you saved yourself.

``save(path, include_secret_key=True)`` also writes the key material: ``keys/secret_key.plhe``
(mode 0600, through :mod:`privlearn.he.io`), the public bundle ``keys/bundle/`` and the
weights encrypted under that key, ``encrypted_model.plhe``, which a server loads with the
bundle alone. A model loaded from such a folder serves encrypted inference under the saved
key instead of fresh ones. The manifest names the key file; the pickle holds no key material.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import warnings
import weakref
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_X_y, validate_data

from privlearn.he import ClientContext
from privlearn.he.io import write_atomic
from privlearn.transfer.estimate import Estimate, estimate
from privlearn.transfer.prepare import prepare
from privlearn.transfer.reference import add_bias, exact_softmax
from privlearn.transfer.session import EncryptedRun, EncryptedSession
from privlearn.transfer.session_store import CheckpointError, SessionStore
from privlearn.transfer.train import TrainSpec

MODEL_FILE, MANIFEST_FILE, SAVE_FORMAT = "model.pkl", "manifest.json", 1
SECRET_KEY_FILE, ENCRYPTED_MODEL_FILE = "secret_key.plhe", "encrypted_model.plhe"

# the TrainSpec fields that are the estimator's parameters (classes and features come from data)
SPEC_PARAMS = tuple(
    f.name for f in dataclasses.fields(TrainSpec) if f.name not in ("classes", "features")
)


class EncryptedSoftmaxClassifier(ClassifierMixin, BaseEstimator):
    """A softmax-regression head trained by a server on encrypted features (HETAL).

    Parameters ``batch_size`` to ``matmul`` are :class:`~privlearn.transfer.train.TrainSpec`'s,
    with its defaults; ``refresh`` is ``"client"`` (interactive: the client decrypts and
    re-encrypts exhausted ciphertexts) or ``"bootstrap"`` (non-interactive; needs a
    bootstrappable preset such as ``n16-boot7``). ``validation_fraction`` of the training data
    is held out (stratified) for early stopping when ``fit`` gets no validation set.
    ``out_of_range`` (``"clip"`` or ``"error"``) and ``range_tolerance`` say what happens to
    a row whose scaled norm exceeds ``1 + range_tolerance``: see
    :mod:`privlearn.transfer.prepare`. ``checkpoint``: a folder where ``fit`` keeps the
    run's state after every step (:mod:`privlearn.transfer.session_store`); a ``fit`` with
    the same data and parameters on a folder holding an interrupted run resumes it.
    """

    def __init__(
        self,
        backend: str = "openfhe",
        preset: str = "n15-d11",
        refresh: str = TrainSpec.refresh,
        lr: float = TrainSpec.lr,
        epochs: int = TrainSpec.epochs,
        batch_size: int = TrainSpec.batch_size,
        early_stopping: bool = TrainSpec.early_stopping,
        patience: int = TrainSpec.patience,
        nesterov: bool = TrainSpec.nesterov,
        softmax: str = TrainSpec.softmax,
        logit_range: float = TrainSpec.logit_range,
        matmul: str = TrainSpec.matmul,
        validation_fraction: float = 0.15,
        out_of_range: str = "clip",
        range_tolerance: float = 0.25,
        separate_process: bool = False,
        random_state: int = 0,
        progress: bool = True,
        insecure_for_testing: bool = False,
        checkpoint: str | os.PathLike | None = None,
    ) -> None:
        self.backend, self.preset, self.refresh = backend, preset, refresh
        self.lr, self.epochs, self.batch_size = lr, epochs, batch_size
        self.early_stopping, self.patience, self.nesterov = early_stopping, patience, nesterov
        self.softmax, self.logit_range, self.matmul = softmax, logit_range, matmul
        self.validation_fraction = validation_fraction
        self.out_of_range, self.range_tolerance = out_of_range, range_tolerance
        self.separate_process, self.random_state = separate_process, random_state
        self.progress, self.insecure_for_testing = progress, insecure_for_testing
        self.checkpoint = checkpoint

    # -- validation ------------------------------------------------------------------------------
    def _features(self, x, *, reset: bool) -> np.ndarray:
        """Finite 2-D float features; scikit-learn checks the column count and names
        (``n_features_in_``, ``feature_names_in_``) against fit's."""
        x = validate_data(self, x, reset=reset, dtype=np.float64, ensure_all_finite=False)
        return _finite(x)

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
    def fit(self, X, y, x_val=None, y_val=None) -> EncryptedSoftmaxClassifier:
        """Train on encrypted ``X``; ``x_val``, ``y_val`` steer early stopping (default: a
        stratified ``validation_fraction`` of ``X`` held out)."""
        x, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite=False)
        x = _finite(x)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if self.classes_.size < 2:
            raise ValueError(
                "need at least two classes to fit a softmax head; y has 1 class "
                f"({self.classes_.tolist()})"
            )
        if x_val is None:
            x, x_val, y, y_val = self._hold_out(x, y)
        else:
            x_val = self._features(x_val, reset=False)
        self.spec_, self.scaler_ = prepare(
            x,
            int(self.classes_.size),
            out_of_range=self.out_of_range,
            range_tolerance=self.range_tolerance,
            **{name: getattr(self, name) for name in SPEC_PARAMS},
        )
        self.fit_rows_ = {"train": len(x), "val": len(x_val)}
        session = self._open_session(checkpoint=self.checkpoint)
        self.run_: EncryptedRun = session.fit(
            self.scaler_.transform(x),
            self._labels(y),
            self.scaler_.transform(x_val),
            self._labels(y_val),
            progress=self.progress,
        )
        self.coef_, self.intercept_ = self.run_.weights[:, :-1], self.run_.weights[:, -1]
        self.max_train_logit_ = float(np.abs(self._logits(x, encrypted=False)).max())
        if self.max_train_logit_ > self.logit_range:
            warnings.warn(
                f"training logits reached {self.max_train_logit_:.1f}, beyond the "
                f"softmax's range {self.logit_range:g}: encrypted probabilities were "
                f"approximate there; raise logit_range",
                RuntimeWarning,
                stacklevel=2,
            )
        return self

    def _hold_out(self, x: np.ndarray, y: np.ndarray):
        try:
            return train_test_split(
                x,
                y,
                test_size=self.validation_fraction,
                random_state=self.random_state,
                stratify=y,
            )
        except ValueError as e:
            raise ValueError(
                f"cannot hold out a stratified validation_fraction={self.validation_fraction} "
                f"of {len(y)} rows in {self.classes_.size} classes for early stopping ({e}); "
                f"pass x_val and y_val to fit, or more rows"
            ) from None

    def _logits(self, x: np.ndarray, *, encrypted: bool) -> np.ndarray:
        """(n, classes) logits of already validated features."""
        z = self.scaler_.transform(x)
        if encrypted:
            return self._serving().predict(z)
        return add_bias(z) @ self._weights().T

    def decision_function(self, X, *, encrypted: bool = False) -> np.ndarray:
        """Logits, (n, classes); for two classes scikit-learn's (n,) score of ``classes_[1]``
        (its logit minus the other's). ``encrypted=True`` has the server compute them on
        encrypted features."""
        check_is_fitted(self)
        z = self._logits(self._features(X, reset=False), encrypted=encrypted)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def predict_proba(self, X, *, encrypted: bool = False) -> np.ndarray:
        """Softmax probabilities, (n, classes); ``encrypted=True`` runs the softmax
        approximation on the server too, under encryption (the plaintext path uses the exact
        softmax)."""
        check_is_fitted(self)
        x = self._features(X, reset=False)
        if encrypted:
            z = self.scaler_.transform(x)
            return self._serving().predict(z, probabilities=True)[:, : self.classes_.size]
        return exact_softmax(self._logits(x, encrypted=False))

    def predict(self, X, *, encrypted: bool = False) -> np.ndarray:
        check_is_fitted(self)
        z = self._logits(self._features(X, reset=False), encrypted=encrypted)
        return self.classes_[z.argmax(axis=1)]

    def score(self, X, y, sample_weight=None) -> float:
        """Mean accuracy (plaintext inference with the decrypted weights); labels unseen at
        fit are an error rather than a silent miss."""
        check_is_fitted(self)
        self._labels(y)
        return super().score(X, y, sample_weight=sample_weight)

    def estimate(self, X, y) -> Estimate:
        """What ``fit(X, y)`` will cost on OpenFHE at this preset, before it runs: seconds per
        iteration and in total, server memory, bundle size and bytes to the server (see
        :mod:`privlearn.transfer.estimate`; nothing is encrypted)."""
        x, y = check_X_y(X, y, dtype=np.float64, ensure_all_finite=False)
        spec = {name: getattr(self, name) for name in SPEC_PARAMS}
        return estimate(
            len(x),
            x.shape[1],
            np.unique(y).size,
            preset=self.preset,
            validation_fraction=self.validation_fraction,
            **spec,
        )

    # -- saved models ------------------------------------------------------------------------------
    def save(
        self,
        path: str | os.PathLike,
        *,
        data: dict | None = None,
        include_secret_key: bool = False,
    ) -> Path:
        """Write the fitted classifier to the folder ``path``: ``model.pkl`` (this pickle,
        written whole or not at all) and ``manifest.json`` (what the pickle holds, in plain
        JSON; ``data`` describes the features for whoever predicts, e.g. their columns).
        ``include_secret_key`` adds the key material (see the module's docstring)."""
        check_is_fitted(self)
        import privlearn

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        files = {"secret_key": None, "public_bundle": None, "encrypted_model": None}
        if include_secret_key:
            files = self._save_keys(path)
        holds = "decrypted weights, feature scaler, training spec, classes, run figures; " + (
            "the secret key is in keys/secret_key.plhe (mode 0600), not in the pickle"
            if include_secret_key
            else "no key (encrypted inference after loading generates fresh keys)"
        )
        manifest = {
            "format": SAVE_FORMAT,
            "privlearn": privlearn.__version__,
            "estimator": type(self).__name__,
            "holds": holds,
            **files,
            "classes": self.classes_.tolist(),
            "n_features": int(self.n_features_in_),
            "backend": self.run_.backend,
            "real_encryption": self.run_.real_encryption,
            "preset": self.run_.preset,
            "spec": self.spec_.to_meta(),
            "rows": self.fit_rows_,
            "run": self.run_.summary(),
            "data": data or {},
        }
        write_atomic(path / MODEL_FILE, pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))
        write_atomic(path / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
        return path

    def _save_keys(self, path: Path) -> dict:
        """The secret key (0600), the public bundle and the weights encrypted under them."""
        keys = path / "keys"
        if keys.exists():
            raise FileExistsError(
                f"{keys} exists: a saved key is never overwritten; save to a new folder"
            )
        keys.mkdir()
        session = self._serving()
        session.ctx.save(keys / SECRET_KEY_FILE)
        shutil.copytree(session.bundle_dir, keys / "bundle")
        model = session.client.set_model(self._weights()).to_bytes()
        write_atomic(path / ENCRYPTED_MODEL_FILE, model)
        return {
            "secret_key": f"keys/{SECRET_KEY_FILE}",
            "public_bundle": "keys/bundle",
            "encrypted_model": ENCRYPTED_MODEL_FILE,
        }

    @classmethod
    def load(cls, path: str | os.PathLike) -> EncryptedSoftmaxClassifier:
        """The classifier :meth:`save` wrote to ``path`` (unpickled: trust the folder)."""
        manifest = read_manifest(path)
        with open(Path(path) / MODEL_FILE, "rb") as f:
            model = pickle.load(f)
        if not isinstance(model, cls):
            raise ValueError(f"{path}/{MODEL_FILE} holds a {type(model).__name__}, not a {cls}")
        if model.classes_.tolist() != manifest["classes"]:
            raise ValueError(f"{path}: the manifest and the model disagree on the classes")
        if manifest.get("secret_key"):
            model._key_file = Path(path) / manifest["secret_key"]
        return model

    # -- the session: live, never pickled ---------------------------------------------------------
    def _weights(self) -> np.ndarray:
        return np.column_stack([self.coef_, self.intercept_])

    def _open_session(
        self, ctx: ClientContext | None = None, checkpoint: str | os.PathLike | None = None
    ) -> EncryptedSession:
        self.close()  # a refit ends the previous server session
        if checkpoint is not None and SessionStore(checkpoint).started:
            session = EncryptedSession.resume(
                checkpoint,
                separate_process=self.separate_process,
                insecure_for_testing=self.insecure_for_testing,
            )
            theirs = (session.spec, session.ctx.params.name, session.ctx.backend_name)
            if theirs != (self.spec_, self.preset, self.backend):
                session.close()
                raise CheckpointError(
                    f"{checkpoint} holds a run of {theirs[0]} at {theirs[1]} on {theirs[2]}; "
                    f"these parameters give {self.spec_} at {self.preset} on {self.backend}"
                )
        else:
            session = EncryptedSession(
                self.spec_,
                preset=self.preset,
                backend=self.backend,
                seed=self.random_state,
                separate_process=self.separate_process,
                insecure_for_testing=self.insecure_for_testing,
                ctx=ctx,
                checkpoint=checkpoint,
            )
        self._session = session
        self._closer = weakref.finalize(self, session.close)  # no leaked process or temp dir
        return session

    def _serving(self) -> EncryptedSession:
        """The session serving encrypted inference: fit's, or after loading a new one, under
        the saved key if the model was saved with it, else under fresh keys."""
        if "_session" not in self.__dict__:
            key = self.__dict__.get("_key_file")
            ctx = None
            if key is not None:
                ctx = ClientContext.load(key, insecure_for_testing=self.insecure_for_testing)
            self._open_session(ctx).serve(self._weights())
        return self._session

    def close(self) -> None:
        """End the server session (its process, its stored ciphertexts, the client's key)."""
        self.__dict__.pop("_session", None)
        closer = self.__dict__.pop("_closer", None)
        if closer is not None:
            closer()

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # a copy: on 3.11+ object's is __dict__ itself
        state.pop("_session", None)
        state.pop("_closer", None)
        state.pop("_key_file", None)  # where a loaded model's key lies: the folder says
        return state


def read_manifest(path: str | os.PathLike) -> dict:
    """The ``manifest.json`` of a folder :meth:`EncryptedSoftmaxClassifier.save` wrote."""
    path = Path(path)
    for name in (MANIFEST_FILE, MODEL_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path} is not a saved model: it has no {name} (save one with "
                f"`privlearn he train --data FILE --model {path}` or clf.save({str(path)!r}))"
            )
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}/{MANIFEST_FILE} is unreadable: {e}") from None
    version = manifest.get("format") if isinstance(manifest, dict) else None
    if version != SAVE_FORMAT:
        raise ValueError(
            f"{path} was saved in format {version!r}; "
            f"this privlearn reads format {SAVE_FORMAT}: save the model again"
        )
    return manifest


def _finite(x: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(
            f"features contain NaN or infinity (first at row {bad[0]}, "
            f"column {bad[1]}); impute or drop them before encrypting"
        )
    return x
