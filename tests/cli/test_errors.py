"""Every input mistake ends before any work, in one line on stderr with exit code 2; tracebacks
only with --debug."""

from __future__ import annotations

import click
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from privlearn.cli import app
from privlearn.cli.errors import UsageError
from privlearn.cli.options import check_out_dir, check_out_file


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args, terminal_width=200)


def _one_line_error(result, *words: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["he", "train", "--task", "iris"], ["--task 'iris'", "cancer, wine, digits"]),
        (["he", "train", "--backend", "sim"], ["--backend 'sim'", "openfhe, simulator"]),
        (["he", "train", "--refresh", "boot"], ["--refresh 'boot'", "client, bootstrap"]),
        (["he", "train", "--preset", "n99"], ["unknown CKKS preset 'n99'"]),
        (["he", "train", "--refresh", "bootstrap", "--preset", "n15-d11"], ["bootstrappable"]),
        (["he", "train", "--epochs", "0"], ["--epochs", "x>=1"]),
        (["fl", "run", "--rounds", "abc"], ["--rounds", "not a valid integer"]),
        (["fl", "run", "--clients", "4"], ["No such option", "--clients"]),
        (["fl", "run", "--hidden", "a,b"], ["--hidden 'a,b'", "int"]),
        (["fl", "run", "--algo-params", "mu"], ["--algo-params", "key=value"]),
        (["bench", "niid", "--part", "everything"], ["--part", "grid, stragglers"]),
        (["bench", "niid", "--rounds", "digits=50"], ["--rounds", "mnist5k"]),
        (["bench", "fl-speed", "--workload", "Z"], ["--workload 'Z'"]),
        (["bench", "matmul", "--shape", "1,2"], ["--shape", "a,b,c"]),
        (["bench", "softmax", "--method", "taylor"], ["--method 'taylor'", "hetal"]),
        (["nope"], ["No such command 'nope'"]),
        (["--bogus"], ["No such option"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, words):
    _one_line_error(_invoke(args), *words)


@pytest.mark.parametrize(
    "text, words",
    [
        ("dataset: digits\nrounds: [1\n", ["c.yaml line 3", "not valid YAML"]),
        ("dataset: digits\nlearning_rate: 0.1\n", ["unknown config keys ['learning_rate']"]),
        ("rounds: two\n", ["config key rounds: expected int, got 'two'"]),
        ("lr: true\n", ["config key lr: expected float"]),
        ("hidden: [a, 2]\n", ["config key hidden: expected a list of int"]),
        ("- rounds\n", ["expected a mapping"]),
    ],
)
def test_yaml_mistakes_are_one_line_naming_the_key(tmp_path, text, words):
    (tmp_path / "c.yaml").write_text(text)
    out = tmp_path / "o"
    _one_line_error(
        _invoke(["fl", "run", "--config", str(tmp_path / "c.yaml"), "--out", str(out)]), *words
    )
    assert not out.exists()


def test_debug_shows_the_exception():
    result = CliRunner().invoke(app, ["--debug", "he", "train", "--task", "iris"])
    assert isinstance(result.exception, UsageError)


def test_a_bug_is_one_line_exit_1_and_its_traceback_needs_debug(monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr("privlearn.cli.info.available_backends", broken)
    result = _invoke(["info"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: internal error RuntimeError: boom (run `privlearn --debug ...` for the "
        "traceback, and please report it)"
    ]
    assert isinstance(CliRunner().invoke(app, ["--debug", "info"]).exception, RuntimeError)


def _commands(group: click.Group, path=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def _checked(p: click.Parameter) -> bool:
    """Whether `p` is an output path checked for writability while the flags are parsed."""
    return getattr(p.callback, "__wrapped__", p.callback) in (check_out_dir, check_out_file)


OUTPUTS = {
    name
    for _, cmd in _commands(get_command(app))
    for p in cmd.params
    if _checked(p)
    for name in p.opts
}


def test_every_output_option_is_checked_when_parsed():
    """Any option that names a path to write goes through the writability check."""
    for path, cmd in _commands(get_command(app)):
        for p in cmd.params:
            if p.name in ("out", "export", "markdown", "work", "home", "figure"):
                assert _checked(p), (path, p.name)
    assert {"--out", "--export", "--markdown", "--work", "--home", "--figure"} == OUTPUTS


@pytest.mark.parametrize(
    "path, option",
    [
        (path, opt)
        for path, cmd in _commands(get_command(app))
        for p in cmd.params
        if _checked(p)
        for opt in p.opts
    ],
)
def test_unwritable_output_is_refused_before_any_work(tmp_path, path, option, monkeypatch):
    """A file in the way of --out stops the command while its flags are parsed: before the
    data loads or training starts (the work would take minutes to hours here)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    line = _one_line_error(_invoke([*path, option, str(tmp_path / "file" / "x")]), option)
    assert "is a file" in line
