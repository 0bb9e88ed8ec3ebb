"""Decode and preprocess a batch of JPEGs on the inference device.

On CUDA, ``torchvision.io.decode_jpeg(device="cuda")`` runs nvJPEG on the whole list at
once; crop and resize follow on the GPU with the same geometry as the CPU recipes
(``app.imaging.preprocess``). The same code runs on CPU, which is how it is tested
without a GPU. Headers are checked on the CPU first (format, pixel limit) by the caller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from app.imaging.preprocess import Preprocessing


def crop_box(width: int, height: int, pre: Preprocessing) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the region that is resized to the model input."""
    if pre.crop == "central_fraction":
        dx = int((width - width * pre.crop_fraction) / 2)
        dy = int((height - height * pre.crop_fraction) / 2)
        return dx, dy, width - dx, height - dy
    if pre.crop == "resize_center_crop":
        short = min(width, height)
        side = short * pre.size / (pre.resize_size or pre.size)  # crop in source pixels
        left = (width - side) / 2
        top = (height - side) / 2
        return round(left), round(top), round(left + side), round(top + side)
    return 0, 0, width, height


def decode_and_preprocess(jpegs: list[bytes], pre: Preprocessing, *, device: str) -> torch.Tensor:
    """JPEG bytes -> float ``(N, 3, size, size)`` pixels in 0-255 on ``device``."""
    data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    out = torch.empty((len(images), 3, pre.size, pre.size), dtype=torch.float32, device=device)
    for i, img in enumerate(images):
        _, h, w = img.shape
        left, top, right, bottom = crop_box(w, h, pre)
        region = img[:, top:bottom, left:right].unsqueeze(0).float()
        out[i] = F.interpolate(
            region, size=(pre.size, pre.size), mode="bilinear", antialias=True, align_corners=False
        )[0]
    return out.clamp_(0, 255)
