from __future__ import annotations

import inspect
import io
import pickle

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from privlearn.he import ClientContext, Evaluator
from privlearn.transfer.estimator import (
    MANIFEST_FILE,
    MODEL_FILE,
    SPEC_PARAMS,
    EncryptedSoftmaxClassifier,
    read_manifest,
)
from privlearn.transfer.roles import Client, Server
from privlearn.transfer.session import EncryptedSession
from privlearn.transfer.train import TrainSpec


@pytest.fixture(scope="module")
def fitted():
    x, y = load_wine(return_X_y=True)
    labels = np.array(["barolo", "grignolino", "barbera"])[y]  # string labels round-trip
    clf = EncryptedSoftmaxClassifier(
        backend="simulator",
        preset="n16-d24",
        epochs=4,
        batch_size=32,
        logit_range=16,
        progress=False,
    )
    clf.fit(x[:140], labels[:140])
    yield clf, x, labels
    clf.close()


@pytest.fixture(scope="module")
def binary():
    """Two classes with string labels, fitted on a DataFrame, refusing out-of-range rows."""
    pd = pytest.importorskip("pandas")
    data = load_breast_cancer(as_frame=True)
    labels = np.array(["malignant", "benign"])[data.target.to_numpy()]
    clf = EncryptedSoftmaxClassifier(
        backend="simulator",
        preset="toy-n12",
        insecure_for_testing=True,
        epochs=8,  # the cancer task's defaults (experiment.TASK_DEFAULTS)
        batch_size=64,
        lr=8.0,
        out_of_range="error",
        progress=False,
    )
    clf.fit(data.data.iloc[:400], labels[:400])
    assert isinstance(data.data, pd.DataFrame)
    yield clf, data.data, labels
    clf.close()


def test_fit_predict_shapes_and_accuracy(fitted):
    clf, x, labels = fitted
    assert clf.coef_.shape == (3, 13) and clf.intercept_.shape == (3,)
    assert set(clf.classes_) == set(labels)
    pred = clf.predict(x[140:])
    assert pred.shape == (38,) and pred.dtype == labels.dtype
    proba = clf.predict_proba(x[140:])
    assert proba.shape == (38, 3) and np.allclose(proba.sum(1), 1)
    assert clf.decision_function(x[140:]).shape == (38, 3)
    assert clf.score(x[140:], labels[140:]) > 0.85
    assert clf.run_.real_encryption is False  # simulator: results say so


def test_the_spec_is_the_front_doors_with_trainspec_defaults(fitted):
    clf, _, _ = fitted
    defaults = inspect.signature(EncryptedSoftmaxClassifier).parameters
    fields = {f: getattr(TrainSpec, f) for f in SPEC_PARAMS}
    assert {f: defaults[f].default for f in SPEC_PARAMS} == fields
    assert clf.spec_ == TrainSpec(classes=3, features=14, batch_size=32, epochs=4, logit_range=16)


def test_encrypted_inference_matches_plaintext_inference(fitted):
    clf, x, _ = fitted
    enc = clf.decision_function(x[140:], encrypted=True)
    plain = clf.decision_function(x[140:])
    assert np.max(np.abs(enc - plain)) < 1e-5
    assert (clf.predict(x[140:], encrypted=True) == clf.predict(x[140:])).all()
    enc_p, plain_p = clf.predict_proba(x[140:], encrypted=True), clf.predict_proba(x[140:])
    assert enc_p.shape == plain_p.shape
    assert np.max(np.abs(enc_p - plain_p)) < 0.01  # the softmax approximation's error


def test_input_errors(fitted):
    clf, x, labels = fitted
    with pytest.raises(ValueError, match="X has 12 features, but .* is expecting 13"):
        clf.predict(x[:, :12])
    bad = x[:3].copy()
    bad[1, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity .*row 1, column 4"):
        clf.predict(bad)
    with pytest.raises(ValueError, match="not seen at fit"):
        clf.score(x[:3], np.array(["barolo", "chianti", "barbera"]))


def test_one_far_row_is_clipped_not_the_batch_refused(fitted):
    clf, x, _ = fitted  # out_of_range="clip", the default
    batch = x[140:150].copy()
    batch[3] *= 50
    assert clf.scaler_.beyond(batch).tolist() == [3]
    z = clf.decision_function(batch)
    assert z.shape == (10, 3)
    keep = [i for i in range(10) if i != 3]
    assert np.array_equal(z[keep], clf.decision_function(batch[keep]))
    clipped = clf.scaler_.transform(batch[3:4])  # on the range's edge, its direction kept
    assert np.linalg.norm(clipped) == pytest.approx(1 + clf.range_tolerance)
    assert clf.predict(batch).shape == (10,)


def test_out_of_range_error_names_the_rows(binary):
    clf, x, _ = binary
    batch = x.iloc[400:410].copy()
    batch.iloc[[1, 6]] *= 40
    with pytest.raises(ValueError, match=r"2 row\(s\) lie beyond the training range.*rows 1, 6\."):
        clf.predict(batch)


def test_not_fitted_is_sklearns_error():
    clf = EncryptedSoftmaxClassifier(backend="simulator", preset="n16-d24", progress=False)
    with pytest.raises(NotFittedError):
        check_is_fitted(clf)
    for method in (clf.predict, clf.predict_proba, clf.decision_function):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            method(np.ones((2, 3)))
    with pytest.raises(NotFittedError):
        clf.score(np.ones((2, 3)), np.zeros(2))


def test_fitted_passes_check_is_fitted(fitted):
    check_is_fitted(fitted[0])


def test_fit_errors():
    clf = EncryptedSoftmaxClassifier(backend="simulator", preset="n16-d24", progress=False)
    with pytest.raises(ValueError, match="two classes.*1 class"):
        clf.fit(np.ones((10, 3)), np.zeros(10))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        clf.fit(np.ones((10, 3)), np.zeros(9))
    with pytest.raises(ValueError, match="Unknown label type"):
        clf.fit(np.ones((10, 3)), np.linspace(0, 1, 10))
    with pytest.raises(ValueError, match="cannot hold out a stratified validation_fraction"):
        clf.fit(np.ones((5, 3)), np.array([0, 0, 0, 0, 1]))
    with pytest.raises(ValueError, match="refresh"):
        EncryptedSoftmaxClassifier(backend="simulator", refresh="magic", progress=False).fit(
            *load_wine(return_X_y=True)
        )


def test_binary_outputs_are_shaped_as_scikit_learns(binary):
    clf, x, labels = binary
    rows = x.iloc[400:460]
    assert clf.classes_.tolist() == ["benign", "malignant"]
    d, p = clf.decision_function(rows), clf.predict_proba(rows)
    assert d.shape == (60,) and p.shape == (60, 2) and np.allclose(p.sum(1), 1)
    pred = clf.predict(rows)
    assert np.array_equal(pred, clf.classes_[(d > 0).astype(int)])  # d scores classes_[1]
    assert np.array_equal(p[:, 1] > 0.5, d > 0)
    assert np.mean(pred == labels[400:460]) > 0.9
    enc = clf.decision_function(rows, encrypted=True)
    assert enc.shape == (60,) and np.max(np.abs(enc - d)) < 1e-4


def test_feature_names_are_checked_by_name_not_by_range(binary):
    clf, x, _ = binary
    assert clf.feature_names_in_.tolist() == x.columns.tolist()
    rows = x.iloc[400:405]
    with pytest.raises(ValueError, match="Feature names must be in the same order"):
        clf.predict(rows[rows.columns[::-1]])
    with pytest.raises(ValueError, match="missing:\n- mean radius"):
        clf.predict(rows.drop(columns="mean radius"))


class _Recorder(pickle.Pickler):
    """Records the type of every object it pickles."""

    def __init__(self, file):
        super().__init__(file)
        self.types: set[type] = set()

    def reducer_override(self, obj):
        self.types.add(type(obj))
        return NotImplemented


LIVE = (ClientContext, Evaluator, EncryptedSession, Client, Server)


def test_fitted_pickles_without_session_or_key_and_predicts_the_same(fitted, tmp_path):
    clf, x, _ = fitted
    rows = x[140:]
    secret = clf._session.ctx._secret_key_bytes()
    rec = _Recorder(io.BytesIO())
    rec.dump(clf)
    assert not [t for t in rec.types if issubclass(t, LIVE)], rec.types
    blob = pickle.dumps(clf)
    assert secret not in blob
    joblib.dump(clf, tmp_path / "clf.joblib")
    assert secret not in (tmp_path / "clf.joblib").read_bytes()
    for loaded in (pickle.loads(blob), joblib.load(tmp_path / "clf.joblib")):
        assert "_session" not in vars(loaded)
        assert np.array_equal(loaded.predict(rows), clf.predict(rows))
        assert np.array_equal(loaded.predict_proba(rows), clf.predict_proba(rows))
    # encrypted inference after loading: a new session, fresh keys, the same answers
    enc = loaded.decision_function(rows, encrypted=True)
    assert loaded._session.ctx._secret_key_bytes() != secret
    assert np.max(np.abs(enc - clf.decision_function(rows))) < 1e-5
    loaded.close()
    assert clf.predict(rows[:3], encrypted=True).shape == (3,)  # pickling left clf's session


def test_scikit_learn_protocol():
    from sklearn.base import clone

    clf = EncryptedSoftmaxClassifier(backend="simulator", lr=2.0, epochs=3)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and twin is not clf
    assert twin.set_params(epochs=5).epochs == 5


def test_save_and_load_predict_the_same_and_the_folder_holds_no_key(fitted, tmp_path):
    clf, x, _ = fitted
    rows = x[140:]
    secret = clf._session.ctx._secret_key_bytes()
    folder = clf.save(tmp_path / "model", data={"columns": None})
    assert sorted(f.name for f in folder.iterdir()) == [MANIFEST_FILE, MODEL_FILE]
    for f in folder.iterdir():
        assert secret not in f.read_bytes(), f.name
    manifest = read_manifest(folder)
    assert manifest["classes"] == clf.classes_.tolist() and manifest["n_features"] == 13
    assert manifest["spec"] == clf.spec_.to_meta() and "no key" in manifest["holds"]
    loaded = EncryptedSoftmaxClassifier.load(folder)
    assert np.array_equal(loaded.predict(rows), clf.predict(rows))
    assert np.array_equal(loaded.predict_proba(rows), clf.predict_proba(rows))
    assert np.array_equal(loaded.coef_, clf.coef_) and loaded.scaler_.norm == clf.scaler_.norm
    try:
        enc = loaded.decision_function(rows, encrypted=True)
        assert np.max(np.abs(enc - clf.decision_function(rows))) < 1e-5
    finally:
        loaded.close()


def test_saving_leaves_no_torn_file_and_loading_refuses_what_is_not_a_model(fitted, tmp_path):
    clf, _, _ = fitted
    folder = clf.save(tmp_path / "m")
    # no temporary left
    assert not [f for f in folder.iterdir() if f.name.startswith(".") or f.name.endswith(".tmp")]
    with pytest.raises(FileNotFoundError, match="is not a saved model: it has no manifest.json"):
        EncryptedSoftmaxClassifier.load(tmp_path)
    (folder / MANIFEST_FILE).write_text('{"format": 99}')
    with pytest.raises(ValueError, match="saved in format 99; this privlearn reads format 1"):
        EncryptedSoftmaxClassifier.load(folder)
    with pytest.raises(NotFittedError):
        EncryptedSoftmaxClassifier(backend="simulator").save(tmp_path / "n")


@pytest.mark.openfhe
def test_real_encryption_fitted_pickles_joblibs_and_saves_without_its_key(tmp_path):
    """On OpenFHE the session holds a CryptoContext that cannot be pickled: none travels."""
    x, y = load_breast_cancer(return_X_y=True)
    x, y = x[:120, :6], y[:120]
    clf = EncryptedSoftmaxClassifier(
        preset="toy-n12", insecure_for_testing=True, epochs=1, batch_size=64, progress=False
    )
    try:
        clf.fit(x, y)
        assert clf.run_.real_encryption
        secret = clf._session.ctx._secret_key_bytes()
        blob = pickle.dumps(clf)
        joblib.dump(clf, tmp_path / "clf.joblib")
        clf.save(tmp_path / "model")
        files = [tmp_path / "clf.joblib", *(tmp_path / "model").iterdir()]
        window = secret[len(secret) // 2 : len(secret) // 2 + 64]
        assert window not in blob and all(window not in f.read_bytes() for f in files)
        loaded = [
            pickle.loads(blob),
            joblib.load(tmp_path / "clf.joblib"),
            EncryptedSoftmaxClassifier.load(tmp_path / "model"),
        ]
        for m in loaded:
            assert np.array_equal(m.predict(x), clf.predict(x))
    finally:
        clf.close()


def test_saved_with_its_secret_key_it_serves_under_that_key(fitted, tmp_path):
    """The key only when asked: mode 0600, beside a bundle and encrypted weights that a
    server loads with public material alone; the pickle holds no key."""
    from privlearn.he import io as he_io
    from privlearn.transfer.protocol import Message
    from privlearn.transfer.roles import read_matrix

    clf, x, _ = fitted
    rows = x[140:150]
    secret = clf._session.ctx._secret_key_bytes()
    folder = clf.save(tmp_path / "m", include_secret_key=True)
    key = folder / "keys" / "secret_key.plhe"
    assert key.stat().st_mode & 0o777 == 0o600
    assert secret in key.read_bytes()
    assert all(secret not in f.read_bytes() for f in folder.iterdir() if f.is_file())
    manifest = read_manifest(folder)
    assert manifest["secret_key"] == "keys/secret_key.plhe"
    # the server's side: the bundle and the encrypted model file, nothing else
    ev = Evaluator.from_bundle(folder / manifest["public_bundle"])
    msg = Message.from_bytes((folder / manifest["encrypted_model"]).read_bytes())
    w = read_matrix(ev, msg.meta["weights"], msg.blobs)
    assert w.shape == (3, 14)
    loaded = EncryptedSoftmaxClassifier.load(folder)
    try:
        enc = loaded.decision_function(rows, encrypted=True)
        assert loaded._session.ctx._secret_key_bytes() == secret  # the saved key, not fresh
        assert np.max(np.abs(enc - clf.decision_function(rows))) < 1e-5
    finally:
        loaded.close()
    assert "_key_file" not in pickle.loads(pickle.dumps(loaded)).__dict__
    with pytest.raises(FileExistsError, match="never overwritten"):
        clf.save(folder, include_secret_key=True)
    key.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        he_io.read_private(key)
