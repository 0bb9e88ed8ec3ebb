"""Choose and build the inference backend of one variant.

``auto`` policy (measured in bench/, see docs/benchmarks.md): CUDA -> torch fp16; CPU ->
the int8 LiteRT model for TF-origin variants when it is installed and the verified
upstream file is kept (it is the reference model and the fastest on CPU), else torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from app.errors import WeightsError
from app.inference import litert_backend
from app.inference.base import Backend
from app.inference.torch_backend import TorchBackend, resolve_device
from app.weights import store
from app.weights.specs import VariantSpec

BackendName = Literal["auto", "torch", "litert", "onnx"]


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
        if not store.is_current(weights_dir, spec):  # never serve tampered files
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
    if name == "onnx":
        from app.inference.onnx_backend import OnnxBackend

        model = store.load_model(weights_dir, spec)
        return OnnxBackend(model, spec.preprocessing, threads=threads)
    model = store.load_model(weights_dir, spec)
    buckets = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b < max_batch_size]
    return TorchBackend(
        model,
        spec.preprocessing,
        device=device,
        cuda_graphs=cuda_graphs,
        buckets=[*buckets, max_batch_size],
    )
