"""`privlearn bench secagg` on a tiny grid: measured cells match the exact sum, larger ones are
extrapolated and say so."""

import json

import pytest
from typer.testing import CliRunner

from privlearn.bench import cell_key
from privlearn.bench import secagg as bench
from privlearn.cli import app


def test_a_tiny_grid_measures_extrapolates_and_writes_its_files(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.MEASURE_LIMIT, "masking", 20 * 100)  # (20, 1000) is predicted
    out = tmp_path / "b.json"
    res = CliRunner().invoke(
        app,
        [
            "bench", "secagg", "--protocols", "plaintext,masking", "--clients", "10,20",
            "--sizes", "10,100,1000", "--dropouts", "0,0.3", "--out", str(out),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    cells = json.loads(out.read_text())["cells"]
    small = cells[cell_key("masking", 10, 100, 0.3)]
    assert small["measured"] and small["summed"] == 10 - 2  # 3 drop: 2 before upload
    assert small["max_abs_error"] <= small["error_bound"]
    big = cells[cell_key("masking", 20, 1000, 0.0)]
    assert not big["measured"] and big["how"].startswith("linear in P")
    # the upload dominates: bytes grow by 8 per extra parameter (64-bit ring)
    mid = cells[cell_key("masking", 20, 100, 0.0)]
    assert big["client_bytes_sent"] - mid["client_bytes_sent"] == pytest.approx(8 * 900, rel=0.01)
    assert "extrapolated" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0


def test_a_larger_cohort_than_measured_scales_the_server_only():
    cells = {
        cell_key("x", 10, 5, 0.0): {**dict.fromkeys(bench.COSTS, 2.0), "measured": True},
    }
    guess = bench.extrapolate(cells, "x", 100, 5, 0.0, (10, 100), (5,))
    assert guess["client_bytes_sent"] == 2.0 and guess["server_seconds"] == 20.0
    assert guess["measured"] is False and "server costs x 10" in guess["how"]


def test_a_measured_small_update_at_a_large_cohort_borrows_the_growth_in_p_from_a_smaller_one():
    def cell(v):
        return {**dict.fromkeys(bench.COSTS, v), "measured": True}

    cells = {
        cell_key("x", 10, 1, 0.0): cell(1.0),
        cell_key("x", 10, 2, 0.0): cell(3.0),  # +2 per parameter at n = 10
        cell_key("x", 100, 1, 0.0): cell(5.0),
    }
    guess = bench.extrapolate(cells, "x", 100, 3, 0.0, (10, 100), (1, 2, 3))
    assert guess["client_bytes_sent"] == 5.0 + 2 * 2  # the client's growth as at n = 10
    assert guess["server_seconds"] == 5.0 + 20 * 2  # the server's x 10
    assert guess["setup_bytes"] == 5.0 and "as measured" in guess["how"]
