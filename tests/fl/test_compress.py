"""Compressed uploads: round trips within their bounds, error feedback's bookkeeping, exact
byte counts, runs that resume exactly, and combinations refused with a reason."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from privlearn.fl import tree as T
from privlearn.fl.compress import (
    QSGD,
    Compressor,
    client_levels,
    decode,
    encode_qsgd,
    encode_randk,
    encode_topk,
    index_dtype,
    level_bits,
)
from privlearn.fl.run import RunConfig, load_checkpoint, run_experiment

P = 300


def _rows(k=6, p=P, seed=0):
    return torch.randn(k, p, generator=torch.Generator().manual_seed(seed))


def test_sparsifiers_are_exact_at_k_equal_d_and_keep_the_largest():
    u = _rows()
    assert torch.equal(decode(encode_topk(u, P), P), u)
    seeds = np.arange(6, dtype=np.uint64)
    assert torch.equal(decode(encode_randk(u, P, seeds, scaled=False), P), u)
    k = 30
    got = decode(encode_topk(u, k), P)
    assert ((got != 0).sum(1) == k).all()
    kth = u.abs().topk(k, dim=1).values[:, -1:]
    assert torch.equal(got != 0, u.abs() >= kth)  # the k largest magnitudes, exactly
    assert torch.equal(got[got != 0], u[got != 0])


def test_randk_indices_come_from_the_seed_and_scaling_is_unbiased():
    u = _rows(k=1)
    one = decode(encode_randk(u, 10, np.array([7], np.uint64), scaled=False), P)
    again = decode(encode_randk(u, 10, np.array([7], np.uint64), scaled=False), P)
    other = decode(encode_randk(u, 10, np.array([8], np.uint64), scaled=False), P)
    assert torch.equal(one, again) and not torch.equal(one != 0, other != 0)
    seeds = np.arange(4000, dtype=np.uint64)
    mean = decode(encode_randk(u.expand(4000, P), 30, seeds, scaled=True), P).mean(0)
    # each coordinate's mean over 4000 seeds: std |u_j| sqrt(P/k - 1) / sqrt(4000)
    assert (mean - u[0]).abs().max() < 5 * u.abs().max() * 3 / math.sqrt(4000)
    biased = decode(encode_randk(u.expand(4000, P), 30, seeds, scaled=False), P).mean(0)
    assert torch.allclose(biased.sum(), u[0].sum() * 30 / P, rtol=0.2, atol=1.0)


def test_qsgd_error_is_within_norm_over_s_and_unbiased():
    u = _rows()
    levels = np.array([1, 2, 3, 8, 100, 65536])
    got = decode(encode_qsgd(u, levels, np.arange(6, dtype=np.uint64)), P)
    bound = u.norm(dim=1) / torch.as_tensor(levels, dtype=torch.float32)
    assert ((got - u).abs().max(1).values <= bound * (1 + 1e-5)).all()
    assert torch.equal(got.sign() * (got != 0), u.sign() * (got != 0))
    n = 3000
    many = decode(encode_qsgd(u[:1].expand(n, P), np.full(n, 2), np.arange(n)), P)
    # per coordinate the variance is at most (norm / s)^2 / 4
    se = float(u[0].norm()) / 2 / 2 / math.sqrt(n)
    assert (many.mean(0) - u[0]).abs().max() < 5 * se
    zero = decode(encode_qsgd(torch.zeros(1, P), np.array([4]), np.arange(1)), P)
    assert torch.equal(zero, torch.zeros(1, P))


@pytest.mark.parametrize("p", [200, 256, 257, 70_000])
def test_byte_counts_are_the_layout_sizes(p):
    u = _rows(k=3, p=p)
    k = 20
    width = index_dtype(p).itemsize
    assert width == (1 if p <= 256 else 2 if p <= 65536 else 4)
    assert [len(x) for x in encode_topk(u, k)] == [1 + 4 + k * width + k * 4] * 3
    seeds = np.arange(3, dtype=np.uint64)
    assert [len(x) for x in encode_randk(u, k, seeds, True)] == [1 + 4 + 8 + k * 4] * 3
    levels = np.array([1, 8, 8])
    sizes = [len(x) for x in encode_qsgd(u, levels, seeds)]
    assert sizes == [1 + 4 + 4 + math.ceil(p * level_bits(q) / 8) for q in levels]
    assert level_bits(1) == 2 and level_bits(8) == 5 and level_bits(7) == 4


def test_decode_rejects_payloads_whose_size_contradicts_the_header():
    good = encode_topk(_rows(k=1), 5)[0]
    with pytest.raises(ValueError, match="header implies"):
        decode([good[:-1]], P)
    with pytest.raises(ValueError, match="unknown tag"):
        decode([b"\x09" + good[1:]], P)
    q = encode_qsgd(_rows(k=1), np.array([8]), np.arange(1))[0]
    assert q[0] == QSGD
    with pytest.raises(ValueError, match="does not hold"):
        decode([q + b"\x00"], P)
    with pytest.raises(ValueError, match="0 quantisation levels"):
        decode([q[:1] + bytes(4) + q[5:]], P)
    with pytest.raises(ValueError, match="claims k = 5 of 4"):
        decode([good], 4)
    with pytest.raises(ValueError, match="shorter than any header"):
        decode([b"\x01"], P)


def _feedback_rounds(compressor, deltas):
    """Send each round's [K, P] true updates through `compressor`, all accepted."""
    k = deltas.shape[1]
    state = compressor.init(k, P, torch.float32)
    clients = torch.arange(k)
    sent = []
    for r, d in enumerate(deltas):
        up = compressor.upload(state, d, clients, torch.ones(k), r)
        compressor.keep(state, clients, up, torch.arange(k))
        sent.append(up)
    return state, sent


def test_ef_decoded_messages_plus_residual_sum_to_the_true_updates():
    deltas = torch.randn(12, 4, P, generator=torch.Generator().manual_seed(1))
    for method in ("topk", "randk"):
        state, sent = _feedback_rounds(Compressor(method, ratio=0.05, feedback="ef"), deltas)
        total = sum(up.rows for up in sent) + state["e"]
        assert torch.allclose(total, deltas.sum(0), atol=1e-4)
        plain = sum(up.rows for up in _feedback_rounds(Compressor(method, 0.05), deltas)[1])
        assert (plain - deltas.sum(0)).norm() > 10 * (total - deltas.sum(0)).norm()


def test_ef21_state_tracks_the_update():
    fixed = _rows(k=4).expand(25, 4, P)  # the same update every round
    state, sent = _feedback_rounds(Compressor("topk", ratio=0.05, feedback="ef21"), fixed)
    # top-k zeroes the k largest residuals each round: exact after ceil(P / k) = 20 rounds
    assert torch.equal(state["g"], fixed[0]) and torch.equal(sent[-1].rows, fixed[0])
    errors = [float((up.rows - fixed[0]).norm()) for up in sent]
    assert all(b <= a for a, b in zip(errors, errors[1:], strict=False))
    deltas = torch.randn(30, 4, P, generator=torch.Generator().manual_seed(2)) * 0.1 + fixed[:1]
    state, sent = _feedback_rounds(Compressor("randk", ratio=0.2, feedback="ef21"), deltas[:30])
    assert (sent[-1].rows - fixed[0]).norm() < 0.3 * fixed[0].norm()
    state, sent = _feedback_rounds(
        Compressor("topk", ratio=0.1, feedback="ef21-sgdm", momentum=0.5), fixed
    )
    assert torch.allclose(state["v"], fixed[0], atol=1e-5)  # momentum converged to the update
    assert (sent[-1].rows - fixed[0]).norm() < 1e-3 * fixed[0].norm()


def test_dadaquant_levels_per_client_and_doubling_on_a_plateau():
    assert client_levels(8, torch.ones(5)).tolist() == [8] * 5
    w = torch.tensor([8.0, 1.0, 1.0])
    q = client_levels(8, w).astype(float)
    p = (w / w.sum()).numpy()
    # the fixed-q variance bound sum p^2 / q^2 is kept (up to rounding to integers)
    assert abs((p**2 / q**2).sum() / (p**2).sum() * 64 - 1) < 0.2
    assert q[0] > q[1] == q[2]
    c = Compressor("dadaquant")
    state = c.init(3, P, torch.float32)
    seen = []
    falling = [2.0 - 0.1 * r for r in range(10)]
    for loss in falling:
        c.observe(state, loss)
        seen.append(int(state["schedule"]["q"]))
    assert seen == [1] * 10  # the loss keeps falling: q stays
    for r in range(40):  # a noisy plateau
        c.observe(state, 1.0 + 0.05 * (-1) ** r)
        seen.append(int(state["schedule"]["q"]))
    assert seen[-1] >= 4 and seen == sorted(seen)


BASE = {
    "dataset": "digits",
    "n_clients": 6,
    "clients_per_round": 4,
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.1,
    "model": "mclr",
    "threads": 1,
}


@pytest.mark.parametrize(
    "options",
    [
        {"compress": "topk", "compress_ratio": 0.1, "error_feedback": "ef21-sgdm"},
        {"compress": "dadaquant"},
        {"compress": "randk", "error_feedback": "ef"},
    ],
)
def test_resumed_compressed_run_equals_the_uninterrupted_one(tmp_path, options):
    cfg = {**BASE, **options}
    straight = run_experiment(RunConfig(**cfg, rounds=4, out=str(tmp_path / "a")), progress=False)
    run_experiment(RunConfig(**cfg, rounds=2, out=str(tmp_path / "b")), progress=False)
    resumed = run_experiment(
        RunConfig(**cfg, rounds=4, out=str(tmp_path / "b")), resume=True, progress=False
    )
    strip = lambda rs: [{k: v for k, v in r.items() if "seconds" not in k} for r in rs]  # noqa: E731
    assert strip(resumed["rounds"]) == strip(straight["rounds"])
    a, b = (load_checkpoint(Path(tmp_path / x) / "checkpoint.pt") for x in "ab")
    for part in ("server", "compress"):
        assert all(
            torch.equal(x, y) for x, y in zip(T.leaves(a[part]), T.leaves(b[part]), strict=True)
        )
    up = straight["rounds"][0]["upload"]
    assert up["clients"] == 4 and up["uncompressed_bytes"] == 4 * 650 * 4
    assert 0 < up["bytes"] < up["uncompressed_bytes"]


def test_topk_of_everything_is_fedavg_and_smaller_k_is_counted_every_round(tmp_path):
    def accs(**options):
        out = str(tmp_path / str(len(list(tmp_path.iterdir()))))
        doc = run_experiment(RunConfig(**BASE, rounds=4, **options, out=out), progress=False)
        return doc, [e["test_acc"] for e in doc["rounds"]]

    _, plain = accs()
    doc, every = accs(compress="topk", compress_ratio=1.0)
    assert every == plain  # float32 values sent whole: the same run
    doc, acc = accs(compress="topk", compress_ratio=0.1, error_feedback="ef21")
    k = 65  # round(0.1 * 650) of mclr's 650 parameters, indices in 2 bytes
    assert all(e["upload"]["bytes"] == 4 * (1 + 4 + k * 2 + k * 4) for e in doc["rounds"])
    assert acc[-1] > 0.3  # it learns (10 classes)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compress_ratio": 0.1}, "give them with --compress"),
        ({"compress": "gzip"}, "compress: must be one of"),
        ({"compress": "topk", "compress_ratio": 0.0}, r"compress_ratio: must be in \(0, 1\]"),
        ({"compress": "qsgd", "compress_ratio": 0.1}, "takes --compress-levels"),
        ({"compress": "topk", "compress_levels": 4}, "takes --compress-ratio"),
        ({"compress": "qsgd", "error_feedback": "ef21"}, "is unbiased and needs none"),
        ({"compress": "topk", "error_feedback": "ef21", "ef_momentum": 0.2}, "ef21-sgdm"),
        ({"compress": "topk", "secure_aggregation": "masking"}, "run one or the other"),
        ({"compress": "topk", "model": "mlp-bn"}, "batch-norm statistics"),
    ],
)
def test_bad_compression_options_are_refused_with_a_reason(options, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{**BASE, **options})


def test_algorithms_with_other_uploads_are_refused_at_the_first_round(tmp_path):
    with pytest.raises(ValueError, match="encodes the model delta only.*dc"):
        run_experiment(
            RunConfig(**BASE, algorithm="scaffold", compress="topk", rounds=1, out=str(tmp_path)),
            progress=False,
        )


@pytest.mark.parametrize(
    "options",
    [
        {"compress": "topk", "error_feedback": "ef21", "dp": "central", "noise_multiplier": 0.5},
        {"compress": "qsgd", "defence": "median"},
    ],
    ids=["central-dp", "defence"],
)
def test_compression_composes_with_central_dp_and_defences(tmp_path, options):
    doc = run_experiment(RunConfig(**BASE, **options, rounds=2, out=str(tmp_path)), progress=False)
    assert all(0 < e["upload"]["bytes"] < e["upload"]["uncompressed_bytes"] for e in doc["rounds"])
    assert all(not e["skipped"] for e in doc["rounds"])


@pytest.mark.parametrize(("method", "feedback"), [("randk", "ef21"), ("qsgd", None)])
def test_a_client_alone_sends_what_it_sends_in_a_cohort(method, feedback):
    """Random draws depend on (seed, round, client) only: a deployed client's payload is the
    one the simulated cohort produced for it."""
    c = Compressor(method, feedback=feedback)
    u, clients = _rows(k=4), torch.tensor([3, 5, 8, 9])
    cohort = c.upload(c.init(10, P, torch.float32), u, clients, torch.ones(4), 7)
    one = c.init(1, P, torch.float32)  # a deployed client's own one-row state
    slot = torch.tensor([0])
    alone = c.upload(one, u[2:3], clients[2:3], torch.ones(1), 7, slots=slot)
    assert alone.payloads == cohort.payloads[2:3]
    other_round = c.upload(one, u[2:3], clients[2:3], torch.ones(1), 8, slots=slot)
    assert other_round.payloads != alone.payloads
    if feedback:  # its memory lands in its own slot
        c.keep(one, slot, alone, torch.tensor([0]))
        assert torch.equal(one["g"][0], cohort.memory["g"][2])
