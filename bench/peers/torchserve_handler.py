"""TorchServe handler: the same model and preprocessing as the other peers.

TorchServe's frontend (Java) batches requests (``batchSize``/``maxBatchDelay`` from the
model's config) and hands this Python worker a list of requests per call; each request is
a dict of form fields, so the image arrives as ``row["file"]`` (or ``data``/``body``).
The repository root and the variant come from the model config that
``bench/peers/torchserve_peer.py`` writes, so ``app.*`` is importable in the worker.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def _preprocess(data: bytes, size: int, fraction: float, mean: float, std: float) -> torch.Tensor:
    """Decode, central-crop ``fraction`` of each side, bilinear resize, normalise to CHW."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    left, top = int((w - w * fraction) / 2), int((h - h * fraction) / 2)
    img = img.crop((left, top, w - left, h - top)).resize((size, size), Image.Resampling.BILINEAR)
    x = (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std
    return torch.from_numpy(x).permute(2, 0, 1).contiguous()


def _payload(row: dict[str, Any]) -> bytes:
    for key in ("file", "data", "body"):
        value = row.get(key)
        if value is not None:
            return bytes(value)
    raise ValueError(f"no image in request fields {sorted(row)}")


class MobileNetHandler:
    """Loads the variant once per worker; ``handle`` runs one TorchServe batch."""

    def initialize(self, context: Any) -> None:
        config = context.model_yaml_config["bench"]
        sys.path.insert(0, config["repo"])
        from app.weights import SPECS_BY_NAME, imagenet_labels
        from app.weights.store import load_model

        torch.set_num_threads(int(config.get("threads") or os.cpu_count() or 1))
        spec = SPECS_BY_NAME[config["variant"]]
        self.variant = spec.name
        self.pre = spec.preprocessing
        self.model = load_model(Path(config["weights_dir"]), spec).eval()
        self.labels = imagenet_labels()

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        p = self.pre
        x = torch.stack(
            [
                _preprocess(_payload(row), p.size, p.crop_fraction, p.mean[0], p.std[0])
                for row in data
            ]
        )
        with torch.inference_mode():
            top = torch.topk(torch.softmax(self.model(x), dim=1), 5)
        return [
            {
                "variant": self.variant,
                "predictions": [
                    {"index": i, "label": self.labels[i], "score": s}
                    for s, i in zip(scores, indices, strict=True)
                ],
            }
            for scores, indices in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ]
