"""The same model and preprocessing served by LitServe with its dynamic batching.

What a LitServe user writes, per its docs: decode in ``decode_request`` (runs in the
inference worker, one request at a time), batch forward in ``predict``, one dict per item
in ``encode_response``. Same architecture and weights as ours (``load_model``), the same
TF crop + bilinear resize + normalisation, a plain eval-mode model (no BN folding, no
channels_last: framework, not model tuning, is what this peer stands for).

Options kept: ``workers_per_device`` = one worker per core (at most 4), each with
cores/workers torch threads, and ``fast_queue=True`` (ZeroMQ instead of multiprocessing
queues). Measured on the 2-core dev machine (cat_720p.jpg, v3-small, concurrency 16, two
short runs each, so noisy): 1 worker x 2 threads 71-76 req/s (p99 254-290 ms) with
fast_queue, 68-72 without; 2 workers x 1 thread 112-117 req/s (p99 213-241 ms) with
fast_queue, 89-124 without. More workers win because LitServe decodes in the worker, one
request at a time, so a second worker decodes while the first runs the model; fast_queue
was equal or a little better. ``--workers-per-device`` and ``--no-fast-queue`` override.

    python -m bench.peers.litserve_peer --port 8002 --variant v3-small-1.0-224 --weights-dir weights
"""

import argparse
import io
import os
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import torch
from fastapi import Request
from PIL import Image

from app.weights import SPECS_BY_NAME, imagenet_labels
from app.weights.store import load_model

MAX_BATCH_SIZE = 16
BATCH_TIMEOUT_S = 0.005
MAX_DEFAULT_WORKERS = 4  # each worker is a process with its own model and API server


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def preprocess(data: bytes, size: int, fraction: float, mean: float, std: float) -> torch.Tensor:
    """Decode, central-crop ``fraction`` of each side, bilinear resize, normalise to CHW."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    left, top = int((w - w * fraction) / 2), int((h - h * fraction) / 2)
    img = img.crop((left, top, w - left, h - top)).resize((size, size), Image.Resampling.BILINEAR)
    x = (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std
    return torch.from_numpy(x).permute(2, 0, 1).contiguous()


class MobileNetAPI(ls.LitAPI):
    """One worker: loads the model in ``setup``; LitServe stacks decoded tensors per batch."""

    def __init__(self, variant: str, weights_dir: Path, threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.variant = variant
        self.weights_dir = weights_dir
        self.threads = threads

    def setup(self, device: str) -> None:
        # Each worker is its own process: split the cores so workers do not oversubscribe.
        torch.set_num_threads(self.threads)
        spec = SPECS_BY_NAME[self.variant]
        self.pre = spec.preprocessing
        self.model = load_model(self.weights_dir, spec).eval()
        self.labels = imagenet_labels()

    # No ``from __future__ import annotations`` in this module: LitServe reads this
    # annotation at run time, and only the ``Request`` class itself makes it parse the form.
    def decode_request(self, request: Request) -> torch.Tensor:
        upload = request["file"]
        data = upload.file.read() if hasattr(upload, "file") else bytes(upload)
        p = self.pre
        return preprocess(data, p.size, p.crop_fraction, p.mean[0], p.std[0])

    def predict(self, x: torch.Tensor) -> list[tuple[list[float], list[int]]]:
        with torch.inference_mode():
            top = torch.topk(torch.softmax(self.model(x), dim=1), 5)
        return list(zip(top.values.tolist(), top.indices.tolist(), strict=True))

    def encode_response(self, output: tuple[list[float], list[int]]) -> dict[str, Any]:
        scores, indices = output
        return {
            "variant": self.variant,
            "predictions": [
                {"index": i, "label": self.labels[i], "score": s}
                for s, i in zip(scores, indices, strict=True)
            ],
        }


def build_server(
    variant: str, weights_dir: Path, *, workers_per_device: int, fast_queue: bool
) -> ls.LitServer:
    threads = max(1, _cores() // workers_per_device)
    api = MobileNetAPI(
        variant,
        weights_dir,
        threads,
        max_batch_size=MAX_BATCH_SIZE,
        batch_timeout=BATCH_TIMEOUT_S,
    )
    return ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=workers_per_device,
        fast_queue=fast_queue,
        timeout=30,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--variant", default="v3-small-1.0-224", choices=sorted(SPECS_BY_NAME))
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    parser.add_argument(
        "--workers-per-device", type=int, default=min(_cores(), MAX_DEFAULT_WORKERS)
    )
    parser.add_argument("--no-fast-queue", dest="fast_queue", action="store_false")
    args = parser.parse_args(argv)
    server = build_server(
        args.variant,
        args.weights_dir.resolve(),
        workers_per_device=args.workers_per_device,
        fast_queue=args.fast_queue,
    )
    server.run(
        host=args.host,
        port=args.port,
        generate_client_file=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
