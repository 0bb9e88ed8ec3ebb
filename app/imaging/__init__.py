"""Image decoding and preprocessing: untrusted upload bytes -> uint8 model input (no torch)."""

from __future__ import annotations

from app.imaging.decode import ACCEPTED_FORMATS, decode_image, probe_jpeg, sniff_format
from app.imaging.preprocess import (
    Crop,
    Interpolation,
    Preprocessing,
    draft_size,
    prepare,
    preprocess_image,
    source_box,
    tf_preprocessing,
    torchvision_preprocessing,
)

__all__ = [
    "ACCEPTED_FORMATS",
    "Crop",
    "Interpolation",
    "Preprocessing",
    "decode_image",
    "draft_size",
    "prepare",
    "preprocess_image",
    "probe_jpeg",
    "sniff_format",
    "source_box",
    "tf_preprocessing",
    "torchvision_preprocessing",
]
