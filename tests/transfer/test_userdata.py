"""A user's own files: what loads, and one clear error for every mistake."""

from __future__ import annotations

import numpy as np
import pytest

from privlearn.transfer.userdata import DataSource, load_data

HEADER = "a,b,label\n"
ROWS = "1,2,x\n3,4,y\n5,6,x\n"


def _csv(tmp_path, text: str, name: str = "d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_with_target_column(tmp_path):
    d = load_data(_csv(tmp_path, HEADER + ROWS), target="label")
    assert d.x.tolist() == [[1, 2], [3, 4], [5, 6]] and d.x.dtype == np.float64
    assert d.y.tolist() == ["x", "y", "x"] and d.columns == ("a", "b") and d.encoder == "none"


def test_integer_labels_are_integers_and_a_labels_file_works(tmp_path):
    d = load_data(_csv(tmp_path, "a,b,label\n1,2,0\n3,4,1\n"), target="label")
    assert d.y.dtype.kind == "i" and d.y.tolist() == [0, 1]
    (tmp_path / "y.txt").write_text("cat\ndog\n")
    d = load_data(_csv(tmp_path, "a,b\n1,2\n3,4\n"), labels=str(tmp_path / "y.txt"))
    assert d.y.tolist() == ["cat", "dog"]


def test_model_columns_are_picked_by_name_and_labels_are_optional(tmp_path):
    path = _csv(tmp_path, "b,extra,a\n2,9,1\n4,9,3\n")
    d = load_data(path, need_labels=False, columns=("a", "b"))
    assert d.x.tolist() == [[1, 2], [3, 4]] and d.y is None
    with pytest.raises(ValueError, match="the model's feature column 'c' is not a column"):
        load_data(path, need_labels=False, columns=("a", "c"))


def test_npy_with_labels_and_npz(tmp_path):
    x = np.arange(12.0).reshape(6, 2)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.array([0, 1] * 3))
    d = load_data(tmp_path / "x.npy", labels=str(tmp_path / "y.npy"))
    assert np.array_equal(d.x, x) and d.y.tolist() == [0, 1] * 3
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1] * 3), other=np.ones(6))
    assert load_data(tmp_path / "d.npz").y.tolist() == [0, 1] * 3
    assert load_data(tmp_path / "d.npz", target="other", need_labels=False).y.tolist() == [1] * 6


@pytest.mark.parametrize(
    "text, kw, match",
    [
        (
            HEADER + ROWS,
            {"target": "class"},
            "--target 'class' is not a column of d.csv; its columns are a, b, label",
        ),
        (
            "a,b,label\n1,two,x\n3,4,y\n",
            {"target": "label"},
            "column 'b' of d.csv holds 'two' at row 1, not a number",
        ),
        (
            "a,b,label\n1,,x\n3,4,y\n",
            {"target": "label"},
            "column 'b' of d.csv has 1 missing or non-finite value.*row 1",
        ),
        (
            "a,b,label\n1,2,x\nnan,4,y\n",
            {"target": "label"},
            "column 'a' of d.csv has 1 missing or non-finite value.*row 2",
        ),
        ("a,b,label\n1,2,x\n3,4,\n", {"target": "label"}, "1 missing label.*row 2"),
        ("a,b,label\n1,2,x\n3,4,x\n", {"target": "label"}, r"single class \(\['x'\]\)"),
        ("a,b\n1,2\n3,4\n", {}, "no labels: name the label column with --target"),
        (HEADER + ROWS, {}, "column 'label' .* not a number: .* or name it with --target"),
        ("a,b,label\n1,2,x\n3,4\n", {"target": "label"}, "row 2 has 2 fields, the header 3"),
        ("", {"target": "label"}, "d.csv is empty"),
        ("a,b,label\n", {"target": "label"}, "no data rows"),
        ("label\nx\ny\n", {"target": "label"}, "no feature column besides --target"),
    ],
)
def test_csv_mistakes(tmp_path, text, kw, match):
    with pytest.raises(ValueError, match=match):
        load_data(_csv(tmp_path, text), **kw)


def test_mismatched_lengths_and_other_mistakes(tmp_path):
    (tmp_path / "y.txt").write_text("a\nb\n")
    path = _csv(tmp_path, "a,b\n1,2\n3,4\n5,6\n")
    with pytest.raises(ValueError, match="d.csv has 3 samples but there are 2 labels"):
        load_data(path, labels=str(tmp_path / "y.txt"))
    with pytest.raises(FileNotFoundError, match="--data .*nope.csv: no such file"):
        load_data(tmp_path / "nope.csv", target="a")
    with pytest.raises(FileNotFoundError, match="--labels .*: no such file"):
        load_data(path, labels=str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="expected a .csv, .npy or .npz file"):
        load_data(_csv(tmp_path, "x", "d.xlsx"), target="a")
    with pytest.raises(ValueError, match="a folder of images needs --encoder image"):
        load_data(tmp_path, target="a")
    with pytest.raises(ValueError, match="--target column or a --labels file"):
        DataSource(data=str(path), target="a", labels="y.txt")
    with pytest.raises(ValueError, match="encoder must be one of none, image, text"):
        DataSource(data=str(path), encoder="audio")
    with pytest.raises(ValueError, match="no data given: pass --data"):
        load_data(DataSource())


def test_array_mistakes(tmp_path):
    np.save(tmp_path / "x1.npy", np.ones(5))
    with pytest.raises(ValueError, match=r"shape \(5,\); features are a 2-D array"):
        load_data(tmp_path / "x1.npy", need_labels=False)
    x = np.ones((4, 2))
    x[2, 1] = np.nan
    np.save(tmp_path / "xn.npy", x)
    with pytest.raises(ValueError, match="NaN or infinite features .*row 3, column 2"):
        load_data(tmp_path / "xn.npy", need_labels=False)
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    with pytest.raises(ValueError, match="bare array with no columns: pass --labels"):
        load_data(tmp_path / "x.npy", target="y")
    np.save(tmp_path / "yf.npy", np.array([0.5, 1, 0, 1]))
    with pytest.raises(ValueError, match="fractional numbers"):
        load_data(tmp_path / "x.npy", labels=str(tmp_path / "yf.npy"))
    np.savez(tmp_path / "d.npz", features=np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"holds \['features'\]; name the features array x"):
        load_data(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", x=np.ones((4, 2)), y=np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="--target 'label': e.npz holds no such array"):
        load_data(tmp_path / "e.npz", target="label")


def test_image_folder_layout_is_checked_before_any_encoding(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_data(tmp_path, encoder="image")
    with pytest.raises(ValueError, match="class subfolders, which name the labels: drop --labels"):
        load_data(tmp_path, encoder="image", labels="y.txt")
    with pytest.raises(ValueError, match="--encoder text reads a column of a CSV file"):
        np.save(tmp_path / "x.npy", np.ones((2, 2)))
        load_data(tmp_path / "x.npy", encoder="text")
