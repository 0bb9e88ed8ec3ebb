"""Choose and build the inference backend of one variant.

``auto`` policy (measured in bench/, see docs/benchmarks.md): CUDA -> torch fp16; CPU ->
the int8 LiteRT model for TF-origin variants when it is installed and the verified
upstream file is kept (it is the reference model and the fastest on CPU), else torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from app.errors import WeightsError
from app.inference import litert_backend
from app.inference.base import Backend
from app.weights import store
from app.weights.specs import VariantSpec
from app.weights.store import torch_available

BackendName = Literal["auto", "torch", "litert", "onnx"]


class TorchMissing(WeightsError):
    """A setting or variant needs torch, which is an extra (``mobilenet-serve[torch]``)."""


# Device nodes a CUDA (or ROCm) GPU shows up as: Linux, containers with the NVIDIA toolkit,
# WSL2 (/dev/dxg), ROCm (/dev/kfd).
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")


def gpu_possible() -> bool:
    """Whether this host could have a GPU torch can use, without importing torch."""
    if sys.platform != "linux":
        return True  # no cheap test: let torch say
    return any(os.path.exists(node) for node in GPU_DEVICE_NODES)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch is installed and a GPU is usable, else ``cpu``.

    On a host with no GPU device node this never imports torch, even where it is
    installed: LiteRT serving on CPU needs none (importing it only to learn that CUDA is
    absent cost a CPU replica ~550 MB of RSS)."""
    if device == "cpu" or (device == "auto" and not (gpu_possible() and torch_available())):
        return "cpu"
    if device.startswith("cuda") and not torch_available():
        raise TorchMissing(
            f"MOBILENET_DEVICE={device} runs on torch, which is not installed: "
            f"{store.TORCH_EXTRA_HINT}"
        )
    from app.inference.torch_backend import resolve_device as torch_resolve_device

    return torch_resolve_device(device)


def check_torch_needs(
    *, requested: BackendName, device: str, variants: Iterable[VariantSpec]
) -> None:
    """Fail at start-up, naming the extra, when what was asked for needs torch and torch
    is not installed: the torch or ONNX backend, CUDA, or a torchvision-origin variant."""
    if torch_available():
        return
    needs = []
    if requested in ("torch", "onnx"):
        needs.append(f"MOBILENET_BACKEND={requested}")
    if device.startswith("cuda"):
        needs.append(f"MOBILENET_DEVICE={device}")
    tv = [s.name for s in variants if s.origin != "tflite"]
    if tv:
        needs.append(f"torchvision-origin variant(s) {', '.join(tv)}")
    if needs:
        raise TorchMissing(
            f"{'; '.join(needs)} need(s) torch, which is not installed: "
            f"{store.TORCH_EXTRA_HINT} (the LiteRT backend serves the TF-origin variants "
            "on CPU without it)"
        )


def choose_backend(
    spec: VariantSpec, *, requested: BackendName, device: str, weights_dir: Path
) -> str:
    """The backend ``auto`` resolves to for this variant on this device."""
    if requested != "auto":
        return requested
    if (
        device == "cpu"
        and spec.origin == "tflite"
        and litert_backend.available()
        and store.source_paths(weights_dir, spec) is not None
    ):
        return "litert"
    return "torch"


def create_backend(
    spec: VariantSpec,
    *,
    weights_dir: Path,
    requested: BackendName = "auto",
    device: str = "auto",
    threads: int = 1,
    cuda_graphs: bool = True,
    max_batch_size: int = 256,
    exact_hard_swish: bool = True,
) -> Backend:
    """Load ``spec``'s weights into the chosen backend on the chosen device."""
    device = resolve_device(device)
    name = choose_backend(spec, requested=requested, device=device, weights_dir=weights_dir)
    if name == "litert":
        if device != "cpu":
            raise ValueError("the LiteRT backend runs on CPU only")
        paths = store.source_paths(weights_dir, spec)
        if spec.origin != "tflite" or paths is None:
            raise ValueError(f"{spec.name} has no TF Lite file for the LiteRT backend")
        # never serve tampered files (a converted file is not needed by LiteRT)
        if not store.is_current(weights_dir, spec, converted=False):
            raise WeightsError(
                f"{spec.name}: weights fail their sha256 check; re-run "
                f"`mobilenet-serve weights fetch --force {spec.name}`",
                variant=spec.name,
            )
        return litert_backend.LiteRTBackend(
            paths,
            threads=threads,
            drop_background=spec.upstream_classes == spec.num_classes + 1,
            exact_hard_swish=exact_hard_swish,
        )
    if not torch_available():
        raise TorchMissing(
            f"{spec.name} needs the {name} backend, which runs on torch; torch is not "
            f"installed: {store.TORCH_EXTRA_HINT}",
            variant=spec.name,
        )
    import torch

    torch.set_num_threads(threads)
    if name == "onnx":
        from app.inference.onnx_backend import OnnxBackend

        model = store.load_model(weights_dir, spec)
        return OnnxBackend(model, spec.preprocessing, threads=threads)
    from app.inference.torch_backend import TorchBackend

    model = store.load_model(weights_dir, spec)
    buckets = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b < max_batch_size]
    return TorchBackend(
        model,
        spec.preprocessing,
        device=device,
        cuda_graphs=cuda_graphs,
        buckets=[*buckets, max_batch_size],
    )
