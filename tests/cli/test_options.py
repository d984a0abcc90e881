"""Every option says what it does and what its default is; `fl` flags are RunConfig's fields."""

from __future__ import annotations

import dataclasses
import json

import click
import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

import privlearn
from privlearn.cli import app, fields
from privlearn.fl.data import DataSpec
from privlearn.fl.run import COMPRESS_FIELDS, RunConfig

from .test_errors import _commands


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"privlearn {privlearn.__version__}\n"


def test_every_option_has_help_and_shows_its_default():
    root = get_command(app)
    checked = 0
    for path, cmd in [((), root), *_commands(root)]:
        assert cmd.help, path
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.name == "help":
                continue
            assert p.help, (path, p.name)
            assert p.show_default is not False, (path, p.name)
            if p.default is None or p.default == [] or p.default == ():
                # nothing to show by itself: the option says in words what unset means
                assert isinstance(p.show_default, str), (path, p.name)
            checked += 1
        if path:
            text = CliRunner().invoke(app, [*path, "--help"], terminal_width=300).output
            shown = [p for p in cmd.params if isinstance(p, click.Option) and p.name != "help"]
            assert text.count("[default: ") >= len(shown) - 1, path  # --debug/--version aside
    assert checked > 100


def _option(cmd: click.Command, flag: str) -> click.Option:
    return next(p for p in cmd.params if flag in p.opts)


def test_fl_run_has_a_flag_per_runconfig_field_with_its_help_and_default():
    cmd = get_command(app).commands["fl"].commands["run"]
    names = {p.name for p in cmd.params} - {"config", "resume", "help"}
    assert names == {f.name for f in dataclasses.fields(RunConfig)}
    for f in dataclasses.fields(RunConfig):
        opt = _option(cmd, "--" + f.name.replace("_", "-"))
        assert f.metadata["help"] in opt.help
    assert _option(cmd, "--n-clients").default == RunConfig().n_clients
    assert _option(cmd, "--hidden").default == "200,200"


def test_fl_partition_flags_are_the_data_fields_of_runconfig():
    cmd = get_command(app).commands["fl"].commands["partition"]
    names = {p.name for p in cmd.params} - {"out", "export", "help"}
    assert names == {f.name for f in dataclasses.fields(DataSpec)} | {"seed"}


def test_a_field_added_later_gets_a_flag():
    @dataclasses.dataclass
    class Later(RunConfig):
        partition_max_tries: int = dataclasses.field(default=7, metadata={"help": "draws"})

    params = {p.name: p.default for p in fields.options(Later)}
    assert params["partition_max_tries"].param_decls == ("--partition-max-tries",)
    assert params["partition_max_tries"].default == 7


# a config unlike the defaults in every field, with each kind of value
NON_DEFAULT = {
    "dataset": "wine",
    "partition": "homo",
    "n_clients": 4,
    "beta": 0.25,
    "classes_per_client": 3,
    "noise": 0.2,
    "local_test_fraction": 0.3,
    "data_root": "/data",
    "synthetic_alpha": 0.5,
    "synthetic_beta": 0.5,
    "synthetic_iid": True,
    "min_client_size": 2,
    "model": "mlp",
    "hidden": [8, 4],
    "rounds": 2,
    "noise_mode": "per-round",
    "partition_max_tries": 500,
    "sampling": "poisson",
    "clients_per_round": 3,
    "sample_rate": 0.5,
    "epochs": 2,
    "epochs_range": [1, 3],
    "batch_size": 8,
    "drop_last": True,
    "lr": 0.2,
    "momentum": 0.5,
    "weight_decay": 0.001,
    "stragglers": 0.1,
    "straggler_policy": "partial",
    "algorithm": "fedprox",
    "algo_params": {"mu": 0.1},
    "attack": "label-flip",
    "attackers": 0.2,
    "attack_params": {"target": 3},
    "attack_window": [2, 5],
    "defence": "krum",
    "defence_params": {},
    "defence_f": 1,
    "root_size": 50,
    "engine": "sequential",
    "device": "cuda",
    "chunk_size": 2,
    "compile": True,
    "flower_timeout": 30.0,
    "closed_form": True,
    "threads": 1,
    "seed": 3,
    "eval_every": 2,
    "compress": "topk",
    "compress_ratio": 0.2,
    "error_feedback": "ef21-sgdm",
    "ef_momentum": 0.3,
}
# quantised uploads take levels, not a ratio or error feedback
NON_DEFAULT_QUANTISED = {
    **{k: v for k, v in NON_DEFAULT.items() if k not in COMPRESS_FIELDS},
    "compress": "dadaquant",
    "compress_levels": 2,
}
# the DP settings, unlike the defaults, on the same config (DP refuses a defence)
NON_DEFAULT_DP = {
    **{k: v for k, v in NON_DEFAULT.items() if k not in ("defence", "drop_last", *COMPRESS_FIELDS)},
    "record_sampling": "poisson",  # Poisson batches have no last batch to drop
    "dp": "central",
    "noise_multiplier": 1.5,
    "target_epsilon": 9.0,
    "delta": 1e-3,
    "clip": 0.3,
    "adaptive_clip": True,
    "clip_quantile": 0.6,
    "clip_lr": 0.3,
    "clip_count_noise": 2.0,
    "per_layer_clip": True,
    "dp_denominator": "clipped",
    "accountant": "pld",
    "dp_seed": 5,
    "secure_aggregation": "masking",  # DP-FedAvg's sums through secure aggregation
    "secagg_dropout": 0.1,
    "engine": "ray",  # the Ray fields need the ray engine, on CPU
    "device": "cpu",
    "ray_workers": 3,
    "ray_address": "10.0.0.5:6379",
}


def _flags(cfg: dict) -> list[str]:
    args = []
    for key, value in cfg.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            args += [flag, ",".join(map(str, value))]
        elif isinstance(value, dict):
            for k, v in value.items():
                args += [flag, f"{k}={v}"]
        else:
            args += [flag, str(value)]
    return args


def test_the_configs_below_set_every_field():
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert set(NON_DEFAULT) | set(NON_DEFAULT_DP) | set(NON_DEFAULT_QUANTISED) | {"out"} == fields


@pytest.mark.parametrize(
    "config",
    [NON_DEFAULT, NON_DEFAULT_DP, NON_DEFAULT_QUANTISED],
    ids=["plain", "dp", "quantised"],
)
def test_yaml_keys_and_flags_give_the_same_config(tmp_path, monkeypatch, config):
    """The same settings as YAML keys and as flags reach `run_experiment` as one config."""
    seen = []

    def fake_run(cfg, resume=False, console=None):
        seen.append(cfg)
        return {"rounds": []}

    monkeypatch.setattr("privlearn.fl.run.run_experiment", fake_run)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = ["--out", str(tmp_path / "o")]
    for args in (["--config", str(tmp_path / "c.yaml"), *out], [*_flags(config), *out]):
        result = CliRunner().invoke(app, ["fl", "run", *args])
        assert result.exit_code == 0, result.output
    from_yaml, from_flags = seen
    assert from_yaml == from_flags == RunConfig(**config, out=str(tmp_path / "o"))


def test_flags_override_the_yaml_and_merge_algo_params(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(
        "privlearn.fl.run.run_experiment", lambda cfg, **kw: seen.append(cfg) or {"rounds": []}
    )
    (tmp_path / "c.yaml").write_text(json.dumps({"rounds": 7, "algo_params": {"a": 1, "b": 2}}))
    args = ["fl", "run", "--config", str(tmp_path / "c.yaml"), "--algo-params", "b=3"]
    assert CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o")]).exit_code == 0
    assert seen[0].rounds == 7 and seen[0].algo_params == {"a": 1, "b": 3}
    assert seen[0].lr == RunConfig().lr  # a flag left at its default does not override


def test_numbers_in_exponent_form_are_floats_in_flags_and_yaml(tmp_path, monkeypatch):
    # YAML 1.1 (PyYAML) reads 1e30 as a string; a user writing it means a number
    seen = []
    monkeypatch.setattr(
        "privlearn.fl.run.run_experiment", lambda cfg, **kw: seen.append(cfg) or {"rounds": []}
    )
    (tmp_path / "c.yaml").write_text("algo_params:\n  mu: 1e-2\n")
    args = ["fl", "run", "--config", str(tmp_path / "c.yaml"), "--algorithm", "fedprox"]
    args += ["--defence-params", "scale=1e30", "--out", str(tmp_path / "o")]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert seen[0].algo_params == {"mu": 0.01} and seen[0].defence_params == {"scale": 1e30}
