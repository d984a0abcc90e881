"""The federated-learning run files: YAML configs and checkpoints, loaded as `fl run` does.

Clean here is what `privlearn/cli/errors.py` turns into one line and exit code 2 (a
ValueError or a file error, with a message): the CLI is where these files arrive.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import math
import os
import pickle
import shlex
import shutil
from pathlib import Path
from typing import Any

import yaml

from privlearn.bench.fuzz.mutate import mutate_bytes, mutate_tree
from privlearn.bench.fuzz.runner import Format

# A small run: digits over 6 clients, a linear model, one local epoch (about a second a round)
SMALL = {
    "dataset": "digits",
    "n_clients": 6,
    "clients_per_round": 4,
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.1,
    "model": "mclr",
    "algorithm": "scaffold",
    "threads": 1,
}


class _CliFormat(Format):
    """A file the CLI reads: clean is what it reports in one line (see the module docstring)."""

    def clean(self, e: BaseException) -> bool:
        from privlearn.cli.errors import USER_ERRORS

        return isinstance(e, USER_ERRORS) and bool(str(e).strip())


# -- YAML configs -------------------------------------------------------------------------------
BASE_YAML = {
    **SMALL,
    "partition": "label-dirichlet",
    "beta": 0.5,
    "rounds": 3,
    "hidden": [64, 32],
    "algo_params": {"mu": 0.01},
    "momentum": 0.5,
    "stragglers": 0.25,
    "eval_every": 1,
    "seed": 7,
    "out": "results/fuzz-run",
}


def _raw_yaml(marker: Path) -> list[tuple[str, str]]:
    """Hand-written YAML that a mapping mutation cannot produce (tags, aliases, nesting)."""
    m = shlex.quote(str(marker))
    laughs = 'a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x"]\n' + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 8)}]\n" for i in range(1, 8)
    )
    return [
        ("python/object/apply tag", f'lr: !!python/object/apply:os.system ["touch {m}"]\n'),
        ("python/object/new tag", f"lr: !!python/object/new:os.system [touch {m}]\n"),
        ("billion laughs in an unknown key", laughs),
        ("billion laughs in hidden", laughs.replace("a7:", "hidden:")),
        ("nesting 5000 deep", "hidden: " + "[" * 5000 + "]" * 5000 + "\n"),
        ("rounds: 1e3 (a string in YAML 1.1)", "rounds: 1e3\n"),
        ("rounds: 0x10", "rounds: 0x10\n"),
        ("lr: .nan", "lr: .nan\n"),
        ("lr: -.inf", "lr: -.inf\n"),
        ("seed: a date", "seed: 2001-12-14\n"),
        ("epochs: yes", "epochs: yes\n"),
        ("duplicate key", "rounds: 2\nrounds: 5\n"),
        ("complex key", "? [a, b]\n: 1\n"),
        ("integer key", "1: 2\n"),
        ("null key", "null: 2\n"),
        ("binary value", "dataset: !!binary aGVsbG8=\n"),
        ("two documents", "rounds: 2\n---\nrounds: 3\n"),
        ("a list document", "- rounds\n- 2\n"),
        ("empty document", ""),
        ("a tab indent", "algo_params:\n\tmu: 0.1\n"),
        ("a BOM", "\ufeffrounds: 2\n"),
        ("hidden: huge width", "hidden: [1000000000000]\n"),
        ("out: traversal", "out: ../../../../tmp/privlearn-fuzz-out\n"),
        ("algo_params: a list", "algo_params: [1, 2]\n"),
        ("clients_per_round: 10^12", "clients_per_round: 1000000000000\n"),
        ("data_root: a FIFO-like device", "data_root: /dev/zero\n"),
    ]


class YamlConfig(_CliFormat):
    """`privlearn fl run --config FILE`: `RunConfig.from_yaml`, then the re-check the CLI
    does. Silent wrong: a config that is not what the YAML says (a field of another type or
    value, a default where the YAML gave a value) or holds a non-finite number."""

    name = "yaml-config"
    targets = ("fl run --config",)

    def setup(self, workdir: Path) -> None:
        from privlearn.fl.run import RunConfig

        self.marker = workdir / "code-ran"
        self.defaults = dataclasses.asdict(RunConfig())
        self.raw = _raw_yaml(self.marker)

    def base(self, target: str) -> bytes:
        return yaml.safe_dump(BASE_YAML, sort_keys=False).encode()

    def mutate(self, rng, target, casedir):
        u = rng.random()
        if u < 0.35:
            desc, data = mutate_bytes(rng, self.base(target))
            return f"text: {desc}", data
        if u < 0.8:
            desc, tree = mutate_tree(rng, BASE_YAML)
            return f"field: {desc}", yaml.safe_dump(tree, sort_keys=False).encode()
        desc, text = self.raw[int(rng.integers(0, len(self.raw)))]
        if rng.random() < 0.5:  # on its own, or overriding the end of a valid config
            return f"raw: {desc}", text.encode()
        return f"raw after the base config: {desc}", self.base(target) + text.encode()

    def observe(self, target, data, casedir):
        from privlearn.fl.run import RunConfig
        from privlearn.fl.yaml_numbers import safe_load

        path = casedir / "config.yaml"
        path.write_bytes(data)
        cfg = dataclasses.replace(RunConfig.from_yaml(path))  # as `fl run` re-checks
        return {"cfg": dataclasses.asdict(cfg), "parsed": safe_load(data.decode())}

    def judge(self, target, value, reference):
        parsed = value["parsed"] or {}
        for key, got in value["cfg"].items():
            want = parsed.get(key, self.defaults[key])
            if not _same(got, want):
                return f"{key}: the config holds {got!r:.60}, the YAML says {want!r:.60}"
            if _non_finite(got):
                return f"{key}: accepted a non-finite value {got!r}"
        return None


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same kind (True is not 1; 1 and 1.0 are alike)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _non_finite(v: Any) -> bool:
    if isinstance(v, float):
        return not math.isfinite(v)
    if isinstance(v, (list, tuple)):
        return any(_non_finite(x) for x in v)
    if isinstance(v, dict):
        return any(_non_finite(x) for x in v.values())
    return False


# -- checkpoints --------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs a command: the marker file appears if a loader ran it."""

    def __init__(self, marker: Path, how: str) -> None:
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {shlex.quote(self.marker)}",))
        return (open, (self.marker, "w"))


class Checkpoint(_CliFormat):
    """`privlearn fl run --resume DIR --rounds 3` on a 2-round run's folder with a mutated
    `checkpoint.pt`. Raw mutations hit the checksum; re-signed ones (the SHA-256 recomputed)
    and field mutations (loaded, changed, saved, re-signed) reach the loader's checks.
    Silent wrong: the resumed run ends with another model or history than the unmutated one."""

    name = "fl-checkpoint"
    targets = ("fl run --resume",)

    def setup(self, workdir: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401 - imported once here, not in every child
        import torch

        from privlearn.fl.run import CHECKPOINT, RunConfig, load_checkpoint, run_experiment

        torch.set_num_threads(1)
        self.marker = workdir / "code-ran"
        self.run_dir = workdir / "run"
        run_experiment(RunConfig(**SMALL, rounds=2, out=str(self.run_dir)), progress=False)
        self.file = self.run_dir / CHECKPOINT
        self.bytes = self.file.read_bytes()
        self.ckpt = load_checkpoint(self.file)

    def base(self, target):
        return self.bytes

    @staticmethod
    def sign(payload: bytes) -> bytes:
        from privlearn.fl.run import CHECKPOINT_MAGIC

        return CHECKPOINT_MAGIC + hashlib.sha256(payload).digest() + payload

    def _save(self, obj: Any) -> bytes:
        import torch

        buf = io.BytesIO()
        torch.save(obj, buf)
        return self.sign(buf.getvalue())

    def mutate(self, rng, target, casedir):
        from privlearn.fl.run import CHECKPOINT_MAGIC

        u = rng.random()
        if u < 0.25:
            desc, data = mutate_bytes(rng, self.bytes)
            return f"raw: {desc}", data
        if u < 0.55:
            head = len(CHECKPOINT_MAGIC) + 32
            desc, payload = mutate_bytes(rng, self.bytes[head:])
            return f"re-signed payload: {desc}", self.sign(payload)
        if u < 0.9:
            desc, tree = mutate_tree(rng, self.ckpt, leaf=_tensor_leaf)
            return f"re-signed field: {desc}", self._save(tree)
        how = str(rng.choice(["system", "open"]))
        evil = _Payload(self.marker, how)
        if rng.random() < 0.5:
            ckpt = copy.copy(self.ckpt)
            ckpt[str(rng.choice(["round", "server", "config", "defence"]))] = evil
            return f"pickle payload ({how}) in a torch.save zip", self._save(ckpt)
        return f"pickle payload ({how}) as a bare pickle", self.sign(pickle.dumps(evil))

    def observe(self, target, data, casedir):
        import torch
        from rich.console import Console

        from privlearn.fl import tree as T
        from privlearn.fl.run import (
            CHECKPOINT,
            load_checkpoint,
            load_checkpoint_config,
            run_experiment,
        )

        out = casedir / "run"
        shutil.copytree(self.run_dir, out)
        (out / CHECKPOINT).write_bytes(data)
        cfg = load_checkpoint_config(out)  # as `fl run --resume out --rounds 3`
        cfg = dataclasses.replace(cfg, rounds=3, out=str(out))
        doc = run_experiment(cfg, resume=True, console=Console(file=io.StringIO()), progress=False)
        leaves = T.leaves(load_checkpoint(out / CHECKPOINT)["server"])
        odd = [repr(x)[:40] for x in leaves if not isinstance(x, torch.Tensor)]
        params = [t.detach().double().reshape(-1) for t in leaves if isinstance(t, torch.Tensor)]
        return {
            "status": doc["status"],
            "rounds": [r.get("round") for r in doc["rounds"]],
            "test_acc": [r.get("test_acc") for r in doc["rounds"]],
            "params": torch.cat(params).tolist() if params else [],
            "non_tensor_leaves": odd,
        }

    def judge(self, target, value, reference):
        from privlearn.bench.fuzz.runner import differs

        return differs(value, reference, rtol=0.0)


def _tensor_leaf(rng, value):
    """Tensor mutations: NaN, huge, a row short, float64, int64, empty, one bit flipped."""
    import torch

    if not isinstance(value, torch.Tensor) or value.numel() == 0:
        return None
    op = str(rng.choice(["nan", "huge", "short", "float64", "int64", "empty", "bitflip"]))
    t = value.clone()
    if op == "nan":
        t.view(-1)[int(rng.integers(0, t.numel()))] = float("nan")
    elif op == "huge":
        t = t * 1e30
    elif op == "short":
        t = t[:-1] if t.dim() else t
    elif op == "float64":
        t = t.double()
    elif op == "int64":
        t = t.long()
    elif op == "empty":
        t = torch.empty(0)
    else:
        raw = t.view(-1).view(torch.int32) if t.dtype == torch.float32 else None
        if raw is None:
            return None
        raw[int(rng.integers(0, raw.numel()))] ^= 1 << int(rng.integers(0, 32))
    return f"tensor {op} {tuple(value.shape)}", t
