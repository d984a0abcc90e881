"""A user's own data in, a saved model out, and predictions from that model:
`privlearn he train --data FILE` and `privlearn he predict --model DIR --data FILE`."""

from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Console

from privlearn.cli import fields
from privlearn.cli.options import check_out_file, console
from privlearn.transfer.userdata import DataSource, load_data

OUTPUT_SUFFIXES = (".csv", ".json")


def train_own_data(
    source: DataSource,
    *,
    preset: str,
    hyper: dict,
    refresh: str,
    backend: str,
    max_train: int | None,
    separate_process: bool,
    seed: int,
    out: Path,
    include_secret_key: bool,
    checkpoint: Path | None,
) -> None:
    """Load and check ``source``, train on it under encryption (resumably, with a
    ``checkpoint`` folder), save the model in ``out``."""
    from privlearn.transfer.estimator import EncryptedSoftmaxClassifier

    data = load_data(source)
    x, y = data.x, data.y
    if max_train is not None:
        x, y = x[:max_train], y[:max_train]
    clf = EncryptedSoftmaxClassifier(
        backend=backend,
        preset=preset,
        refresh=refresh,
        separate_process=separate_process,
        random_state=seed,
        checkpoint=checkpoint,
        **hyper,
    )
    try:
        clf.fit(x, y)
        clf.save(out, data=_describe(source, data.columns), include_secret_key=include_secret_key)
        _print_run(clf, source, x, out, include_secret_key)
        if checkpoint is not None:
            console.print(
                f"the checkpoint in {checkpoint}/ is kept (its client/ part holds the secret "
                f"key): delete it once the model is saved"
            )
    finally:
        clf.close()


def _describe(source: DataSource, columns) -> dict:
    """What a later `he predict` needs to read the same features from another file."""
    return {
        "columns": list(columns) if columns is not None else None,
        "encoder": source.encoder,
        "text_column": source.text_column,
        "target": source.target,
    }


def _print_run(clf, source: DataSource, x: np.ndarray, out: Path, with_key: bool) -> None:
    run = clf.run_
    best = run.history[run.best_epoch]
    enc = "real encryption" if run.real_encryption else "SIMULATOR - NOT ENCRYPTION"
    console.print(
        f"[bold]{Path(source.data).name}[/]: {len(x)} rows, {x.shape[1]} features "
        f"({'given' if source.encoder == 'none' else source.encoder + ' encoder'}), "
        f"{clf.classes_.size} classes {clf.classes_.tolist()}; {run.backend} ({enc}), preset "
        f"{run.preset}, {run.security}, refresh '{run.refresh}'"
    )
    s = run.seconds
    console.print(
        f"epochs run {len(run.history)} (best {run.best_epoch + 1}: validation accuracy "
        f"{best['val_accuracy']:.4f}, Brier {best['val_brier']:.4f}); {run.steps} iterations "
        f"at {s['train'] / max(run.steps, 1):.2f} s each; total {s['total']:.1f} s; "
        f"{run.bytes_to_server / 1e6:.1f} MB to the server, {run.bytes_to_client / 1e6:.1f} MB "
        f"back"
    )
    console.print(
        f"saved the model in {out}/ (model.pkl, manifest.json): decrypted weights, scaler and "
        + (
            "spec; the secret key in keys/secret_key.plhe (mode 0600), the public bundle in "
            "keys/bundle/, the encrypted weights in encrypted_model.plhe"
            if with_key
            else "spec; no key"
        )
    )


PREDICT_OPTIONS = [
    inspect.Parameter(
        "model",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            ...,
            exists=True,
            file_okay=False,
            help="folder `he train --data` saved the model in",
            show_default="required",
        ),
        annotation=Path,
    ),
    *fields.options(DataSource, ["data", "target", "labels"]),
    inspect.Parameter(
        "plaintext",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            False, help="score with the decrypted weights in the clear instead of encrypted"
        ),
        annotation=bool,
    ),
    inspect.Parameter(
        "out",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            None,
            help="write predictions here: .csv or .json",
            callback=check_out_file,
            show_default="CSV on stdout",
        ),
        annotation=Path | None,
    ),
]


@fields.with_options(PREDICT_OPTIONS)
def predict(ctx: typer.Context, model: Path, plaintext: bool, out: Path | None, **values) -> None:
    """Predict with a saved model: by default under encryption (the server scores encrypted
    features; under the saved key, or fresh keys if none was saved), or with --plaintext on
    the decrypted weights."""
    from privlearn.transfer.estimator import EncryptedSoftmaxClassifier, read_manifest
    from privlearn.transfer.reference import exact_softmax

    if out is not None and out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out {out}: name a .csv or .json file")
    manifest = read_manifest(model)
    saved = manifest["data"]
    columns = tuple(saved["columns"]) if saved.get("columns") else None
    source = DataSource(
        **values, encoder=saved.get("encoder", "none"), text_column=saved.get("text_column", "text")
    )
    if source.target is None and source.labels is None and columns is not None:
        # the training file's label column, when present, is read as labels to score against
        source = dataclasses.replace(source, target=_present(source.data, saved.get("target")))
    data = load_data(source, need_labels=False, columns=columns)
    clf = EncryptedSoftmaxClassifier.load(model)
    err = Console(stderr=True, width=console.width)
    try:
        z = np.asarray(clf.decision_function(data.x, encrypted=not plaintext))
    finally:
        clf.close()
    if z.ndim == 1:  # two classes: scikit-learn's score of classes_[1]
        z = np.column_stack([np.zeros_like(z), z])
    proba = exact_softmax(z)
    pred = clf.classes_[z.argmax(axis=1)]
    rows = [
        {
            "row": i + 1,
            "prediction": _plain(p),
            **{f"p_{c}": float(q) for c, q in zip(clf.classes_, pr, strict=True)},
        }
        for i, (p, pr) in enumerate(zip(pred, proba, strict=True))
    ]
    text = _render(rows, "json" if out is not None and out.suffix.lower() == ".json" else "csv")
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    keys = "the saved key" if manifest.get("secret_key") else "fresh keys"
    how = (
        "in the clear (decrypted weights)"
        if plaintext
        else f"under encryption ({manifest['backend']}, preset {manifest['preset']}, {keys})"
    )
    line = f"scored {len(rows)} rows {how}"
    if data.y is not None:
        acc = float(np.mean(pred.astype(str) == np.asarray(data.y).astype(str)))
        line += f"; accuracy {acc:.4f} against the labels given"
    err.print(line + (f"; wrote {out}" if out is not None else ""), soft_wrap=True)


def _present(path: str | None, target: str | None) -> str | None:
    """``target`` if the CSV at ``path`` has that column (else None)."""
    if target is None or path is None or Path(path).suffix.lower() != ".csv":
        return None
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    return target if target in [h.strip() for h in header] else None


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _render(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=1) + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
