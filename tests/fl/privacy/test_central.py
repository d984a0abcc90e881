"""Central (user-level) DP-FedAvg: clipping, noise, adaptive clip, the sum-only ordering, and
the run wiring (epsilon per round, budget stop, refusals, resume)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

from privlearn.cli import app
from privlearn.fl import tree as T
from privlearn.fl.aggregate import Updates
from privlearn.fl.algorithms import ClientUpdate, LocalSGD, build_algorithm
from privlearn.fl.models import build_model
from privlearn.fl.privacy.accountant import (
    MIN_NOISE_MULTIPLIER,
    Participation,
    epsilon,
    noise_multiplier_for,
)
from privlearn.fl.privacy.central import (
    UNSUPPORTED,
    CentralDP,
    Sums,
    client_sums,
    dp_mean,
    dp_state,
    noisy_step,
)
from privlearn.fl.run import RunConfig, _atomic_save, load_checkpoint, run_experiment

SMALL = {
    "dataset": "digits",
    "n_clients": 20,
    "clients_per_round": 10,
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.1,
    "model": "mclr",
    "dp": "central",
    "clip": 1.0,
}
ROWS = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]]), "b": torch.tensor([[0.0], [0.0]])}


def _t(*v):
    return torch.tensor(v)


def clip_client(update, clip, per_layer=False):
    """One client's clipped row and its below-clip bit, as that client computes them."""
    s = client_sums({k: v[None] for k, v in update.items()}, clip, per_layer)
    return s.total, float(s.below)


def test_flat_clip_on_hand_worked_rows():
    s = client_sums(ROWS, 1.0)
    # row 0 has norm 5 -> (0.6, 0.8), above the clip; row 1 (norm 0.5) is kept, below it
    assert torch.allclose(s.total["w"], _t(0.6 + 0.3, 0.8 + 0.4))
    assert float(s.below) == 1.0 and float(s.count) == 2.0
    row, bit = clip_client({"w": _t(3.0, 4.0), "b": _t(0.0)}, 1.0)
    assert torch.allclose(row["w"], _t(0.6, 0.8)) and bit == 0.0


def test_per_layer_clip_splits_the_clip_equally_in_quadrature():
    # two leaves, clip sqrt(2): each leaf is clipped to 1
    row, bit = clip_client({"w": _t(3.0, 4.0), "b": _t(0.5)}, math.sqrt(2), per_layer=True)
    assert torch.allclose(row["w"], _t(0.6, 0.8)) and torch.allclose(row["b"], _t(0.5))
    assert bit == 0.0  # the bit is on the flat norm sqrt(25.25) > sqrt(2)
    assert float(T.sq_norm(row)) <= 2 + 1e-6


@pytest.mark.parametrize("denominator,count,factor", [("fixed", 10, 1), ("clipped", 5, 2)])
def test_noise_std_is_z_c_over_the_denominator(denominator, count, factor):
    """Over 200,000 draws the sample std has relative error ~0.16 %; the tolerance is 2 %."""
    spec = CentralDP(2.0, 0.5, expected_clients=10, denominator=denominator)
    sums = Sums({"w": torch.zeros(200_000, dtype=torch.float64)}, _t(0.0), _t(float(count)))
    out, _ = noisy_step(sums, dp_state(spec, seed=3), spec)
    want = factor * 2.0 * 0.5 / 10
    assert abs(float(out["w"].std()) / want - 1) < 0.02
    assert abs(float(out["w"].mean())) < 5 * want / math.sqrt(200_000)


def test_clipped_denominator_divides_by_the_count_when_larger():
    spec = CentralDP(1e-9, 1.0, expected_clients=2, denominator="clipped")
    sums = Sums({"w": _t(4.0)}, _t(0.0), _t(4.0))
    assert torch.allclose(noisy_step(sums, dp_state(spec, 0), spec)[0]["w"], _t(1.0))


def test_noise_is_secret_unless_seeded():
    spec = CentralDP(1.0, 1.0, expected_clients=2)
    sums = client_sums(ROWS, 1.0)
    a, b = (noisy_step(sums, dp_state(spec), spec)[0]["w"] for _ in range(2))
    c, d = (noisy_step(sums, dp_state(spec, seed=5), spec)[0]["w"] for _ in range(2))
    assert not torch.equal(a, b) and torch.equal(c, d)


def test_sample_weights_do_not_change_the_dp_mean():
    t = dp_mean(CentralDP(1.0, 1.0, expected_clients=2), seed=1)
    s = t.init({})
    a = t.update(Updates(ROWS, _t(1.0, 1.0)), s, {})[0].values
    b = t.update(Updates(ROWS, _t(1000.0, 1.0)), s, {})[0].values
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("scale,bit", [(0.01, 1.0), (100.0, 0.0)])
def test_adaptive_clip_moves_toward_the_quantile(scale, bit):
    """All norms below C: C * exp(-eta (1 - gamma)); all above: C * exp(eta gamma)."""
    spec = CentralDP(1e-10, 0.5, expected_clients=2, quantile=0.5, clip_lr=0.2, count_noise=1e-9)
    rows = T.tree_map(lambda t: scale * t + scale, ROWS)
    t = dp_mean(spec, seed=0)
    _, s = t.update(Updates(rows, _t(1.0, 1.0)), t.init({}), {})
    assert math.isclose(float(s["clip"]), 0.5 * math.exp(-0.2 * (bit - 0.5)), rel_tol=1e-9)


def test_adaptive_clip_raises_the_update_noise_to_keep_the_cost():
    spec = CentralDP(1.0, 0.1, expected_clients=20, quantile=0.5)  # sigma_b = 20/20 = 1
    assert math.isclose(spec.update_noise_multiplier, (1 - 0.25) ** -0.5)
    with pytest.raises(ValueError, match="clip_count_noise"):
        CentralDP(2.0, 0.1, expected_clients=20, quantile=0.5)


def test_sum_only_ordering_equals_the_server_side_one():
    """Clip on each client, sum (as secure aggregation would), noise once to the sum."""
    g = torch.Generator().manual_seed(0)
    rows = {"w": torch.randn(5, 3, 2, generator=g), "b": torch.randn(5, 2, generator=g)}
    for per_layer in (False, True):
        spec = CentralDP(0.7, 0.8, 5, per_layer, "fixed", 0.5, 0.2, 1.0)
        t = dp_mean(spec, seed=9)
        server, s1 = t.update(Updates(rows, torch.ones(5)), t.init({}), {})
        clipped = [clip_client(T.rows(rows, i), 0.8, per_layer) for i in range(5)]
        sums = Sums(
            T.tree_map(lambda *v: sum(v), *[c for c, _ in clipped]),
            torch.tensor(sum(b for _, b in clipped), dtype=torch.float64),
            torch.tensor(5.0, dtype=torch.float64),
        )
        client, s2 = noisy_step(sums, dp_state(spec, seed=9), spec)
        assert all(torch.allclose(server.values[k], client[k], atol=1e-6) for k in client)
        assert torch.equal(s1["noise"], s2["noise"]) and float(s1["clip"]) == float(s2["clip"])


def test_dp_fedavg_learns_at_low_noise_and_reports_epsilon(tmp_path):
    doc = run_experiment(
        RunConfig(**SMALL, noise_multiplier=0.05, rounds=8, out=str(tmp_path)), progress=False
    )
    # non-private FedAvg reaches 0.575 in this configuration (measured), this run 0.586
    assert doc["rounds"][-1]["test_acc"] > 0.5
    assert doc["privacy"]["private"] and doc["privacy"]["accountant"] == "rdp"
    p = Participation("fixed", population=20, size=10)
    for r, entry in enumerate(doc["rounds"], 1):
        assert entry["epsilon"] == epsilon(0.05, r, 1 / 20**1.1, p, "rdp")


def test_target_epsilon_stops_an_explicit_noise_multiplier(tmp_path):
    cfg = dict(SMALL, n_clients=50, noise_multiplier=0.5, target_epsilon=8.0, rounds=6)
    doc = run_experiment(RunConfig(**cfg, out=str(tmp_path)), progress=False)
    p = Participation("fixed", population=50, size=10)
    spent = [epsilon(0.5, r, 1 / 50**1.1, p, "rdp") for r in range(1, 7)]
    allowed = sum(e <= 8.0 for e in spent)
    assert 1 <= allowed < 6
    assert doc["status"] == "budget spent" and len(doc["rounds"]) == allowed


def test_calibration_starts_above_zero_noise():
    """dp-accounting's sampling-without-replacement RDP divided by a zero noise multiplier
    when calibration tried it; a target that little noise meets gets MIN_NOISE_MULTIPLIER."""
    p = Participation("fixed", population=20, size=10)
    assert noise_multiplier_for(1e7, 20, 0.01, p) == MIN_NOISE_MULTIPLIER


def test_target_epsilon_calibrates_the_noise(tmp_path):
    cfg = dict(SMALL, n_clients=10, sampling="all", rounds=3, out=str(tmp_path))
    doc = run_experiment(RunConfig(**cfg, target_epsilon=4.0), progress=False)
    assert doc["privacy"]["noise_multiplier_calibrated"]
    assert 3.9 < doc["rounds"][-1]["epsilon"] <= 4.0 and doc["status"] == "complete"


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"target_epsilon": 0.0}, "target_epsilon: must be a finite number > 0"),
        ({"target_epsilon": -1.0}, "target_epsilon"),
        ({"noise_multiplier": 1.0, "delta": 0.0}, r"delta: must be in \(0, 1\)"),
        ({"noise_multiplier": 1.0, "delta": 1.5}, "delta"),
        ({"noise_multiplier": 1.0, "clip": 0.0}, "clip: must be a finite number > 0"),
        ({"dp": None, "clip": 1.0}, "clip are DP settings: give them with --dp central"),
        ({"dp": "local", "per_layer_clip": True}, "per_layer_clip set central DP's aggregation"),
        ({"dp": "local", "compile": True}, "run --dp local eagerly"),
        ({"noise_multiplier": 1.0, "accountant": "pld"}, "PLD accountant does not support"),
        ({"noise_multiplier": 1.0, "algorithm": "scaffold"}, "'dc' reaches the server"),
        ({"noise_multiplier": 1.0, "model": "mlp-bn"}, "batch norm"),
        ({"noise_multiplier": 1.0, "defence": "krum"}, "defence"),
    ],
)
def test_bad_dp_config_is_refused_up_front(fields, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**{**SMALL, **fields})


@pytest.mark.parametrize(
    "fields,match",
    [
        ({}, "needs --noise-multiplier or --target-epsilon"),
        ({"noise_multiplier": 0.3, "target_epsilon": 1.0}, "spends epsilon .* in one round"),
        ({"noise_multiplier": 5.0, "adaptive_clip": True}, "clip_count_noise"),
    ],
)
def test_unworkable_budget_is_refused_before_training(tmp_path, fields, match):
    with pytest.raises(ValueError, match=match):
        run_experiment(RunConfig(**SMALL, **fields, out=str(tmp_path)), progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_every_unsupported_algorithm_is_refused_with_its_reason():
    for name, reason in UNSUPPORTED.items():
        with pytest.raises(ValueError, match=f"does not support {name}: {reason[:20]}"):
            RunConfig(**SMALL, noise_multiplier=1.0, algorithm=name)


def _strip(rounds):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rounds]


def _server(out):
    ckpt = load_checkpoint(out / "checkpoint.pt")
    return T.leaves(ckpt["server"]) + T.leaves(ckpt["bank"])


def test_local_dp_from_the_run_meets_its_target_and_reports_each_clients_epsilon(tmp_path):
    cfg = {**SMALL, "dp": "local", "target_epsilon": 3.0, "rounds": 3, "clip": None}
    doc = run_experiment(RunConfig(**cfg, out=str(tmp_path)), progress=False)
    p = doc["privacy"]
    assert p["dp"] == "local" and p["guarantee"].startswith("sample-level")
    assert p["noise_multiplier_calibrated"] and "Poisson sampling" in p["sampling"]
    eps = [e["epsilon"] for e in doc["rounds"]]
    assert eps == sorted(eps) and eps[-1] <= 3.0 and eps[-1] > 2.0  # calibrated, not loose
    # every client trains every round (10 of 20 sampled: the bound is loose) and the actual
    # worst client's epsilon, from the steps it took, is within it
    assert 0 < p["worst_client_epsilon"] <= eps[-1]
    assert ckpt_sampler(tmp_path) == "poisson"


def ckpt_sampler(out):
    cfg = RunConfig.from_dict(load_checkpoint(out / "checkpoint.pt")["config"])
    return cfg.work().sampler


@pytest.mark.parametrize(
    "extra",
    [
        {"dp_seed": 4},
        {"adaptive_clip": True, "clip": None, "noise_multiplier": 0.8},
        {"dp": "local", "dp_seed": 4},
        {"dp": "local"},
    ],
)
def test_a_resumed_dp_run_equals_the_uninterrupted_one(tmp_path, extra):
    """Seeded: the straight run and a resume agree (the resume does not redraw round 1's
    noise). Unseeded: two resumes of one checkpoint draw the same noise."""
    cfg = {**SMALL, "noise_multiplier": 1.0, "threads": 1, **extra}  # adaptive: z < 2 E/20
    if "dp_seed" in extra:
        straight = run_experiment(
            RunConfig(**cfg, rounds=4, out=str(tmp_path / "a")), progress=False
        )
        assert "NOT PRIVATE" in straight["privacy"]["noise"] and not straight["privacy"]["private"]
    run_experiment(RunConfig(**cfg, rounds=2, out=str(tmp_path / "b")), progress=False)
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    resumed = [
        run_experiment(
            RunConfig(**cfg, rounds=4, out=str(tmp_path / d)), resume=True, progress=False
        )
        for d in "bc"
    ]
    other = straight if "dp_seed" in extra else resumed[1]
    assert _strip(resumed[0]["rounds"]) == _strip(other["rounds"])
    a, b = _server(tmp_path / "b"), _server(tmp_path / ("a" if "dp_seed" in extra else "c"))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_two_unseeded_runs_draw_different_noise(tmp_path):
    cfg = {**SMALL, "noise_multiplier": 1.0, "rounds": 1}
    for d in "ab":
        run_experiment(RunConfig(**cfg, out=str(tmp_path / d)), progress=False)
    a, b = _server(tmp_path / "a"), _server(tmp_path / "b")
    assert not all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_fedadam_with_dp_central_runs_from_the_cli(tmp_path):
    args = ["fl", "run", "--dp", "central", "--algorithm", "fedadam", "--noise-multiplier", "1"]
    args += ["--n-clients", "20", "--rounds", "2", "--epochs", "1", "--model", "mclr"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["algorithm"] == "fedadam" and doc["rounds"][-1]["epsilon"] > 0
    result = CliRunner().invoke(app, ["fl", "run", "--clip", "1", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "--dp central" in result.output


@pytest.mark.parametrize(
    "name,hp,lr",
    [
        ("fedprox", {"server_lr": 0.5}, 0.5),
        ("pfedme", {"beta": 2.0}, 2.0),
        ("fedavgm", {"server_momentum": 0.0}, 1.0),
    ],
)
def test_a_reducer_keeps_the_algorithms_server_step(name, hp, lr):
    """The DP reducer replaces the weighted mean only: the step is lr x the unweighted mean."""
    model = build_model("mclr", (3,), 2, [4])
    reducer = dp_mean(CentralDP(1e-12, 100.0, expected_clients=2), seed=0)
    algo = build_algorithm(
        name, model, LocalSGD(0.1), n_clients=2, batch_size=4, reducer=reducer, **hp
    )
    params, buffers = model.init(torch.Generator().manual_seed(0))
    server = algo.server_init(params, buffers, torch.Generator())
    delta = {
        k: torch.stack([torch.ones_like(v), 3 * torch.ones_like(v)]) for k, v in params.items()
    }
    z = torch.zeros(2)
    u = ClientUpdate(delta, torch.tensor([1.0, 9.0]), z, z, {}, {})
    new = algo.server_update(server, u, torch.Generator())
    for k, v in params.items():
        assert torch.allclose(new["params"][k], v + lr * 2.0, atol=1e-6)


def test_a_checkpoint_whose_history_lacks_epsilon_under_dp_is_refused(tmp_path):
    run_experiment(
        RunConfig(**SMALL, noise_multiplier=1.0, rounds=1, out=str(tmp_path)), progress=False
    )
    path = tmp_path / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    del ckpt["rounds"][0]["epsilon"]
    _atomic_save(ckpt, path)
    with pytest.raises(ValueError, match="no epsilon under DP"):
        load_checkpoint(path)
