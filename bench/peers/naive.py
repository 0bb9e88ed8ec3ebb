"""The straightforward FastAPI service a user would write first: the benchmark's baseline.

Deliberately ordinary, to measure what our serving stack buys: ``UploadFile``, a full PIL
decode (no JPEG draft), the same crop + resize + normalisation as the real service, the
same architecture and weights (``app.weights.store.load_model``, BN not folded, default
memory format), and a batch-of-1 forward under ``torch.inference_mode()`` *inside the
async handler*, which blocks the event loop while the model runs (as naive code does).
torch keeps its default thread count. The preprocessing matches the TF recipe exactly so
the answers, not just the shapes, agree with ours.

    python -m bench.peers.naive --port 8001 --variant v3-small-1.0-224 --weights-dir weights
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from app.weights import SPECS_BY_NAME, imagenet_labels
from app.weights.store import load_model


def preprocess(data: bytes, size: int, fraction: float, mean: float, std: float) -> torch.Tensor:
    """Decode, central-crop ``fraction`` of each side, bilinear resize, normalise to NCHW."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    left, top = int((w - w * fraction) / 2), int((h - h * fraction) / 2)
    img = img.crop((left, top, w - left, h - top)).resize((size, size), Image.Resampling.BILINEAR)
    x = (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std
    return torch.from_numpy(x).permute(2, 0, 1).unsqueeze(0)


def create_app(variant: str, weights_dir: Path) -> FastAPI:
    """Load the model once at start-up, then serve ``POST /predict`` with one forward each."""
    spec = SPECS_BY_NAME[variant]
    pre = spec.preprocessing
    model = load_model(weights_dir, spec).eval()
    labels = imagenet_labels()
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(file: Annotated[UploadFile, File()]) -> dict[str, object]:
        x = preprocess(await file.read(), pre.size, pre.crop_fraction, pre.mean[0], pre.std[0])
        with torch.inference_mode():
            probs = torch.softmax(model(x), dim=1)[0]
        top = torch.topk(probs, 5)
        return {
            "variant": variant,
            "predictions": [
                {"index": int(i), "label": labels[int(i)], "score": float(s)}
                for s, i in zip(top.values, top.indices, strict=True)
            ],
        }

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--variant", default="v3-small-1.0-224", choices=sorted(SPECS_BY_NAME))
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    args = parser.parse_args(argv)
    app = create_app(args.variant, args.weights_dir)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
