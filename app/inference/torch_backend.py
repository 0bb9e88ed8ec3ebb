"""PyTorch backend for CPU and CUDA.

Batch norm is folded into the convolutions, the model runs in ``channels_last`` (the
uint8 NHWC batch becomes an NCHW tensor with channels_last strides by a free permute),
under ``torch.inference_mode``. On CUDA: fp16 where it keeps top-1 (checked at load by
the caller's golden image), pinned host memory and non-blocking copies.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from app.imaging.preprocess import Preprocessing


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every ``Conv2d -> BatchNorm2d`` pair of a Sequential into the conv (in place)."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
    return model


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("MOBILENET_DEVICE=cuda but no CUDA device is available")
    return device


class TorchBackend:
    """One torch model on one device."""

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        pre: Preprocessing,
        *,
        device: str = "cpu",
        half: bool | None = None,
        channels_last: bool = True,
    ) -> None:
        self.device = device
        self.input_size = pre.size
        cuda = device.startswith("cuda")
        self.half = cuda if half is None else half
        self.precision = "fp16" if self.half else "fp32"
        self.dtype = torch.float16 if self.half else torch.float32
        model = fold_batchnorm(model.eval())
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device=device, dtype=self.dtype, memory_format=memory_format)
        # x = (p / 255 - mean) / std  ==  p * scale + shift, one fused op per batch.
        mean = torch.tensor(pre.mean, dtype=torch.float32)
        std = torch.tensor(pre.std, dtype=torch.float32)
        self._scale = (1 / (255 * std)).view(1, 3, 1, 1).to(device, self.dtype)
        self._shift = (-mean / std).view(1, 3, 1, 1).to(device, self.dtype)
        self._pin = cuda
        self._lock = threading.Lock()  # a module is not safe to run from two threads at once

    def _to_input(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch)
        if self._pin:
            x = x.pin_memory().to(self.device, non_blocking=True)
        # NHWC -> NCHW view: its strides are exactly channels_last, no copy.
        x = x.permute(0, 3, 1, 2).to(self.dtype)
        return torch.addcmul(self._shift, x, self._scale)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with self._lock, torch.inference_mode():
            logits = self.model(self._to_input(batch))
            probs = torch.softmax(logits.float(), dim=1)
            return probs.cpu().numpy()

    def warmup(self, batch_sizes: list[int]) -> None:
        for n in batch_sizes:
            self.predict(np.zeros((n, self.input_size, self.input_size, 3), dtype=np.uint8))
