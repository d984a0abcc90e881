"""`privlearn he train --data` on a user's CSV, then `privlearn he predict` from the saved
model, as a new user would run them (the simulator: the commands are what is tested)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

from privlearn.cli import app


def _invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A breast-cancer CSV with a string label column, split into training and new rows."""
    d = load_breast_cancer()
    order = np.random.default_rng(0).permutation(len(d.target))[:190]
    names = [n.replace(" ", "_") for n in d.feature_names[:8]]
    root = tmp_path_factory.mktemp("user")
    for name, idx in (("train.csv", order[:150]), ("new.csv", order[150:])):
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([*names, "diagnosis"])
            for i in idx:
                w.writerow([*d.data[i, :8], d.target_names[d.target[i]]])
    return root


@pytest.fixture(scope="module")
def model(files):
    out = files / "model"
    r = _invoke(
        ["he", "train", "--data", files / "train.csv", "--target", "diagnosis"]
        + ["--backend", "simulator", "--epochs", "1", "--batch-size", "64", "--out", out]
    )
    assert r.exit_code == 0, r.output
    assert "150 rows, 8 features (given), 2 classes ['benign', 'malignant']" in r.output
    assert f"saved the model in {out}/" in r.output
    return out


def test_train_saves_a_model_with_its_columns_and_no_key(model):
    assert sorted(f.name for f in model.iterdir()) == ["manifest.json", "model.pkl"]
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["data"]["target"] == "diagnosis" and len(manifest["data"]["columns"]) == 8
    assert manifest["backend"] == "simulator" and manifest["real_encryption"] is False


def test_predict_encrypted_and_plaintext_agree_as_csv_and_json(files, model):
    enc = _invoke(["he", "predict", "--model", model, "--data", files / "new.csv"])
    assert enc.exit_code == 0, enc.output
    assert "scored 40 rows under encryption (simulator" in enc.stderr
    assert "accuracy" in enc.stderr  # the label column of new.csv is scored against
    rows = list(csv.DictReader(enc.stdout.splitlines()))
    assert len(rows) == 40 and set(rows[0]) == {"row", "prediction", "p_benign", "p_malignant"}
    out = files / "pred.json"
    plain = _invoke(
        ["he", "predict", "--model", model, "--data", files / "new.csv", "--plaintext"]
        + ["--out", out]
    )
    assert plain.exit_code == 0, plain.output
    assert "in the clear" in plain.stderr and f"wrote {out}" in plain.stderr
    doc = json.loads(out.read_text())
    assert [r["prediction"] for r in doc] == [r["prediction"] for r in rows]
    p_enc = np.array([float(r["p_malignant"]) for r in rows])
    assert np.max(np.abs(p_enc - [r["p_malignant"] for r in doc])) < 1e-4


def test_predict_picks_the_models_columns_by_name(files, model):
    """Columns in another order, an extra one and no label column still score the same."""
    with open(files / "new.csv", newline="") as f:
        table = list(csv.DictReader(f))
    cols = list(table[0])[:-1][::-1]
    with open(files / "shuffled.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["note", *cols])
        for r in table:
            w.writerow(["x", *(r[c] for c in cols)])
    a = _invoke(["he", "predict", "--model", model, "--data", files / "new.csv", "--plaintext"])
    b = _invoke(
        ["he", "predict", "--model", model, "--data", files / "shuffled.csv", "--plaintext"]
    )
    assert b.exit_code == 0, b.output
    assert a.stdout == b.stdout and "accuracy" not in b.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--target", "label"], ["--target 'label' is not a column of train.csv", "diagnosis"]),
        ([], ["column 'diagnosis'", "not a number", "--target"]),
        (["--target", "diagnosis", "--task", "wine"], ["--task or --data, not both"]),
        (["--target", "diagnosis", "--max-train", "1"], ["at least two classes"]),
    ],
)
def test_train_data_mistakes_are_one_line(files, args, words):
    r = _invoke(["he", "train", "--data", files / "train.csv", "--backend", "simulator", *args])
    assert r.exit_code == 2, r.output
    (line,) = r.stderr.splitlines()
    assert line.startswith("error: ") and all(w in line for w in words), line


def test_predict_mistakes_are_one_line(files, model, tmp_path):
    (tmp_path / "few.csv").write_text("mean_radius\n1\n")
    cases = [
        (["--model", tmp_path, "--data", files / "new.csv"], "is not a saved model"),
        (["--model", model, "--data", tmp_path / "few.csv"], "feature column 'mean_texture'"),
        (["--model", model, "--data", files / "new.csv", "--out", tmp_path / "p.txt"], ".csv"),
    ]
    for args, word in cases:
        r = _invoke(["he", "predict", *args])
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith("error: ") and word in r.stderr, r.stderr


def test_estimate_beside_the_saved_runs_measured_figures(model, tmp_path):
    out = tmp_path / "estimate.json"
    r = _invoke(["he", "estimate", "--model", model, "--out", out])
    assert r.exit_code == 0, r.output
    assert "measured (simulator)" in r.output and "seconds per iteration" in r.output
    assert "its seconds are not OpenFHE's" in r.output
    doc = json.loads(out.read_text())
    est, got = doc["estimate"], doc["measured"]
    assert est["steps"] == got["steps"] == 2  # 127 training rows in batches of 64, 1 epoch
    assert est["rows"] == 127 and est["val_rows"] == 23 and est["preset"] == "n15-d11"
    # levels, hence ciphertext counts per kind, are the same on both backends
    assert set(got["mb_by_kind"]) - {"ack", "train_step", "validate", "get_model"} <= set(
        est["mb_by_kind"]
    ) | {"set_model"}


def test_estimate_without_a_shape_is_one_line():
    r = _invoke(["he", "estimate", "--rows", "10"])
    assert r.exit_code == 2 and r.stderr.startswith("error: give --rows, --features and --classes")


def test_predict_uses_a_saved_key(files, model, tmp_path):
    from privlearn.transfer.estimator import EncryptedSoftmaxClassifier, read_manifest

    clf = EncryptedSoftmaxClassifier.load(model)
    try:
        clf.save(tmp_path / "keyed", data=read_manifest(model)["data"], include_secret_key=True)
    finally:
        clf.close()
    r = _invoke(["he", "predict", "--model", tmp_path / "keyed", "--data", files / "new.csv"])
    assert r.exit_code == 0, r.output
    assert "under encryption (simulator, preset n15-d11, the saved key)" in r.stderr
    plain = _invoke(["he", "predict", "--model", model, "--data", files / "new.csv", "--plaintext"])
    assert [row.split(",")[1] for row in r.stdout.splitlines()] == [
        row.split(",")[1] for row in plain.stdout.splitlines()
    ]
    r = _invoke(["he", "train", "--task", "wine", "--include-secret-key"])
    assert r.exit_code == 2 and "--include-secret-key saves a model trained with --data" in r.stderr
