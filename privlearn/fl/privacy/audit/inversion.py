"""Gradient inversion: what a server recovers of a client's images from one upload.

After Inverting Gradients (Geiping et al., 2020): dummy images are optimised until the upload
they would produce points the way the observed one does. The loss is one minus the cosine
similarity of the two updates taken as one vector over all uploaded parameters (the paper's
code weights all layers into one dot product), plus `tv` times the images' total variation.
Adam steps on the gradient's sign (the paper's choice), the step size drops tenfold at 3/8,
5/8 and 7/8 of the iterations, the images are clamped to the data range [0, 1] after every
step, and of several random restarts the one whose update matches best (cosine loss alone)
wins. The attacker is white-box: it knows the model and computes the upload with the very
function the client uses (`client_upload`), and every gradient of it with respect to the
dummy images is exact (torch.func, nested; restarts run in one vmap).

Two settings: "gradient", the mean gradient of the client's batch (one image, or a batch of
B); "fedavg", the model delta of `steps` local SGD steps at a known learning rate and batch
size (the paper's section 5 weight-update attack), batches taken in order, chunk t mod
ceil(n / batch_size) at step t, which loses nothing for one epoch since the dummy images'
order is free. Labels are given, or for one image inferred from the last layer's bias (iDLG).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.func import grad, vmap

from privlearn.fl.algorithms.base import LocalSGD, local_sgd_step, local_start, loss_grad
from privlearn.fl.models import Model, build_model
from privlearn.fl.privacy.audit.images import match, save_grid
from privlearn.fl.privacy.noise import draw_normal, noise_state

Params = dict[str, torch.Tensor]
SETTINGS = ("gradient", "fedavg")
LOW, HIGH = 0.0, 1.0  # the data range of digits and MNIST-5k as privlearn loads them


@dataclass(frozen=True)
class LocalTraining:
    """What the attacker knows of a FedAvg client's local training (as FedAvg publishes it)."""

    lr: float = 0.1
    batch_size: int = 1
    steps: int = 1

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclass(frozen=True)
class InversionResult:
    """The best restart's images (n, C, H, W) in [0, 1], the labels it used, its matching
    loss (1 - cosine similarity), every restart's loss, and whether labels were inferred."""

    images: torch.Tensor
    labels: torch.Tensor
    loss: float
    restart_losses: list[float]
    labels_inferred: bool


def client_upload(
    model: Model,
    params: Params,
    buffers: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    setting: str,
    local: LocalTraining | None = None,
) -> Params:
    """What a client uploads for inputs x, labels y: the mean gradient ("gradient"), or the
    delta w_after - w_before of `local.steps` SGD steps ("fedavg", FedAvg's local_sgd_step)."""
    if setting == "gradient":
        return loss_grad(model, params, buffers, _batch(x, y))[0]
    if setting != "fedavg":
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if local is None:
        raise ValueError("local: the fedavg setting needs the client's LocalTraining")
    opt = LocalSGD(lr=local.lr)
    state = local_start(params, buffers, opt)
    chunks = list(zip(x.split(local.batch_size), y.split(local.batch_size), strict=True))
    for t in range(local.steps):
        state = local_sgd_step(model, opt, state, _batch(*chunks[t % len(chunks)]))
    return {k: state["params"][k] - params[k] for k in params}


def _batch(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"x": x, "y": y, "mask": torch.ones(x.shape[0], dtype=x.dtype)}


def gaussian_mechanism(
    update: Params, clip: float, noise_multiplier: float, seed: int | None = None
) -> Params:
    """What DP does to one upload before the attacker sees it: scale it to L2 norm <= clip
    (over all tensors together), then add N(0, (noise_multiplier * clip)^2) to every entry,
    drawn from privlearn's secret noise generator (seeded only for repeatable audits)."""
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in update.values()))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    draws, _ = draw_normal(noise_state(seed), [v.shape for v in update.values()])
    return {
        k: (v.double() * scale + noise_multiplier * clip * z).to(v.dtype)
        for (k, v), z in zip(update.items(), draws, strict=True)
    }


def infer_label(model: Model, update: Params, setting: str) -> int:
    """One image's label from its update (iDLG): with cross-entropy, the last layer's bias
    gradient is softmax - onehot, negative at the true class only; a FedAvg delta, -lr times a
    sum of such gradients, is positive there only."""
    last = [name for op, name in model.plan if op == "linear"][-1]
    key = f"{last}.bias"
    if key not in update:
        raise ValueError(f"update: label inference needs the last layer's bias {key!r}")
    b = update[key]
    return int(b.argmin() if setting == "gradient" else b.argmax())


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of vertically and horizontally adjacent pixels (the paper's
    image prior), for (..., H, W) images."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (
        x[..., :, 1:] - x[..., :, :-1]
    ).abs().mean()


def _cosine_loss(a: Params, b: Params) -> torch.Tensor:
    dot = sum((a[k] * b[k]).sum() for k in b)
    na = torch.sqrt(sum((a[k] ** 2).sum() for k in b))
    nb = torch.sqrt(sum((b[k] ** 2).sum() for k in b))
    return 1 - dot / (na * nb).clamp_min(1e-30)


def _check(model, params, observed, setting, n_images, labels, local, restarts, iterations, lr, tv):
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if tv < 0:
        raise ValueError(f"tv must be >= 0, got {tv}")
    if setting == "fedavg" and local is None:
        raise ValueError("local: the fedavg setting needs the client's LocalTraining")
    unknown = sorted(set(observed) - set(params))
    if unknown or not observed:
        raise ValueError(f"observed_update: keys {unknown or '(none)'} are not model parameters")
    for k, v in observed.items():
        if v.shape != params[k].shape:
            raise ValueError(
                f"observed_update: {k!r} has shape {tuple(v.shape)}, the model's is"
                f" {tuple(params[k].shape)}"
            )
    if labels is None and n_images > 1:
        raise ValueError("labels: give the batch's labels; they are inferred for one image only")
    if labels is not None and (
        labels.shape != (n_images,) or labels.min() < 0 or labels.max() >= model.n_classes
    ):
        raise ValueError(
            f"labels: need {n_images} class indices in [0, {model.n_classes}),"
            f" got {labels.tolist()}"
        )


def invert(
    model: Model,
    params: Params,
    buffers: Params,
    observed_update: Params,
    *,
    setting: str = "gradient",
    n_images: int = 1,
    labels: torch.Tensor | None = None,
    local: LocalTraining | None = None,
    restarts: int = 4,
    iterations: int = 1000,
    lr: float = 0.1,
    tv: float = 1e-4,
    seed: int = 0,
) -> InversionResult:
    """Reconstruct a client's `n_images` inputs from its `observed_update` (a gradient or a
    FedAvg delta, over all or some of `params`' keys) at the server's `params`.

    labels: the client's labels in batch order (known labels), or None to infer one image's
    label; local: the client's lr, batch size and steps (fedavg only)."""
    _check(
        model,
        params,
        observed_update,
        setting,
        n_images,
        labels,
        local,
        restarts,
        iterations,
        lr,
        tv,
    )
    inferred = labels is None
    if inferred:
        labels = torch.tensor([infer_label(model, observed_update, setting)])
    observed = {k: v.detach().to(params[k].dtype) for k, v in observed_update.items()}
    params = {k: v.detach() for k, v in params.items()}
    dtype = next(iter(params.values())).dtype

    def matching(x):
        dummy = client_upload(model, params, buffers, x, labels, setting, local)
        return _cosine_loss(dummy, observed)

    def objective(x):
        return matching(x) + tv * total_variation(x)

    step = vmap(grad(objective))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((restarts, n_images, *model.input_shape), generator=g, dtype=dtype)
    x = x * (HIGH - LOW) + LOW
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, [iterations * 3 // 8, iterations * 5 // 8, iterations * 7 // 8], gamma=0.1
    )
    for _ in range(iterations):
        x.grad = step(x.detach()).sign()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(LOW, HIGH)
    final = vmap(matching)(x.detach())
    best = int(final.argmin())
    return InversionResult(
        images=x.detach()[best],
        labels=labels,
        loss=float(final[best]),
        restart_losses=[float(v) for v in final],
        labels_inferred=inferred,
    )


def audit_inversion(
    dataset: str = "digits",
    model_name: str = "mlp",
    setting: str = "gradient",
    n_images: int = 1,
    *,
    dp: tuple[float, float] | None = None,
    infer_labels: bool = True,
    local: LocalTraining | None = None,
    restarts: int = 4,
    iterations: int = 1000,
    tv: float = 1e-4,
    seed: int = 0,
    out_dir: str | Path | None = None,
) -> dict:
    """One audit end to end: a client holding `n_images` training images of `dataset` uploads
    its update at a freshly initialised `model_name` (optionally through
    `gaussian_mechanism` with dp = (clip, noise_multiplier)); the server inverts it. Returns
    JSON-able metrics (per-image PSNR/SSIM against the matched originals, their means, the
    matching loss, seconds) and, with `out_dir`, saves the originals/reconstructions PNG.

    infer_labels: for one image, infer the label from the update (iDLG) rather than know it."""
    from privlearn.fl.data.datasets import load_centralised

    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if dp is not None and (dp[0] <= 0 or dp[1] < 0):
        raise ValueError(f"dp: need (clip > 0, noise_multiplier >= 0), got {dp}")
    data = load_centralised(dataset)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(data.y_train), size=n_images, replace=False)
    x = torch.from_numpy(data.x_train[rows])
    y = torch.from_numpy(data.y_train[rows])
    model = build_model(model_name, x.shape[1:], data.n_classes)
    params, buffers = model.init(torch.Generator().manual_seed(seed))
    if setting == "fedavg" and local is None:
        local = LocalTraining()
    upload = client_upload(model, params, buffers, x, y, setting, local)
    norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in upload.values()))
    if dp is not None:
        upload = gaussian_mechanism(upload, *dp, seed=seed)
    start = time.perf_counter()
    result = invert(
        model,
        params,
        buffers,
        upload,
        setting=setting,
        n_images=n_images,
        labels=None if infer_labels and n_images == 1 else y,
        local=local,
        restarts=restarts,
        iterations=iterations,
        tv=tv,
        seed=seed,
    )
    seconds = time.perf_counter() - start
    scores = match(x, result.images)
    # what knowing only the data distribution gives: every image guessed as the mean image
    mean_image = torch.from_numpy(data.x_train.mean(0)).expand_as(x)
    baseline = float(np.mean([s["psnr"] for s in match(x, mean_image)]))
    out = {
        "dataset": dataset,
        "model": model_name,
        "setting": setting,
        "n_images": n_images,
        "local": None if local is None else local.__dict__,
        "dp": None if dp is None else {"clip": dp[0], "noise_multiplier": dp[1]},
        "update_norm": norm,
        "labels_inferred": result.labels_inferred,
        "labels_correct": bool((result.labels == y).all()),
        "restarts": restarts,
        "iterations": iterations,
        "tv": tv,
        "seed": seed,
        "loss": result.loss,
        "psnr": [s["psnr"] for s in scores],
        "ssim": [s["ssim"] for s in scores],
        "mean_psnr": float(np.mean([s["psnr"] for s in scores])),
        "mean_ssim": float(np.mean([s["ssim"] for s in scores])),
        "baseline_psnr": baseline,
        "seconds": seconds,
    }
    if out_dir is not None:
        name = f"inversion-{dataset}-{model_name}-{setting}-{n_images}"
        name += "" if dp is None else f"-dp{dp[0]:g}-{dp[1]:g}"
        title = f"{dataset} {model_name} {setting} n={n_images}" + (
            "" if dp is None else f" clip={dp[0]:g} sigma={dp[1]:g}"
        )
        out["png"] = str(save_grid(x, result.images, Path(out_dir) / f"{name}.png", title, scores))
    return out
