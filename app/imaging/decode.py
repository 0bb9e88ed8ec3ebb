"""Untrusted bytes -> RGB ``PIL.Image``, refusing anything unsafe before decoding pixels.

Order matters: the format is sniffed from magic bytes (so Pillow never guesses among its
~40 plugins), the pixel count is checked from the header (so a decompression bomb is
refused before any allocation), and only then are pixels decoded. Every failure leaves as
one of our ``ServiceError`` subclasses.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.errors import CorruptImage, ImageTooLarge, UnsupportedMediaType

ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
"""Pillow format names we decode. JPEG includes MPO (multi-picture JPEG from cameras)."""

_ACCEPTED_TEXT = ", ".join("WebP" if f == "WEBP" else f for f in ACCEPTED_FORMATS)
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
# Common non-accepted uploads, recognised only to say what was sent.
_KNOWN_OTHERS: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x1f\x8b", "GZIP"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"%!PS", "PostScript"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)
_FTYP_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF"}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _unsupported(what: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(
        f"unsupported format {what}; accepted: {_ACCEPTED_TEXT}",
        accepted=list(ACCEPTED_FORMATS),
    )


def sniff_format(data: bytes) -> str:
    """Name the format from magic bytes alone, so Pillow only ever parses what we accept."""
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if not data:
        raise UnsupportedMediaType(
            f"empty upload; accepted: {_ACCEPTED_TEXT}", accepted=list(ACCEPTED_FORMATS)
        )
    raise _unsupported(_describe_other(data))


def _describe_other(data: bytes) -> str:
    for magic, name in _KNOWN_OTHERS:
        if data.startswith(magic):
            return repr(name)
    if data[4:8] == b"ftyp":
        return repr(_FTYP_BRANDS.get(data[8:12], "ISO media"))
    text = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "'SVG'"
    if text.startswith((b"<!doctype html", b"<html")):
        return "'HTML'"
    if text.startswith(b"<?xml"):
        return "'XML'"
    return f"(unrecognised data starting {data[:8]!r})"


def webp_size(data: bytes) -> tuple[int, int] | None:
    """WebP's decoder allocates its canvas while opening, so its size is read here first."""
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        w, h = int.from_bytes(data[26:28], "little"), int.from_bytes(data[28:30], "little")
        return w & 0x3FFF, h & 0x3FFF
    return None


def _too_large(size: tuple[int, int] | None, max_pixels: int, pixels: int = 0) -> ImageTooLarge:
    limit = f"the limit is {max_pixels / 1e6:.1f} MP"
    if size is None:
        return ImageTooLarge(f"image has {pixels / 1e6:.1f} MP; {limit}", max_pixels=max_pixels)
    w, h = size
    return ImageTooLarge(
        f"image is {w}x{h} = {w * h / 1e6:.1f} MP; {limit}",
        width=w,
        height=h,
        max_pixels=max_pixels,
    )


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    if size[0] * size[1] > max_pixels:
        raise _too_large(size, max_pixels)


def _bomb_error(data: bytes, fmt: str, exc: Exception, max_pixels: int) -> ImageTooLarge:
    """Pillow's own guard fired first (huge header): re-read the header only, to say why."""
    try:
        return _too_large(Image.OPEN[fmt][0](io.BytesIO(data), "").size, max_pixels)
    except Exception:  # the plugin re-checks in some formats; fall back to Pillow's count
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return _too_large(None, max_pixels, int(found.group(1)) if found else 0)


def _orientation(img: Image.Image) -> int:
    """EXIF orientation; damaged EXIF in an otherwise good photo is ignored, not fatal."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) else 1


def decode_image(
    data: bytes, *, max_pixels: int, draft_to: tuple[int, int] | None = None
) -> Image.Image:
    """Decode untrusted bytes into an upright RGB image (first frame only).

    ``draft_to`` (width, height as displayed) lets a JPEG be decoded at 1/2, 1/4 or 1/8
    scale while staying at least that large: the biggest CPU saving of the service.
    Raises ``UnsupportedMediaType``, ``ImageTooLarge`` or ``CorruptImage``, nothing else.
    Pillow's own guard (2 x ``Image.MAX_IMAGE_PIXELS``, ~179 MP) stays as a backstop, so
    ``max_pixels`` above it has no effect.
    """
    fmt = sniff_format(data)
    if fmt == "WEBP" and (size := webp_size(data)) is not None:
        _check_pixels(size, max_pixels)
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
        _check_pixels(img.size, max_pixels)
        if draft_to is not None and img.format in ("JPEG", "MPO"):
            w, h = draft_to
            if w != h and _orientation(img) in (5, 6, 7, 8):
                w, h = h, w
            img.draft("RGB", (w, h))
        img.load()
        orientation = _orientation(img)
        rgb = _to_rgb(img)
        if (method := _TRANSPOSE.get(orientation)) is not None:
            rgb = rgb.transpose(method)
        return rgb
    except (ImageTooLarge, UnsupportedMediaType):
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb_error(data, fmt, exc, max_pixels) from exc
    except MemoryError as exc:
        raise ImageTooLarge(
            f"not enough memory to decode this {fmt} image; "
            f"the limit is {max_pixels / 1e6:.1f} MP when memory allows",
            max_pixels=max_pixels,
        ) from exc
    except Exception as exc:  # OSError, SyntaxError, ValueError, struct.error, EOFError...
        reason = "unreadable header" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise CorruptImage(
            f"cannot decode {fmt} image ({reason[:200]}); the file is truncated or damaged",
            format=fmt,
        ) from exc


def probe_jpeg(data: bytes, *, max_pixels: int) -> bool:
    """True for a JPEG that a device decoder (nvJPEG) can take as it is: 8-bit RGB or
    greyscale within the pixel limit. Reads the header only; raises ``ImageTooLarge``
    past the limit and returns False for anything the CPU path should handle."""
    if not data.startswith(b"\xff\xd8\xff"):
        return False
    try:
        img = Image.open(io.BytesIO(data), formats=["JPEG"])
    except Exception:
        return False  # let the CPU path produce the precise error
    _check_pixels(img.size, max_pixels)
    # nvJPEG ignores EXIF orientation and may refuse progressive scans: CPU for those.
    plain = not (img.info.get("progressive") or img.info.get("progression"))
    return img.mode in ("RGB", "L") and img.format == "JPEG" and plain and _orientation(img) == 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited over white, as viewers show it."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _ALPHA_MODES or (mode in ("1", "L", "P", "RGB") and "transparency" in img.info):
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        out = Image.new("RGB", img.size, (255, 255, 255))
        out.paste(rgba, mask=rgba)
        return out
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode)).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise UnsupportedMediaType(
            f"unsupported colour mode {mode!r}; accepted: 1, L, LA, P, PA, RGB, RGBA, CMYK, "
            "YCbCr, LAB, HSV, I;16, I, F",
            mode=mode,
        ) from exc


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth grey -> 8 bit by scaling, never clipping (Pillow's convert clips)."""
    if mode.startswith("I;16"):  # known 16-bit range: round(v / 257)
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "F" and lo >= 0.0 and hi <= 1.0:  # float images are usually 0..1
        scale, lo = 255.0, 0.0
    elif lo >= 0.0 and hi <= 255.0:
        scale, lo = 1.0, 0.0
    elif lo >= 0.0 and hi <= 65535.0 and mode == "I":  # 16-bit data stored as 32-bit
        scale, lo = 1 / 257, 0.0
    else:  # arbitrary range: stretch what is there
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((a - lo) * scale), 0, 255).astype(np.uint8)
