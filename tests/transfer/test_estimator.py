from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_wine

from privlearn.transfer.estimator import EncryptedSoftmaxClassifier


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


def test_fit_predict_shapes_and_accuracy(fitted):
    clf, x, labels = fitted
    assert clf.coef_.shape == (3, 13) and clf.intercept_.shape == (3,)
    assert set(clf.classes_) == set(labels)
    pred = clf.predict(x[140:])
    assert pred.shape == (38,) and pred.dtype == labels.dtype
    proba = clf.predict_proba(x[140:])
    assert proba.shape == (38, 3) and np.allclose(proba.sum(1), 1)
    assert clf.score(x[140:], labels[140:]) > 0.85
    assert clf.run_.real_encryption is False  # simulator: results say so


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
    with pytest.raises(ValueError, match="13"):
        clf.predict(x[:, :12])
    bad = x[:3].copy()
    bad[1, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clf.predict(bad)
    with pytest.raises(ValueError, match="not seen at fit"):
        clf.score(x[:3], np.array(["barolo", "chianti", "barbera"]))
    far = x[:1] * 50
    with pytest.raises(ValueError, match="outside the range"):
        clf.predict(far)


def test_fit_errors():
    clf = EncryptedSoftmaxClassifier(backend="simulator", preset="n16-d24", progress=False)
    with pytest.raises(AttributeError, match="not fitted"):
        clf.predict(np.ones((2, 3)))
    with pytest.raises(ValueError, match="two classes"):
        clf.fit(np.ones((10, 3)), np.zeros(10))
    with pytest.raises(ValueError, match="labels of shape"):
        clf.fit(np.ones((10, 3)), np.zeros(9))
    with pytest.raises(ValueError, match="refresh"):
        EncryptedSoftmaxClassifier(backend="simulator", refresh="magic", progress=False).fit(
            *load_wine(return_X_y=True)
        )


def test_scikit_learn_protocol():
    from sklearn.base import clone

    clf = EncryptedSoftmaxClassifier(backend="simulator", lr=2.0, epochs=3)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and twin is not clf
    assert twin.set_params(epochs=5).epochs == 5
