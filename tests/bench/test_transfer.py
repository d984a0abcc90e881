"""`privlearn bench transfer` end to end on one tiny task (simulator): a part is run once,
kept, and gathered into the table; a kept part with the same settings is not run again."""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from privlearn.bench import transfer
from privlearn.cli import app

ARGS = [
    "bench",
    "transfer",
    "--task",
    "cancer",
    "--backend",
    "simulator",
    "--epochs",
    "1",
    "--max-train",
    "64",
]


def test_parts_are_kept_and_collected(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "RESULTS", tmp_path)
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, [*ARGS, "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    (row,) = doc["tasks"]
    assert (row["task"], row["backend"], row["refresh"]) == ("cancer", "simulator", "client")
    assert row["real_encryption"] is False and row["steps"] == 1
    md = out.with_suffix(".md").read_text()
    assert "| cancer | 64 / 143 | 1 (" in md

    def must_not_run(*a, **k):
        raise AssertionError("a kept result was run again")

    monkeypatch.setattr(transfer, "run_task", must_not_run)
    assert CliRunner().invoke(app, [*ARGS, "--out", str(out)]).exit_code == 0
    with pytest.raises(AssertionError, match="run again"):  # other settings: runs again
        transfer.run(
            ["cancer"],
            ["client"],
            backend="simulator",
            epochs=2,
            max_train=64,
            hetal=[],
            peer_task=None,
            peer_iters=1,
            console=Console(quiet=True),
        )


def _he_ops(preset, model, encrypt=0.0, decrypt=0.0):
    machine = {"processor": "x86_64", "host_cpus": 2, "loadavg_1m": 0.0, "utc": "test"}
    row = {
        "preset": preset,
        "backend": "openfhe",
        "time_model": model,
        "seconds": {"encrypt": encrypt, "decrypt": decrypt},
    }
    return {"machine": machine, "rows": [row]}


def test_hetal_shape_prediction_is_counted_ops_times_op_seconds():
    r = transfer.hetal_shape(
        "bootstrap",
        "n16-boot7",
        backend="simulator",
        he_ops=_he_ops("n16-boot7", {"bootstrap": [2.5, 0.0]}),
    )
    assert r["ops_last_step"]["bootstrap"] > 0
    assert r["predicted_seconds_per_iteration"] == 2.5 * r["ops_last_step"]["bootstrap"]
    assert r["predicted_share"]["bootstrap"] == 1.0
    doc = {
        "tasks": [],
        "hetal_shape": [r],
        "hetal_published": transfer.HETAL_PUBLISHED,
        "peer": [],
        "breakdown": {},
    }
    assert f"| {2.5 * r['ops_last_step']['bootstrap']:.0f} (predicted) |" in transfer.markdown(doc)


def test_breakdown_charges_each_client_refresh_one_decryption_and_one_encryption():
    r = transfer.iteration(
        64,
        9,
        3,
        "client",
        "n15-d11",
        backend="simulator",
        he_ops=_he_ops("n15-d11", {}, encrypt=1.0, decrypt=0.5),
    )
    assert r["client_refreshes"] > 0
    assert r["predicted_seconds_per_iteration"] == 1.5 * r["client_refreshes"]
