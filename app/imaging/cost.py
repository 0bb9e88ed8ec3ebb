"""What decoding an upload will cost, from its header alone, before any pixel is decoded.

Admission (``app.serving.admission``) and the fair decode pool (``app.batching.fair``)
weigh each request by this, so a flood of small files that decode large gets few slots
and cannot take the shared decode threads from everyone else (issue 21: a 116 KB flat
PNG decodes to 36 MP and took ~0.7-1.6 s of a core).

The unit is one ordinary request: ~4 ms of decoding, what a 720p JPEG costs here. Measured
on the 2-core reference machine (``prepare()``, v3-small recipe; docs/deploy.md):

* JPEG (draft decoding to 1/2-1/8 scale): 2.8 ms at 0.9 MP, 12 ms at 12 MP, 29 ms at 36 MP,
  38 ms at 50 MP: about 2 ms + 0.75 ms per full-size megapixel.
* PNG (no draft: every pixel is inflated and resampled): 22-44 ms per megapixel; a 36 MP
  flat PNG 0.7 s, a 36 MP photo 1.6 s. WebP, GIF and TIFF decode in full too and are
  costed the same.
* BMP has no compression to undo: ~1 ms + 5 ms per megapixel (resampling only).

A header that cannot be read costs 1: decoding will refuse it at once.
"""

from __future__ import annotations

import io

from PIL import Image

from app.imaging.decode import sniff_format, webp_size

UNIT_MS = 4.0
JPEG_BASE_MS = 2.0
JPEG_MS_PER_MP = 0.75
FULL_DECODE_MS_PER_MP = 25.0
BMP_BASE_MS = 1.0
BMP_MS_PER_MP = 5.0


def estimate_ms(fmt: str, width: int, height: int) -> float:
    """Decode + preprocess time of one image on one core of the reference machine."""
    mp = width * height / 1e6
    if fmt in ("JPEG", "MPO"):
        return JPEG_BASE_MS + JPEG_MS_PER_MP * mp
    if fmt == "BMP":
        return BMP_BASE_MS + BMP_MS_PER_MP * mp
    return FULL_DECODE_MS_PER_MP * mp


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT, JPG, DAC)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the markers to the frame header: a few steps, not Pillow's whole header."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_SOF:
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(
                data[i + 5 : i + 7], "big"
            )
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def image_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Width and height from the header; the common formats without Pillow (this runs on
    the event loop for every upload)."""
    if fmt == "PNG" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if fmt == "JPEG":
        return _jpeg_size(data)
    if fmt == "GIF" and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if fmt == "BMP" and len(data) >= 26:
        w = int.from_bytes(data[18:22], "little", signed=True)
        h = int.from_bytes(data[22:26], "little", signed=True)
        return abs(w), abs(h)
    if fmt == "WEBP":  # Pillow's WebP plugin allocates its canvas while opening
        return webp_size(data)
    with Image.open(io.BytesIO(data), formats=[fmt]) as img:
        return img.size


def decode_cost(data: bytes) -> float:
    """Ordinary requests' worth of decoding ``data`` is (>= 1); reads the header only
    (a few microseconds), never the pixels."""
    try:
        fmt = sniff_format(data)
        size = image_size(data, fmt)
    except Exception:
        return 1.0
    if size is None:
        return 1.0
    return max(1.0, estimate_ms(fmt, *size) / UNIT_MS)
