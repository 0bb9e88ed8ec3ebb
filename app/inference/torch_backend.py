"""PyTorch backend for CPU and CUDA.

Batch norm is folded into the convolutions and the model runs in ``channels_last``: the
uint8 NHWC batch becomes an NCHW tensor with channels_last strides by a free permute,
and normalisation is one fused multiply-add per batch, on the device.

On CUDA: fp16, a persistent pinned host buffer with non-blocking copies, and one CUDA
graph per batch-size bucket (a batch is padded up to its bucket), which removes the
per-kernel launch cost that dominates small models like MobileNets. JPEG uploads can
also be decoded on the GPU (``predict_jpegs``) so the CPU never touches their pixels.
"""

from __future__ import annotations

import itertools
import logging
import threading

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from app.imaging.preprocess import Preprocessing

log = logging.getLogger(__name__)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every ``Conv2d -> BatchNorm2d`` pair of a Sequential into the conv (in place)."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for a, b in itertools.pairwise(list(module._modules)):
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


def bucket_for(n: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``n`` (batches are padded up to it)."""
    for b in buckets:
        if b >= n:
            return b
    return n


class _Graph:
    """One captured forward pass for a fixed batch size."""

    def __init__(self, fn, example: torch.Tensor) -> None:
        self.input = example.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm up cuDNN autotuning outside the capture
                fn(self.input)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn(self.input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.input[: x.shape[0]].copy_(x, non_blocking=True)
        self.graph.replay()
        return self.output[: x.shape[0]]


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
        cuda_graphs: bool = True,
        buckets: list[int] | None = None,
    ) -> None:
        self.device = device
        self.pre = pre
        self.input_size = pre.size
        self.cuda = device.startswith("cuda")
        self.half = self.cuda if half is None else half
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
        self.use_graphs = self.cuda and cuda_graphs
        self.buckets = sorted(buckets or [1, 2, 4, 8, 16, 32, 64, 128, 256])
        self._graphs: dict[int, _Graph] = {}
        self._pinned: torch.Tensor | None = None
        self._lock = threading.Lock()  # a module is not safe to run from two threads at once

    # ------------------------------------------------------------------ forward
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC on the device -> float32 probabilities on the device."""
        x = x.permute(0, 3, 1, 2).to(self.dtype)  # channels_last view, no copy
        logits = self.model(torch.addcmul(self._shift, x, self._scale))
        return torch.softmax(logits.float(), dim=1)

    def _forward_float(self, x: torch.Tensor) -> torch.Tensor:
        """float NCHW pixels (0-255) on the device -> probabilities (GPU-decoded path)."""
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        logits = self.model(torch.addcmul(self._shift, x, self._scale))
        return torch.softmax(logits.float(), dim=1)

    def _upload(self, batch: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(batch)
        if not self.cuda:
            return host
        n = host.shape[0]
        if (
            self._pinned is None
            or self._pinned.shape[0] < n
            or self._pinned.shape[1:] != host.shape[1:]
        ):
            self._pinned = torch.empty(
                (max(n, self.buckets[-1]), *host.shape[1:]), dtype=torch.uint8
            ).pin_memory()
        self._pinned[:n].copy_(host)
        return self._pinned[:n].to(self.device, non_blocking=True)

    def _graph_for(self, n: int) -> _Graph | None:
        size = bucket_for(n, self.buckets)
        if size not in self.buckets:
            return None
        graph = self._graphs.get(size)
        if graph is None:
            example = torch.zeros(
                (size, self.input_size, self.input_size, 3), dtype=torch.uint8, device=self.device
            )
            try:
                graph = _Graph(self._forward, example)
            except RuntimeError as exc:  # capture unsupported: stay eager, say so once
                log.warning("CUDA graph capture failed (%s); running eagerly", exc)
                self.use_graphs = False
                return None
            self._graphs[size] = graph
        return graph

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with self._lock, torch.inference_mode():
            x = self._upload(batch)
            graph = self._graph_for(x.shape[0]) if self.use_graphs else None
            probs = graph(x) if graph is not None else self._forward(x)
            return probs.cpu().numpy()

    def predict_jpegs(self, jpegs: list[bytes]) -> np.ndarray:
        """Decode JPEG bytes on the device (nvJPEG on CUDA), preprocess there, classify."""
        from app.inference.gpu_decode import decode_and_preprocess

        with self._lock, torch.inference_mode():
            x = decode_and_preprocess(jpegs, self.pre, device=self.device)
            return self._forward_float(x).cpu().numpy()

    def warmup(self, batch_sizes: list[int]) -> None:
        sizes = sorted(
            set(batch_sizes)
            | ({bucket_for(n, self.buckets) for n in batch_sizes} if self.use_graphs else set())
        )
        for n in sizes:
            self.predict(np.zeros((n, self.input_size, self.input_size, 3), dtype=np.uint8))
