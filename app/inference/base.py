"""The interface every inference backend implements.

A backend takes a batch of preprocessed images as one uint8 NHWC array (what
``app.imaging.prepare`` makes, stacked) and returns class probabilities in the 1000-class
ImageNet space. Normalisation happens inside the backend, once per batch, on the device.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    """Runs one variant."""

    name: str  # "torch", "litert", "onnx"
    device: str  # "cpu", "cuda", "cuda:0"
    precision: str  # "fp32", "fp16", "int8"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 -> ``(N, 1000)`` float32 probabilities."""
        ...

    def warmup(self, batch_sizes: list[int]) -> None:
        """Run each batch size once so the first real request pays no start-up cost."""
        ...


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
