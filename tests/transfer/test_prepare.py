"""The one front door: one set of TrainSpec defaults, one treatment of out-of-range rows, and
every caller (run_task, bench transfer, the estimator: test_estimator.py) goes through it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from rich.console import Console

from privlearn.bench import transfer as bench
from privlearn.transfer import experiment
from privlearn.transfer.prepare import FeatureScaler, prepare
from privlearn.transfer.report import print_result
from privlearn.transfer.train import TrainSpec


def _data(n=60, f=5, seed=0):
    rng = np.random.default_rng(seed)
    return 3.0 + 2.0 * rng.normal(size=(n, f))


def test_spec_defaults_are_trainspec_defaults_and_overrides_are_explicit():
    x = _data()
    spec, _ = prepare(x, 3)
    assert spec == TrainSpec(classes=3, features=6)
    assert (spec.batch_size, spec.lr, spec.epochs) == (128, 4.0, 10)
    assert prepare(x, 3, lr=1.0, early_stopping=False)[0] == dataclasses.replace(
        spec, lr=1.0, early_stopping=False
    )
    with pytest.raises(TypeError, match="learning_rate"):
        prepare(x, 3, learning_rate=1.0)


def test_training_rows_are_in_range_and_the_longest_has_norm_one():
    x = _data()
    _, scaler = prepare(x, 2, out_of_range="error", range_tolerance=0.0)
    norms = np.linalg.norm(scaler.transform(x), axis=1)
    assert norms.max() == pytest.approx(1.0) and scaler.beyond(x).size == 0


def test_clip_shrinks_only_rows_beyond_the_range_and_keeps_their_direction():
    x = _data()
    scaler = FeatureScaler.fit(x)  # clip, tolerance 0.25: the defaults
    new = x[:4].copy()
    new[1] = scaler.mean + 40 * scaler.std  # far beyond
    z, raw = scaler.transform(new), scaler._scale(new)
    assert scaler.beyond(new).tolist() == [1]
    assert np.linalg.norm(z[1]) == pytest.approx(1.25)
    assert np.allclose(z[1] / np.linalg.norm(z[1]), raw[1] / np.linalg.norm(raw[1]))
    assert np.array_equal(z[[0, 2, 3]], raw[[0, 2, 3]])  # the others untouched


def test_error_names_every_row_beyond_the_range():
    x = _data()
    _, scaler = prepare(x, 2, out_of_range="error")
    new = x[:6].copy()
    new[[2, 5]] *= 30
    with pytest.raises(ValueError, match=r"2 row\(s\) .* rows 2, 5\. .*out_of_range='clip'"):
        scaler.transform(new)
    with pytest.raises(ValueError, match="out_of_range must be one of"):
        prepare(x, 2, out_of_range="ignore")


def test_run_task_goes_through_the_front_door_and_reports_clipped_rows(monkeypatch):
    real = experiment.load_task

    def one_far_test_row(name, **kw):
        t = real(name, **kw)
        xt = t.x_test.copy()
        xt[7] = t.x_train.mean(0) + 50 * t.x_train.std(0)
        return dataclasses.replace(t, x_test=xt)

    monkeypatch.setattr(experiment, "load_task", one_far_test_row)
    config = experiment.with_epochs(experiment.TASK_DEFAULTS["cancer"], 1)
    r = experiment.run_task(
        "cancer", backend="simulator", config=config, max_train=64, progress=False
    )
    spec, _ = prepare(np.zeros((2, 30)), 2, refresh="client", **dataclasses.asdict(config))
    assert r["spec"] == spec.to_meta()
    assert r["out_of_range"] == "clip" and r["rows_beyond_range"]["test"] >= 1
    console = Console(record=True, width=200)
    print_result(r, console)
    far = r["rows_beyond_range"]
    assert f"{far['val']} validation and {far['test']} test rows" in console.export_text()


def test_bench_iteration_states_its_overrides_to_the_front_door():
    r = bench.iteration(32, 9, 3, "client", "n15-d11", backend="simulator")
    spec, _ = prepare(np.zeros((2, 8)), 3, batch_size=32, lr=1.0, epochs=1, early_stopping=False)
    assert r["spec"] == spec.to_meta()
