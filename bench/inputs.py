"""The benchmark's request bodies, made from ``shared/images`` at run time."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOBILENET_SHARED_DIR", REPO.parent / "shared"))
IMAGES = SHARED / "images"


@dataclass(frozen=True)
class Input:
    """One request body: the bytes, their MIME type and a file name for the form."""

    name: str
    data: bytes
    content_type: str
    filename: str
    size: tuple[int, int]

    def describe(self) -> str:
        return f"{self.filename} {self.size[0]}x{self.size[1]}, {len(self.data) / 1024:.0f} KiB"


def _encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def make_inputs(names: list[str]) -> dict[str, Input]:
    """The benchmark images: a 720p camera JPEG, a small web JPEG and a PNG screenshot-like.

    Made from ``shared/images`` at run time, deterministically, so nothing binary is kept
    in the repository and every run sends the same bytes.
    """
    if not (IMAGES / "cat.bmp").is_file() or not (IMAGES / "cat_720p.jpg").is_file():
        raise SystemExit(
            f"benchmark photos not found in {IMAGES}; set MOBILENET_SHARED_DIR to the shared/ "
            "folder (it holds images/cat.bmp and images/cat_720p.jpg)"
        )
    cat = Image.open(IMAGES / "cat.bmp").convert("RGB")
    small = cat.resize((336, 224), Image.Resampling.LANCZOS)
    makers: dict[str, Callable[[], Input]] = {
        "720p": lambda: Input(
            "720p",
            (IMAGES / "cat_720p.jpg").read_bytes(),
            "image/jpeg",
            "cat_720p.jpg",
            (1280, 720),
        ),
        "small": lambda: Input(
            "small", _encode(small, "JPEG", quality=90), "image/jpeg", "cat_small.jpg", small.size
        ),
        "png": lambda: Input("png", _encode(cat, "PNG"), "image/png", "cat.png", cat.size),
    }
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise SystemExit(f"unknown input(s) {unknown}; choose from {sorted(makers)}")
    return {n: makers[n]() for n in names}
