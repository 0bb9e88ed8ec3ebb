"""How an image becomes a model input: the geometric recipe of each variant.

Preprocessing here stops at a uint8 ``(size, size, 3)`` array. Normalisation (mean/std)
is applied by the inference backend to the whole batch in one vectorised op, and the
NHWC stack it builds is already ``channels_last`` for the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from app.imaging.decode import decode_image

Crop = Literal["central_fraction", "resize_center_crop", "none"]
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """One variant's input recipe.

    * ``central_fraction``: TF-slim's evaluation recipe: keep the central ``crop_fraction``
      of each side, then resize (aspect not kept) to ``size`` x ``size``.
    * ``resize_center_crop``: torchvision's: resize the shorter side to ``resize_size``,
      then take the central ``size`` x ``size``.
    * ``none``: resize the whole image to ``size`` x ``size`` (pycoral's convention).

    ``mean``/``std`` are per channel in [0, 1] pixel units: ``x = (p / 255 - mean) / std``.
    """

    size: int
    crop: Crop
    crop_fraction: float = 0.875
    resize_size: int | None = None
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


def tf_preprocessing(
    size: int,
    *,
    input_scale: float = 1 / 128,
    input_zero_point: int = 128,
    crop: Crop = "central_fraction",
) -> Preprocessing:
    """The recipe of a TF Lite release: float input ``(p - zero_point) * scale``."""
    mean = input_zero_point / 255.0
    std = 1.0 / (input_scale * 255.0)
    return Preprocessing(
        size=size,
        crop=crop,
        crop_fraction=0.875,
        interpolation="bilinear",
        mean=(mean, mean, mean),
        std=(std, std, std),
    )


def torchvision_preprocessing(size: int = 224, *, resize_size: int = 256) -> Preprocessing:
    """torchvision's ImageNet recipe: resize 256, center crop 224, ImageNet mean/std."""
    return Preprocessing(
        size=size,
        crop="resize_center_crop",
        resize_size=resize_size,
        interpolation="bilinear",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )


_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def draft_size(pre: Preprocessing) -> tuple[int, int]:
    """Smallest decode size that loses nothing: the recipe never samples finer than this."""
    if pre.crop == "central_fraction":
        side = math.ceil(pre.size / min(pre.crop_fraction, 1.0))
    elif pre.crop == "resize_center_crop":
        side = pre.resize_size or pre.size
    else:
        side = pre.size
    return side, side


def preprocess_image(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """Apply the recipe's crop + resize in one resampling pass; uint8 ``(size, size, 3)``."""
    size, resample = pre.size, _FILTERS[pre.interpolation]
    img = img if img.mode == "RGB" else img.convert("RGB")
    w, h = img.size
    if pre.crop == "central_fraction":  # tf.image.central_crop's box, then resize
        fraction = min(pre.crop_fraction, 1.0)
        left, top = int((w - w * fraction) / 2), int((h - h * fraction) / 2)
        out = img.resize((size, size), resample, box=(left, top, w - left, h - top))
    elif pre.crop == "resize_center_crop":
        out = _resize_center_crop(img, size, pre.resize_size or size, resample)
    else:
        out = img.resize((size, size), resample)
    return np.array(out, dtype=np.uint8)  # a writable copy, C-contiguous HWC


def _resize_center_crop(
    img: Image.Image, size: int, resize_size: int, resample: Image.Resampling
) -> Image.Image:
    """torchvision's ``resize(resize_size)`` + ``center_crop(size)``, same rounding.

    The crop box is mapped back to source coordinates so Pillow resamples only the kept
    region; the sample positions are exactly those of a full resize followed by a crop.
    """
    w, h = img.size
    if w <= h:
        rw, rh = resize_size, int(resize_size * h / w)
    else:
        rw, rh = int(resize_size * w / h), resize_size
    left, top = _crop_offset(rw, size), _crop_offset(rh, size)
    if left >= 0 and top >= 0:
        sx, sy = w / rw, h / rh
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return img.resize((size, size), resample, box=box)
    out = Image.new("RGB", (size, size))  # resize_size < size: zero padding, as torchvision
    out.paste(img.resize((rw, rh), resample), (-left, -top))
    return out


def _crop_offset(side: int, crop: int) -> int:
    """torchvision center_crop's offset (negative: the pad before the image)."""
    return round((side - crop) / 2.0) if side >= crop else -((crop - side) // 2)


def source_box(pre: Preprocessing, width: int, height: int) -> tuple[float, float, float, float]:
    """The region of a ``width`` x ``height`` image that the recipe turns into the model
    input, as (left, top, right, bottom) in image pixels (past the edges where the recipe
    pads), so what is computed on the input can be drawn back onto the image."""
    if pre.crop == "central_fraction":
        fraction = min(pre.crop_fraction, 1.0)
        left, top = int((width - width * fraction) / 2), int((height - height * fraction) / 2)
        return float(left), float(top), float(width - left), float(height - top)
    if pre.crop == "resize_center_crop":
        size, resize = pre.size, pre.resize_size or pre.size
        if width <= height:
            rw, rh = resize, int(resize * height / width)
        else:
            rw, rh = int(resize * width / height), resize
        sx, sy = width / rw, height / rh
        # _crop_offset is negative where the recipe pads (resize_size < size)
        left, top = _crop_offset(rw, size), _crop_offset(rh, size)
        return left * sx, top * sy, (left + size) * sx, (top + size) * sy
    return 0.0, 0.0, float(width), float(height)


def prepare(data: bytes, pre: Preprocessing, *, max_pixels: int) -> np.ndarray:
    """Upload bytes -> model-ready uint8 array, decoding JPEGs no larger than needed."""
    img = decode_image(data, max_pixels=max_pixels, draft_to=draft_size(pre))
    return preprocess_image(img, pre)
