"""`privlearn bench privacy`: the audit's calibration matches the run it audits, cells resume."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from privlearn.bench import privacy as bench
from privlearn.fl.privacy import local as local_dp


def test_the_audit_is_calibrated_for_the_sampler_its_runs_use():
    """DP-SGD runs sample records by Poisson; a calibration done on the non-private config's
    shuffled epochs overstated the noise needed (epsilon 0.32 spent of a target 1)."""
    sizes = [100, 111, 120]
    cfg, budget = bench._for_sizes(2.0, sizes)
    assert cfg.dp == "local" and cfg.work().sampler == "poisson"
    assert set(budget.units) == set(local_dp.units(sizes, cfg.work()))
    assert 1.99 < budget.epsilon(cfg.rounds) <= 2.0
    assert cfg.noise_multiplier == budget.noise_multiplier
    plain, none = bench._for_sizes(math.inf, sizes)
    assert none is None and plain.dp is None


def test_curve_cells_are_written_and_a_rerun_skips_them(tmp_path, monkeypatch):
    setting = {**bench.CURVES["local: digits, 10 clients"], "rounds": 2}
    monkeypatch.setattr(bench, "CURVES", {"tiny": setting})
    path = tmp_path / "p.json"
    doc = bench.run(("curves",), (4.0, math.inf), ("tiny",), 2, path, Console(quiet=True))
    dp, plain = doc["curves"].values()
    assert dp["epsilon"] == pytest.approx(4.0, rel=0.01) and dp["rounds"] == 2
    assert plain["epsilon"] is None and plain["final_test_acc"] > 0.2
    assert "| tiny | 4 | 4 |" in bench.curves_markdown(doc)

    def fail(*a, **k):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(bench, "curve_cell", fail)
    again = bench.run(("curves",), (4.0, math.inf), ("tiny",), 2, path, Console(quiet=True))
    assert again["curves"] == doc["curves"]
