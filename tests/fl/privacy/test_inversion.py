"""Gradient inversion: the metrics on hand-worked cases, the attack succeeding where it must
(undefended digits updates) and failing under strong DP, and bad input refused up front."""

from __future__ import annotations

import json
import math

import pytest
import torch

from privlearn.fl.models import build_model
from privlearn.fl.privacy.audit.images import match, psnr, ssim
from privlearn.fl.privacy.audit.inversion import (
    LocalTraining,
    audit_inversion,
    client_upload,
    gaussian_mechanism,
    infer_label,
    invert,
)

# --- metrics ---------------------------------------------------------------------------------


def test_psnr_hand_worked():
    a = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert psnr(a, a) == math.inf
    # a constant offset d: MSE = d^2, PSNR = 20 log10(range / d)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a, a + 0.1, data_range=2.0) == pytest.approx(20 * math.log10(20))


def test_ssim_hand_worked():
    a = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert ssim(a, a) == pytest.approx(1.0)
    # constant images: no variance, SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)
    c1 = 0.01**2
    for side in (8, 28):  # the 5x5 and the 11x11 window
        x, y = torch.full((1, side, side), 0.5), torch.full((1, side, side), 0.25)
        expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
        assert ssim(x, y) == pytest.approx(expected)
    noisy = (a + 0.3 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert ssim(a, noisy) < 0.9


def test_match_pairs_a_shuffled_batch():
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    perm = [2, 0, 3, 1]
    scores = match(x, x[perm])
    assert [s["index"] for s in scores] == [perm.index(i) for i in range(4)]
    assert all(s["psnr"] == math.inf and s["ssim"] == pytest.approx(1.0) for s in scores)


def test_gaussian_mechanism_clips_then_adds_seeded_noise():
    u = {"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}
    clipped = gaussian_mechanism(u, clip=1.0, noise_multiplier=0.0)
    assert clipped["a"].item() == pytest.approx(0.6) and clipped["b"].item() == pytest.approx(0.8)
    assert gaussian_mechanism(u, 10.0, 0.0)["a"].item() == 3.0  # under the clip: unchanged
    big = {"w": torch.zeros(20000)}
    noisy = gaussian_mechanism(big, clip=2.0, noise_multiplier=0.5, seed=3)
    assert noisy["w"].std().item() == pytest.approx(1.0, rel=0.03)  # sigma * clip
    assert torch.equal(noisy["w"], gaussian_mechanism(big, 2.0, 0.5, seed=3)["w"])


# --- the attack ------------------------------------------------------------------------------


def _digits(n: int, seed: int = 0):
    from privlearn.fl.data.datasets import load_digits

    d = load_digits()
    rows = torch.randperm(len(d.y_train), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.from_numpy(d.x_train[rows.numpy()]), torch.from_numpy(d.y_train[rows.numpy()])


@pytest.mark.parametrize("model_name", ["mclr", "mlp"])
def test_one_undefended_image_is_recovered(model_name, tmp_path):
    out = audit_inversion(
        "digits", model_name, "gradient", 1, restarts=2, iterations=200, out_dir=tmp_path
    )
    # measured ~70-75 dB: a first layer with a bias gives x = dL/dW / dL/db exactly
    assert out["labels_inferred"] and out["labels_correct"]
    assert out["mean_psnr"] >= 40
    assert out["mean_ssim"] >= 0.99
    assert (tmp_path / out["png"].split("/")[-1]).stat().st_size > 0
    json.dumps(out)


def test_a_batch_is_recovered_better_than_chance():
    out = audit_inversion("digits", "mlp", "gradient", 4, restarts=2, iterations=300)
    assert out["mean_psnr"] >= out["baseline_psnr"] + 10  # measured ~75 dB vs 12 dB


def test_a_fedavg_update_is_inverted_better_than_a_guess():
    local = LocalTraining(lr=0.1, batch_size=2, steps=2)  # one epoch over 4 images
    out = audit_inversion("digits", "mlp", "fedavg", 4, local=local, restarts=2, iterations=300)
    assert out["mean_psnr"] >= out["baseline_psnr"] + 10  # measured ~40 dB vs 12 dB


def test_strong_dp_defeats_the_attack_and_clipping_alone_does_not():
    kw = dict(restarts=2, iterations=200)
    clean = audit_inversion("digits", "mlp", "gradient", 1, **kw)
    clip = clean["update_norm"] / 10
    clipped = audit_inversion("digits", "mlp", "gradient", 1, dp=(clip, 0.0), **kw)
    noisy = audit_inversion("digits", "mlp", "gradient", 1, dp=(clip, 1.0), **kw)
    # the cosine loss ignores scale: clipping without noise leaks as much
    assert clipped["mean_psnr"] >= 40
    assert noisy["mean_psnr"] <= clean["mean_psnr"] - 30  # measured ~6 dB vs ~74 dB
    assert noisy["mean_psnr"] <= noisy["baseline_psnr"]  # no better than the mean image


def test_label_inferred_from_one_update():
    x, y = _digits(1)
    model = build_model("mlp", (1, 8, 8), 10)
    params, buffers = model.init(torch.Generator().manual_seed(0))
    for setting, local in (("gradient", None), ("fedavg", LocalTraining(0.1, 1, 3))):
        u = client_upload(model, params, buffers, x, y, setting, local)
        assert infer_label(model, u, setting) == int(y)


# --- bad input -------------------------------------------------------------------------------


@pytest.fixture
def setup():
    model = build_model("mlp", (1, 8, 8), 10)
    params, buffers = model.init(torch.Generator().manual_seed(0))
    x, y = _digits(2)
    return model, params, buffers, client_upload(model, params, buffers, x, y, "gradient"), y


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(n_images=0), "n_images must be >= 1"),
        (dict(tv=-1.0), "tv must be >= 0"),
        (dict(lr=0.0), "lr must be > 0"),
        (dict(restarts=0), "restarts must be >= 1"),
        (dict(iterations=0), "iterations must be >= 1"),
        (dict(setting="sgd"), "setting must be one of"),
        (dict(setting="fedavg"), "local: the fedavg setting needs"),
        (dict(labels=None), "labels: give the batch's labels"),
        (dict(labels=torch.tensor([0, 10])), r"labels: need 2 class indices in \[0, 10\)"),
        (dict(labels=torch.tensor([0])), "labels: need 2 class indices"),
    ],
)
def test_bad_arguments_are_refused(setup, change, message):
    model, params, buffers, update, y = setup
    kw = dict(setting="gradient", n_images=2, labels=y, iterations=1, restarts=1) | change
    with pytest.raises(ValueError, match=message):
        invert(model, params, buffers, update, **kw)


def test_bad_updates_are_refused(setup):
    model, params, buffers, update, y = setup
    kw = dict(n_images=2, labels=y, iterations=1, restarts=1)
    with pytest.raises(ValueError, match="'fc1.weight' has shape"):
        invert(model, params, buffers, {**update, "fc1.weight": torch.zeros(3)}, **kw)
    with pytest.raises(ValueError, match=r"keys \['conv9.bias'\] are not model parameters"):
        invert(model, params, buffers, {**update, "conv9.bias": torch.zeros(3)}, **kw)
    with pytest.raises(ValueError, match="are not model parameters"):
        invert(model, params, buffers, {}, **kw)
    with pytest.raises(ValueError, match="last layer's bias 'out.bias'"):
        invert(model, params, buffers, {"fc1.bias": update["fc1.bias"]}, n_images=1)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(lr=0.0), "lr must be > 0"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(steps=0), "steps must be >= 1"),
    ],
)
def test_bad_local_training_is_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        LocalTraining(**kw)


def test_bad_dp_and_audit_arguments_are_refused():
    with pytest.raises(ValueError, match="clip must be > 0"):
        gaussian_mechanism({"w": torch.ones(2)}, 0.0, 1.0)
    with pytest.raises(ValueError, match="noise_multiplier must be >= 0"):
        gaussian_mechanism({"w": torch.ones(2)}, 1.0, -1.0)
    with pytest.raises(ValueError, match="n_images must be >= 1"):
        audit_inversion("digits", "mlp", "gradient", 0)


# --- MNIST-5k, a CNN ---------------------------------------------------------------------------


@pytest.mark.slow
def test_mnist5k_cnn_single_image(tmp_path):
    out = audit_inversion(
        "mnist5k", "cnn", "gradient", 1, restarts=4, iterations=1000, tv=1e-2, out_dir=tmp_path
    )
    assert out["labels_correct"]
    assert out["mean_psnr"] >= 18  # measured 23.4 dB; the mean-image guess gives 13.7
