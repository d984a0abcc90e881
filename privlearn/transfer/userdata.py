"""A user's own data, from a file, checked before anything is encrypted.

=================  ==========================================================================
``data``           what it holds
=================  ==========================================================================
``x.csv``          a header row, then one sample a row; ``target`` names the label column and
                   every other column is a numeric feature (``encoder="text"``: the
                   ``text_column`` is the only feature, encoded by MiniLM)
``x.npy``          a 2-D numeric array; labels from ``labels``
``x.npz``          arrays ``x`` (or ``X``) and the labels named by ``target`` (default ``y``)
``images/``        with ``encoder="image"``: one subfolder per class (its name is the label),
                   or image files directly inside with ``labels`` in file-name order;
                   encoded by EfficientNet-lite0
=================  ==========================================================================

``labels`` is a file of one label a line (``.txt``, ``.csv`` with one column) or ``.npy``.
Every mistake is refused with one error that names the file, the column or the row and says
how to fix it: a missing column, a non-numeric or missing feature value, a single class,
features and labels of different lengths. Row numbers count data rows from 1 (a CSV's line
number is one more, for its header).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ENCODERS = ("none", "image", "text")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_MISSING = {"", "na", "nan", "null", "none"}


@dataclass(frozen=True)
class DataSource:
    """Where a user's samples and labels are; every field is also a CLI option."""

    data: str | None = field(
        default=None,
        metadata={"help": "CSV, NPY or NPZ file (or an image folder with --encoder image)"},
    )
    target: str | None = field(
        default=None,
        metadata={
            "help": "label column of a CSV, or label array of an NPZ",
            "unset": "y in an NPZ",
        },
    )
    labels: str | None = field(
        default=None,
        metadata={"help": "labels file, one a line (.txt, .csv) or .npy", "unset": "none"},
    )
    encoder: str = field(
        default="none",
        metadata={"help": "none (numeric features), image (EfficientNet-lite0) or text (MiniLM)"},
    )
    text_column: str = field(
        default="text", metadata={"help": "the CSV column --encoder text encodes"}
    )

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.target is not None and self.labels is not None:
            raise ValueError("give the labels once: a --target column or a --labels file")


@dataclass(frozen=True)
class UserData:
    """Features (float64, one row a sample), labels (None when the source has none), the
    names of the feature columns (None for arrays and encoders) and the encoder that made
    the features (``"none"`` when they were given)."""

    x: np.ndarray
    y: np.ndarray | None
    columns: tuple[str, ...] | None
    encoder: str


def load_data(
    source: DataSource | str | Path,
    *,
    need_labels: bool = True,
    columns: tuple[str, ...] | None = None,
    progress: bool = True,
    **kw,
) -> UserData:
    """Read and check ``source`` (a :class:`DataSource`, or a path with its fields in ``kw``).
    ``columns``: the feature columns a model was trained on, picked by name (others, the
    target included, are ignored). Without ``need_labels`` a source may come without labels
    (inference)."""
    if not isinstance(source, DataSource):
        source = DataSource(data=str(source), **kw)
    if source.data is None:
        raise ValueError("no data given: pass --data FILE (CSV, NPY or NPZ)")
    path = Path(source.data)
    if not path.exists():
        raise FileNotFoundError(f"--data {path}: no such file or folder")
    if source.encoder == "image":
        x, y = _images(path, source, progress)
        data = UserData(x, y, None, "efficientnet-lite0")
    elif path.is_dir():
        raise ValueError(f"--data {path} is a folder; a folder of images needs --encoder image")
    else:
        data = _table(path, source, columns, progress)
    if data.y is None and source.labels is not None:
        data = UserData(data.x, _labels_file(Path(source.labels)), data.columns, data.encoder)
    return _checked(data, path, need_labels)


# -- tables -------------------------------------------------------------------------------------
def _table(path: Path, src: DataSource, columns, progress: bool) -> UserData:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv(path, src, columns, progress)
    if src.encoder == "text":
        raise ValueError(f"--encoder text reads a column of a CSV file, not {path.name}")
    if suffix == ".npy":
        if src.target is not None:
            raise ValueError(f"{path.name} is a bare array with no columns: pass --labels FILE")
        return UserData(_numeric_array(_npy(path), path.name), None, None, "none")
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            arrays = dict(z)
        key = next((k for k in ("x", "X") if k in arrays), None)
        if key is None:
            raise ValueError(f"{path.name} holds {sorted(arrays)}; name the features array x")
        y = None
        target = src.target or ("y" if "y" in arrays and src.labels is None else None)
        if target is not None:
            if target not in arrays:
                raise ValueError(
                    f"--target {target!r}: {path.name} holds no such array; it holds "
                    f"{', '.join(sorted(arrays))}"
                )
            y = arrays[target]
        return UserData(_numeric_array(arrays[key], f"{path.name}[{key}]"), y, None, "none")
    raise ValueError(f"--data {path.name}: expected a .csv, .npy or .npz file")


def _npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path.name} is not a plain numeric array ({e})") from None


def _numeric_array(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim != 2:
        raise ValueError(f"{what} has shape {a.shape}; features are a 2-D array, one row a sample")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"{what} holds {a.dtype} values; features must be numbers")
    return a.astype(np.float64)


def _csv(path: Path, src: DataSource, columns, progress: bool) -> UserData:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or not any(h.strip() for h in rows[0]):
        raise ValueError(f"{path.name} is empty; a CSV needs a header row naming its columns")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    if not body:
        raise ValueError(f"{path.name} has a header but no data rows")
    for i, r in enumerate(body, 1):
        if len(r) != len(header):
            raise ValueError(
                f"{path.name} row {i} has {len(r)} fields, the header {len(header)}; "
                f"check its quoting and commas"
            )

    def index(name: str, what: str) -> int:
        if name not in header:
            raise ValueError(
                f"{what} {name!r} is not a column of {path.name}; its columns are "
                f"{', '.join(header)}"
            )
        return header.index(name)

    y = None
    if src.target is not None:
        t = index(src.target, "--target")
        y = _label_values([r[t] for r in body], f"--target column {src.target!r}")
    if src.encoder == "text":
        from privlearn.transfer.encoders import MiniLM

        c = index(src.text_column, "--text-column")
        x = MiniLM().encode([r[c] for r in body], progress=progress)
        return UserData(np.asarray(x, np.float64), y, None, MiniLM.id)
    if columns is None:
        columns = tuple(h for h in header if h != src.target)
        if not columns:
            raise ValueError(f"{path.name} has no feature column besides --target")
    picked = [index(c, "the model's feature column") for c in columns]
    x = np.empty((len(body), len(picked)))
    for j, (name, c) in enumerate(zip(columns, picked, strict=True)):
        x[:, j] = _numbers([r[c] for r in body], name, path.name)
    return UserData(x, y, tuple(columns), "none")


def _numbers(cells: list[str], name: str, file: str) -> np.ndarray:
    out = np.empty(len(cells))
    missing = []
    for i, cell in enumerate(cells):
        text = cell.strip()
        if text.lower() in _MISSING:
            missing.append(i + 1)
            continue
        try:
            out[i] = float(text)
        except ValueError:
            raise ValueError(
                f"column {name!r} of {file} holds {text[:40]!r} at row {i + 1}, not a number: "
                f"drop the column, encode it as numbers, or name it with --target"
            ) from None
        if not math.isfinite(out[i]):
            missing.append(i + 1)
    if missing:
        raise ValueError(
            f"column {name!r} of {file} has {len(missing)} missing or non-finite value(s) "
            f"(first at row {missing[0]}); impute or drop those rows before encrypting"
        )
    return out


def _label_values(values: list[str], what: str) -> np.ndarray:
    """Labels as read from text: integers when they all are, else the strings (stripped)."""
    values = [v.strip() for v in values]
    empty = [i + 1 for i, v in enumerate(values) if v.lower() in _MISSING]
    if empty:
        raise ValueError(
            f"{what} has {len(empty)} missing label(s) (first at row {empty[0]}); "
            f"label or drop those rows"
        )
    try:
        return np.array([int(v) for v in values])
    except ValueError:
        return np.array(values)


def _labels_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"--labels {path}: no such file")
    if path.suffix.lower() == ".npy":
        y = _npy(path)
        if y.ndim != 1:
            raise ValueError(f"--labels {path.name} has shape {y.shape}; labels are 1-D")
        return y
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r]
    if any(len(r) != 1 for r in rows):
        raise ValueError(f"--labels {path.name}: expected one label a line, no commas")
    return _label_values([r[0] for r in rows], f"--labels {path.name}")


# -- images -------------------------------------------------------------------------------------
def _images(path: Path, src: DataSource, progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
    from PIL import Image

    from privlearn.transfer.encoders import IMAGE_SIZE, EfficientNetLite0

    if not path.is_dir():
        raise ValueError(f"--encoder image reads a folder of images; {path} is a file")
    classes = sorted(d for d in path.iterdir() if d.is_dir())
    if classes and src.labels is not None:
        raise ValueError(f"{path} has class subfolders, which name the labels: drop --labels")
    files, y = [], None
    if classes:
        names = []
        for d in classes:
            found = _image_files(d)
            files += found
            names += [d.name] * len(found)
        y = np.array(names)
    else:
        files = _image_files(path)
    if not files:
        raise ValueError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                rgb = im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        except OSError as e:
            raise ValueError(f"cannot read image {f}: {e}") from None
        images[i] = np.asarray(rgb, np.float32) / 255.0
    return np.asarray(EfficientNetLite0().encode(images, progress=progress), np.float64), y


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)


# -- the checks every source passes -------------------------------------------------------------
def _checked(data: UserData, path: Path, need_labels: bool) -> UserData:
    x, y = data.x, data.y
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{path.name} holds no samples or no features (shape {x.shape})")
    if not np.isfinite(x).all():
        i, j = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(
            f"{path.name} has NaN or infinite features (first at row {i + 1}, column {j + 1}); "
            f"impute or drop them before encrypting"
        )
    if y is None:
        if need_labels:
            raise ValueError(
                "no labels: name the label column with --target (CSV, NPZ), give a --labels "
                "file, or put images in one subfolder per class"
            )
        return data
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels have shape {y.shape}; expected one label per sample")
    if len(y) != len(x):
        raise ValueError(
            f"{path.name} has {len(x)} samples but there are {len(y)} labels; "
            f"give one label per sample, in the same order"
        )
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError(f"labels contain NaN (first at row {np.argmin(np.isfinite(y)) + 1})")
        if not np.all(y == np.round(y)):
            raise ValueError("labels are fractional numbers; a classifier needs class labels")
        y = y.astype(np.int64)
    classes = np.unique(y)
    if need_labels and classes.size < 2:
        raise ValueError(
            f"the labels hold a single class ({classes.tolist()}); a classifier needs at least two"
        )
    return UserData(x, y, data.columns, data.encoder)
