"""`privlearn bench softmax` end to end on a small configuration (simulator only)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from privlearn.cli import app


def test_bench_softmax_writes_json_table_and_plot(tmp_path):
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "softmax",
        "--range",
        "4",
        "--classes",
        "3",
        "--method",
        "ours",
        "--method",
        "hetal",
        "--rows",
        "3000",
        "--no-openfhe",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    ours, hetal = rows["ours"], rows["hetal"]
    assert ours["simulator"]["rows"] == 3000 and ours["simulator"]["preset"] == "n16-boot"
    assert ours["simulator"]["max"] <= ours["bound"] + 1e-3  # derived bound, plus CKKS noise
    assert hetal["bound_kind"] == "empirical" and ours["bound_kind"] == "derived"
    assert ours["depth"] < hetal["depth"] and ours["bootstraps_n16"] < hetal["bootstraps_n16"]
    assert "| ours | 3 | ±4 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 10_000
    again = CliRunner().invoke(app, args)  # resumes: nothing left to run
    assert again.exit_code == 0 and "[1/2]" not in again.output
