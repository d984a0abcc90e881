"""`privlearn bench fuzz`: the runner classifies what a child did; every format runs."""

from __future__ import annotations

import math
import os
import pickle
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from privlearn.bench.fuzz import FORMATS
from privlearn.bench.fuzz.mutate import mutate_bytes, mutate_tree
from privlearn.bench.fuzz.runner import BAD, Format, run_child, run_format, run_fresh
from privlearn.he import io


def _crash():
    os.kill(os.getpid(), signal.SIGSEGV)


def _numpy_value_error():
    np.zeros(3).reshape(2)


ACTIONS = {
    "same": lambda marker: 1.0,
    "wrong": lambda marker: 2.0,
    "crash": lambda marker: _crash(),
    "hang": lambda marker: time.sleep(60),
    "key-error": lambda marker: {}["x"],
    "numpy-value-error": lambda marker: _numpy_value_error(),
    "privlearn-refusal": lambda marker: io.unpack(b"garbage!", kind="ciphertext"),
    "code": lambda marker: marker.write_text("ran") and 1.0,
}
EXPECTED = {
    "same": "benign",
    "wrong": "silent_wrong",
    "crash": "crash",
    "hang": "hang",
    "key-error": "unclean",
    "numpy-value-error": "unclean",
    "privlearn-refusal": "clean",
    "code": "code_exec",
}


class Toy(Format):
    """Case i does ACTIONS' i-th thing; the unmutated input returns 1.0."""

    name = "toy"
    targets = ("t",)

    def setup(self, workdir: Path) -> None:
        self.marker = workdir / "marker"
        self.order = iter(ACTIONS)

    def base(self, target):
        return "same"

    def mutate(self, rng, target, casedir):
        action = next(self.order)
        return action, action

    def observe(self, target, data, casedir):
        return ACTIONS[data](self.marker)


def test_runner_classifies_each_outcome():
    part = run_format(Toy(), len(ACTIONS), timeout=2)
    got = {f["mutation"]: f["class"] for f in part["findings"]}
    expected = {k: v for k, v in EXPECTED.items() if v not in ("clean", "benign")}
    assert got == expected
    assert part["counts"]["clean"] == part["counts"]["benign"] == 1
    by = {f["mutation"]: f for f in part["findings"]}
    assert by["crash"]["detail"] == "SIGSEGV" and "_crash" in by["crash"]["raised_at"]
    assert "sleep" in by["hang"]["raised_at"] or "<lambda>" in by["hang"]["raised_at"]
    assert by["key-error"]["detail"].startswith("builtins.KeyError")
    assert "numpy" in by["numpy-value-error"]["raised_at"]


def test_a_child_over_its_memory_limit_fails_without_taking_the_parent():
    r = run_child(lambda: bytearray(2 << 30), lambda e: False, memory_bytes=1 << 30)
    assert r["status"] == "error" and r["type"] == "builtins.MemoryError"


def test_mutations_are_reproducible_and_change_something():
    data = bytes(range(256)) * 8
    for i in range(50):
        a = mutate_bytes(np.random.default_rng(i), data)
        assert a == mutate_bytes(np.random.default_rng(i), data)
        assert a[1] != data or "splice" in a[0]
    tree = {"a": {"b": [1, 2]}, "c": "x"}
    desc, new = mutate_tree(np.random.default_rng(3), tree)
    assert new != tree and tree == {"a": {"b": [1, 2]}, "c": "x"}  # the input is not touched


def test_the_pickle_payload_runs_code_where_a_loader_lets_it(tmp_path):
    """The checkpoint format's payload is live: unpickled as torch.load(weights_only=False)
    did, it writes its marker; so a clean verdict on it means the loader refused it."""
    from privlearn.bench.fuzz.fl_formats import _Payload

    for how in ("system", "open"):
        marker = tmp_path / how
        pickle.loads(pickle.dumps(_Payload(marker, how)))
        assert marker.exists()


def test_a_config_unlike_its_yaml_is_silent_wrong(tmp_path):
    from privlearn.bench.fuzz.fl_formats import YamlConfig

    fmt = YamlConfig()
    fmt.setup(tmp_path)
    cfg = dict(fmt.defaults)
    assert fmt.judge("t", {"cfg": cfg, "parsed": {}}, None) is None
    assert "rounds" in fmt.judge(
        "t", {"cfg": {**cfg, "rounds": True}, "parsed": {"rounds": 1}}, None
    )
    assert "non-finite" in fmt.judge(
        "t", {"cfg": {**cfg, "lr": math.nan}, "parsed": {"lr": math.nan}}, None
    )
    assert "epochs" in fmt.judge("t", {"cfg": cfg, "parsed": {"epochs": 3}}, None)


SESSION_FORMATS = ["client-reply", "server-request"]  # each sets up a training session (~20 s)


def _runs(tmp_path, formats):
    doc = run_fresh(formats, 2, tmp_path / "fuzz.json", timeout=60)
    assert list(doc["formats"]) == formats
    for name, part in doc["formats"].items():
        assert sum(part["counts"].values()) == part["cases"] == 2, name
    assert doc["openfhe"] and doc["preset"] == "toy-n12"


@pytest.mark.openfhe
def test_every_quick_format_runs_a_few_cases(tmp_path):
    """In a fresh interpreter with one OpenMP thread, as the command runs them: OpenFHE
    operations in forked children hang otherwise."""
    _runs(tmp_path, [f for f in FORMATS if f not in SESSION_FORMATS])


@pytest.mark.slow
@pytest.mark.openfhe
def test_the_session_formats_run_a_few_cases(tmp_path):
    _runs(tmp_path, SESSION_FORMATS)


@pytest.mark.slow
@pytest.mark.openfhe
def test_a_thousand_cases_per_format_end_in_no_crash_hang_unclean_error_or_code_execution(
    tmp_path,
):
    """Issue 18's done criterion. Fails today: see docs/fuzz.md for the open findings."""
    doc = run_fresh(list(FORMATS), 1000, tmp_path / "fuzz.json")
    bad = {
        name: {k: part["counts"][k] for k in BAD if part["counts"][k]}
        for name, part in doc["formats"].items()
    }
    assert not any(bad.values()), bad


@pytest.mark.parametrize(
    "args, words",
    [
        (["--format", "pdf"], ["--format 'pdf'", "yaml-config"]),
        (["--case", "3"], ["--case re-runs one case", "--format"]),
    ],
)
def test_bad_options_are_one_line_errors(args, words):
    from typer.testing import CliRunner

    from privlearn.cli import app

    result = CliRunner().invoke(app, ["bench", "fuzz", *args], terminal_width=200)
    assert result.exit_code == 2 and result.stderr.startswith("error: "), result.output
    assert all(w in result.stderr for w in words), result.stderr
