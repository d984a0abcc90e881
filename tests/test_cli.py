"""The command line and the demo, end to end on the simulator (OpenFHE under -m slow)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from privlearn.cli import app
from privlearn.demo import run_linear_scores_demo


def test_info_lists_backends_and_presets():
    out = CliRunner().invoke(app, ["info"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    for word in ("openfhe", "simulator", "n16-d24", "n16-boot", "128-bit", "INSECURE"):
        assert word in out.output


def test_demo_refuses_insecure_presets():
    out = CliRunner().invoke(app, ["demo", "--backend", "simulator", "--preset", "toy-n12"])
    assert out.exit_code != 0
    assert "insecure" in str(out.exception).lower()


def test_demo_on_the_simulator_matches_plaintext():
    r = run_linear_scores_demo(backend="simulator", preset="n16-d24")
    assert not r["real_encryption"]
    assert r["max_abs_error"] < 1e-6
    assert r["same_predictions"] == 1.0
    assert r["accuracy_encrypted"] > 0.9


@pytest.mark.slow
@pytest.mark.openfhe
def test_demo_on_openfhe():
    r = run_linear_scores_demo(backend="openfhe", preset="n16-d24")
    assert r["real_encryption"] and r["security"].startswith("128-bit")
    assert r["max_abs_error"] < 1e-6 and r["same_predictions"] == 1.0
