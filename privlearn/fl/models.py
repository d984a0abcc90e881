"""Models as pure functions of explicit parameters, so engines can vmap them over clients.

A model is `init(generator) -> (params, buffers)` plus
`apply(params, buffers, x, mask, train) -> (logits, new_buffers)`. Batch norm is written
out here rather than taken from `torch.nn` for two reasons: statistics must ignore padded
samples (`mask`), and running statistics must be returned, not mutated, to stay vmappable.
Initialisation matches torch's defaults for Linear/Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

Params = dict[str, torch.Tensor]

BN_MOMENTUM, BN_EPS = 0.1, 1e-5


def _uniform(g: torch.Generator, shape: Sequence[int], fan_in: int) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(tuple(shape), generator=g) * 2 - 1) * bound


def batch_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    mask: torch.Tensor | None,
    train: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch norm over the batch (and spatial) axes counting only samples with mask = 1.

    Returns the output and the updated running mean and variance (unchanged in eval mode,
    or when the batch holds no real sample)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if not train:
        return (
            (
                (x - mean.view(shape)) / torch.sqrt(var.view(shape) + BN_EPS) * weight.view(shape)
                + bias.view(shape)
            ),
            mean,
            var,
        )
    m = torch.ones(x.shape[0], dtype=x.dtype, device=x.device) if mask is None else mask.to(x.dtype)
    m = m.view((-1,) + (1,) * (x.dim() - 1)).expand_as(x)
    real = m > 0
    dims = [0] + list(range(2, x.dim()))
    count = m.sum(dims)
    # padded rows are selected out, not multiplied by 0 (an overflowing padded row would give
    # inf * 0 = nan), and leave as the bias: nothing of them reaches statistics or gradients
    bmean = torch.where(real, x, 0).sum(dims) / count.clamp_min(1)
    centred = torch.where(real, x - bmean.view(shape), 0)
    bvar = (centred**2).sum(dims) / count.clamp_min(1)
    out = centred / torch.sqrt(bvar.view(shape) + BN_EPS)
    out = out * weight.view(shape) + bias.view(shape)
    seen = count > 0
    unbiased = bvar * count / (count - 1).clamp_min(1)
    new_mean = torch.where(seen, (1 - BN_MOMENTUM) * mean + BN_MOMENTUM * bmean, mean)
    new_var = torch.where(seen, (1 - BN_MOMENTUM) * var + BN_MOMENTUM * unbiased, var)
    return out, new_mean, new_var


@dataclass(frozen=True)
class _Layer:
    kind: str  # "linear" | "conv" | "bn"
    name: str
    shape: tuple[int, ...]  # linear: (out, in); conv: (out, in, k, k); bn: (features,)
    padding: int = 0


@dataclass(frozen=True)
class Model:
    """A feed-forward classifier described by its layers; `forward_plan` orders the ops."""

    name: str
    input_shape: tuple[int, ...]
    n_classes: int
    layers: tuple[_Layer, ...]
    plan: tuple[tuple[str, str], ...]  # (op, layer name or ""): linear|conv|bn|relu|pool|flatten
    local_keys: frozenset[str] = field(default=frozenset())  # batch-norm entries (FedBN)
    # the masked loss's gradient written out instead of autograd (with_closed_form)
    closed_form: bool = False

    @property
    def linear_layer(self) -> str | None:
        """The layer's name when the model is one linear map of the flattened input."""
        if len(self.plan) == 2 and self.plan[0][0] == "flatten" and self.plan[1][0] == "linear":
            return self.plan[1][1]
        return None

    def init(self, generator: torch.Generator) -> tuple[Params, Params]:
        params: Params = {}
        buffers: Params = {}
        for layer in self.layers:
            if layer.kind == "bn":
                (c,) = layer.shape
                params[f"{layer.name}.weight"] = torch.ones(c)
                params[f"{layer.name}.bias"] = torch.zeros(c)
                buffers[f"{layer.name}.running_mean"] = torch.zeros(c)
                buffers[f"{layer.name}.running_var"] = torch.ones(c)
                continue
            fan_in = math.prod(layer.shape[1:])
            params[f"{layer.name}.weight"] = _uniform(generator, layer.shape, fan_in)
            params[f"{layer.name}.bias"] = _uniform(generator, layer.shape[:1], fan_in)
        return params, buffers

    def apply(
        self,
        params: Params,
        buffers: Params,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        train: bool = False,
    ) -> tuple[torch.Tensor, Params]:
        by_name = {layer.name: layer for layer in self.layers}
        new_buffers = dict(buffers)
        h = x
        for op, name in self.plan:
            if op == "linear":
                h = F.linear(h, params[f"{name}.weight"], params[f"{name}.bias"])
            elif op == "conv":
                h = F.conv2d(
                    h,
                    params[f"{name}.weight"],
                    params[f"{name}.bias"],
                    padding=by_name[name].padding,
                )
            elif op == "bn":
                h, rm, rv = batch_norm(
                    h,
                    params[f"{name}.weight"],
                    params[f"{name}.bias"],
                    buffers[f"{name}.running_mean"],
                    buffers[f"{name}.running_var"],
                    mask,
                    train,
                )
                new_buffers[f"{name}.running_mean"], new_buffers[f"{name}.running_var"] = rm, rv
            elif op == "relu":
                h = torch.relu(h)
            elif op == "pool":
                h = F.max_pool2d(h, 2, 2)
            elif op == "flatten":
                h = h.flatten(1)
        return h, new_buffers

    def n_params(self) -> int:
        return sum(p.numel() for p in self.init(torch.Generator().manual_seed(0))[0].values())


def _bn_keys(layers: Sequence[_Layer]) -> frozenset[str]:
    keys = set()
    for layer in layers:
        if layer.kind == "bn":
            keys |= {f"{layer.name}.{s}" for s in ("weight", "bias", "running_mean", "running_var")}
    return frozenset(keys)


def logistic_regression(input_shape: Sequence[int], n_classes: int) -> Model:
    """Multinomial logistic regression (FedProx's `mclr`: 610 parameters on 60 features)."""
    d = math.prod(input_shape)
    return Model(
        "mclr",
        tuple(input_shape),
        n_classes,
        (_Layer("linear", "fc", (n_classes, d)),),
        (("flatten", ""), ("linear", "fc")),
    )


def mlp(
    input_shape: Sequence[int],
    n_classes: int,
    hidden: Sequence[int] = (200, 200),
    batch_norm: bool = False,
) -> Model:
    """ReLU multi-layer perceptron (NIID-Bench uses hidden [32, 16, 8] on tabular data)."""
    dims = [math.prod(input_shape), *hidden]
    layers, plan = [], [("flatten", "")]
    for i in range(len(hidden)):
        layers.append(_Layer("linear", f"fc{i + 1}", (dims[i + 1], dims[i])))
        plan.append(("linear", f"fc{i + 1}"))
        if batch_norm:
            layers.append(_Layer("bn", f"bn{i + 1}", (dims[i + 1],)))
            plan.append(("bn", f"bn{i + 1}"))
        plan.append(("relu", ""))
    layers.append(_Layer("linear", "out", (n_classes, dims[-1])))
    plan.append(("linear", "out"))
    layers = tuple(layers)
    return Model(
        "mlp-bn" if batch_norm else "mlp",
        tuple(input_shape),
        n_classes,
        layers,
        tuple(plan),
        _bn_keys(layers),
    )


def simple_cnn(input_shape: Sequence[int], n_classes: int, batch_norm: bool = False) -> Model:
    """NIID-Bench's SimpleCNN: conv(6) -> pool -> conv(16) -> pool -> fc 120 -> 84 -> classes.

    28x28 inputs give `SimpleCNNMNIST` exactly (5x5 kernels, 44,426 parameters); 32x32x3
    give `SimpleCNN` (62,006). Inputs smaller than 28 (digits' 8x8) use 3x3 kernels with
    padding 1, since 5x5 valid convolutions leave nothing of an 8x8 image. With
    batch_norm, a BN layer follows each conv and hidden fc layer (FedBN's placement).
    """
    c, h, w = input_shape
    if h != w:
        raise ValueError(f"simple_cnn expects square images, got {h}x{w}")
    k, pad = (5, 0) if h >= 28 else (3, 1)
    side = ((h + 2 * pad - k + 1) // 2 + 2 * pad - k + 1) // 2
    if side < 1:
        raise ValueError(f"{h}x{w} images are too small for simple_cnn")
    flat = 16 * side * side
    layers = [
        _Layer("conv", "conv1", (6, c, k, k), pad),
        _Layer("conv", "conv2", (16, 6, k, k), pad),
        _Layer("linear", "fc1", (120, flat)),
        _Layer("linear", "fc2", (84, 120)),
        _Layer("linear", "fc3", (n_classes, 84)),
    ]
    plan = [
        ("conv", "conv1"),
        ("relu", ""),
        ("pool", ""),
        ("conv", "conv2"),
        ("relu", ""),
        ("pool", ""),
        ("flatten", ""),
        ("linear", "fc1"),
        ("relu", ""),
        ("linear", "fc2"),
        ("relu", ""),
        ("linear", "fc3"),
    ]
    if batch_norm:
        layers += [
            _Layer("bn", "bn1", (6,)),
            _Layer("bn", "bn2", (16,)),
            _Layer("bn", "bn3", (120,)),
            _Layer("bn", "bn4", (84,)),
        ]
        for name, after in (("bn1", "conv1"), ("bn2", "conv2"), ("bn3", "fc1"), ("bn4", "fc2")):
            i = plan.index(("conv" if after.startswith("conv") else "linear", after))
            plan.insert(i + 1, ("bn", name))
    layers = tuple(layers)
    return Model(
        "cnn-bn" if batch_norm else "cnn",
        tuple(input_shape),
        n_classes,
        layers,
        tuple(plan),
        _bn_keys(layers),
    )


def with_closed_form(model: Model) -> Model:
    """`model` whose training gradient skips autograd (algorithms/base.py `linear_loss_grad`):
    only a single linear layer has one written out here."""
    if model.linear_layer is None:
        raise ValueError(
            f"closed-form gradients exist for mclr (one linear layer) only, not {model.name!r}: "
            "turn closed_form off for this model"
        )
    return dataclasses.replace(model, closed_form=True)


MODELS = ("mclr", "mlp", "mlp-bn", "cnn", "cnn-bn")


def build_model(
    name: str, input_shape: Sequence[int], n_classes: int, hidden: Sequence[int] = (200, 200)
) -> Model:
    """Build a model by name; `auto` is a CNN for images and logistic regression otherwise."""
    if name == "auto":
        name = "cnn" if len(input_shape) == 3 else "mclr"
    if name in ("cnn", "cnn-bn"):
        if len(input_shape) != 3:
            raise ValueError(
                f"model {name!r} needs image inputs (C, H, W), got {tuple(input_shape)}"
                "; use mclr or mlp for flat features"
            )
        return simple_cnn(input_shape, n_classes, batch_norm=name == "cnn-bn")
    if name in ("mlp", "mlp-bn"):
        return mlp(input_shape, n_classes, hidden, batch_norm=name == "mlp-bn")
    if name == "mclr":
        return logistic_regression(input_shape, n_classes)
    raise ValueError(f"unknown model {name!r}; expected auto or one of {', '.join(MODELS)}")
