"""The command line and the demo, end to end on the simulator (OpenFHE under -m slow)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from privlearn.cli import app
from privlearn.demo import run_demo


def test_info_lists_backends_and_presets():
    out = CliRunner().invoke(app, ["info"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    for word in ("openfhe", "simulator", "n15-d11", "n16-boot", "128-bit", "INSECURE"):
        assert word in out.output


def test_demo_refuses_insecure_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["demo", "--backend", "simulator", "--preset", "toy-n12"])
    assert out.exit_code == 2
    assert "does not give 128-bit security" in out.stderr and len(out.stderr.splitlines()) == 1
    assert not (tmp_path / "results").exists()  # refused before any work


def test_demo_on_the_simulator_matches_plaintext(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_demo(backend="simulator", epochs=2)
    assert not r["real_encryption"] and r["security"].startswith("128-bit")
    assert r["identical_predictions_vs_approx"] == 1.0
    assert r["accuracy"]["encrypted"] > 0.6
    assert (tmp_path / "results" / "transfer-cancer-client-simulator.png").exists()


@pytest.mark.slow
@pytest.mark.openfhe
def test_demo_on_openfhe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_demo(backend="openfhe")
    assert r["real_encryption"] and r["security"].startswith("128-bit")
    assert r["identical_predictions_vs_approx"] >= 0.99


def test_help_texts_show_no_escaped_percent():
    """click renders help as %-formatted text only in some paths; '%%' must never reach users."""
    from typer.testing import CliRunner

    from privlearn.cli import app

    for cmd in (["bench", "niid", "--help"], ["fl", "run", "--help"], ["he", "train", "--help"]):
        out = CliRunner().invoke(app, cmd, terminal_width=200).output
        assert "%%" not in out, cmd


def test_he_train_names_tabular_features_and_numbers_epochs_from_1(tmp_path):
    out = CliRunner().invoke(
        app,
        ["he", "train", "--task", "wine", "--backend", "simulator", "--epochs", "2"]
        + ["--out", str(tmp_path)],
        env={"COLUMNS": "200"},
    )
    assert out.exit_code == 0, out.output
    assert "13 tabular features" in out.output and "none features" not in out.output
    (path,) = tmp_path.glob("*.json")
    r = json.loads(path.read_text())
    for name in ("encrypted", "approx", "exact"):
        assert [row["epoch"] for row in r["history"][name]] == list(range(1, r["epochs_run"] + 1))
        assert 1 <= r["best_epoch"][name] <= r["epochs_run"]
    assert f"(best {r['best_epoch']['encrypted']})" in out.output
