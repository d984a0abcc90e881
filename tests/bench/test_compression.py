"""`privlearn bench compression` on two rounds: bytes as the payloads' lengths, its files."""

import json

from typer.testing import CliRunner

from privlearn.bench import cell_key
from privlearn.cli import app


def test_two_rounds_count_the_payloads_and_write_table_and_curves(tmp_path):
    out = tmp_path / "c.json"
    methods = "none,top-k + EF21,DAdaQuant (from s=1)"
    args = ["bench", "compression", "--datasets", "digits", "--methods", methods]
    res = CliRunner().invoke(app, [*args, "--rounds", "digits=2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    runs = json.loads(out.read_text())["runs"]
    p = runs[cell_key("digits", "none", 0)]["n_params"]
    assert p == 64 * 128 + 128 + 128 * 10 + 10
    assert runs[cell_key("digits", "none", 0)]["bytes"] == [10 * p * 4] * 2
    k = round(0.05 * p)  # 2-byte indices and float32 values, after a 5-byte header
    assert runs[cell_key("digits", "top-k + EF21", 0)]["bytes"] == [10 * (5 + 6 * k)] * 2
    # 2 bits a coordinate at one level (a sign and a 0/1 level), after a 9-byte header
    assert runs[cell_key("digits", "DAdaQuant (from s=1)", 0)]["bytes"][0] == 10 * (
        9 + -(-2 * p // 8)
    )
    assert "| digits | top-k + EF21 | 1 | 2 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
