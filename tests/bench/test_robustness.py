"""`privlearn bench robustness` on a one-round grid: cells run once and are kept, a cell a
defence's assumption forbids is marked n/a without running, tables and heat maps are
written, every reproduction is a valid run config, and the cost part times each defence."""

from __future__ import annotations

from rich.console import Console

from privlearn.bench import robustness as R
from privlearn.fl.run import RunConfig

GRID = {
    "attacks": ("sign-flip",),
    "defences": (R.NONE, "krum", "bulyan"),
    "fractions": (0.4,),
    "datasets": ("digits",),
    "partitions": ("Dir(0.5)",),
    "seeds": (0,),
}


def test_grid_cells_are_kept_and_forbidden_cells_are_na(tmp_path, monkeypatch):
    monkeypatch.setitem(R.SCHEDULE, "digits", {"rounds": 1, "epochs": 1})
    out = tmp_path / "grid.json"
    doc = R.run_grid(GRID, out, Console(quiet=True))
    cells = {c["defence"]: c for c in doc["cells"].values()}
    assert doc["coverage"]["cells_run"] == 3
    # 20 clients, 40 %: f = 8; Bulyan needs K >= 4f + 3 = 35, Krum 2f + 3 = 19
    assert "4f + 3 = 35" in cells["bulyan"]["na"] and "final_acc" in cells["krum"]
    assert cells["krum"]["false_positives"] is not None and cells[R.NONE]["false_positives"] is None
    ran = []
    monkeypatch.setattr(R, "run_cell", lambda cfg: ran.append(cfg) or {})
    R.run_grid(GRID, out, Console(quiet=True))
    assert ran == []  # every cell was kept
    md = R.to_markdown(doc)
    assert "n/a" in md and "sign-flip" in md
    assert all(p.exists() for p in R.plot_heatmaps(doc, tmp_path))


def test_reproductions_are_valid_runs():
    jobs = R.reproduction_jobs(tuple(R.REPRODUCTIONS), seed=0)
    assert len(jobs) == sum(len(runs) for _, _, runs in R.REPRODUCTIONS.values())
    assert all(isinstance(cfg, RunConfig) for _, _, cfg in jobs)


def test_cost_times_each_defence_beside_fedavg():
    doc = R.cost((10,), 50, ("median", "krum", "bulyan"), repeats=1)
    rows = {r["defence"]: r for r in doc["rows"]}
    assert rows["fedavg (weighted mean)"]["seconds"] > 0 and rows["median"]["seconds"] > 0
    assert "na" in rows["bulyan"]  # K = 10, f = 2: Bulyan needs 11
