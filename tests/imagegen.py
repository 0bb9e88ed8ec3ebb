"""Image bytes for every odd and hostile upload, shared by the imaging and HTTP tests.

Plain functions (no pytest), deterministic, each fast. Valid generators draw known colours
so a test can check the decoded pixels, not just that decoding did not fail:
halves are ``left | right`` unless a docstring says otherwise.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from app.errors import CorruptImage, ImageTooLarge, ServiceError, UnsupportedMediaType

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255,) * 3, (0,) * 3


def shared_images_dir() -> Path:
    """Real photos: ``$MOBILENET_SHARED_DIR/images``, else ``<repo>/../shared/images``."""
    shared = os.environ.get("MOBILENET_SHARED_DIR")
    base = Path(shared) if shared else Path(__file__).resolve().parents[1].parent / "shared"
    return base / "images"


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def halves(
    left: tuple[int, ...],
    right: tuple[int, ...],
    mode: str = "RGB",
    size: tuple[int, int] = (32, 16),
) -> Image.Image:
    """``size`` image whose left half is ``left`` and right half ``right``."""
    img = Image.new(mode, size, left)
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return img


def photo_like(size: tuple[int, int] = (640, 480), seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: compresses and decodes like a photo."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = np.random.default_rng(seed).normal(0, 12, (h, w, 3))
    rgb = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], axis=-1) + noise
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


# --- every colour mode ------------------------------------------------------------------
def png_mode_1() -> bytes:
    """Bilevel: black | white."""
    return encode(halves((0,), (1,), "1"), "PNG")


def png_mode_l() -> bytes:
    """Grey 100 everywhere."""
    return encode(Image.new("L", (32, 16), 100), "PNG")


def png_mode_la() -> bytes:
    """Black, transparent | opaque: decodes white | black."""
    return encode(halves((0, 0), (0, 255), "LA"), "PNG")


def png_mode_p() -> bytes:
    """Palette: red | green."""
    return encode(halves(RED, GREEN).quantize(colors=4), "PNG")


def png_mode_p_transparent() -> bytes:
    """Palette with a transparent index: transparent (decodes white) | blue."""
    img = halves((0,), (1,), "P")
    img.putpalette([*RED, *BLUE])
    return encode(img, "PNG", transparency=0)


def gif_mode_p_transparent() -> bytes:
    """GIF with a transparent colour: transparent (decodes white) | blue."""
    img = halves((0,), (1,), "P")
    img.putpalette([*RED, *BLUE])
    return encode(img, "GIF", transparency=0)


def png_rgba() -> bytes:
    """Red at alpha 0 | red at alpha 255, with a middle band at alpha 128."""
    img = halves((255, 0, 0, 0), (255, 0, 0, 255), "RGBA")
    img.paste((255, 0, 0, 128), (12, 0, 16, 16))
    return encode(img, "PNG")


def jpeg_cmyk() -> bytes:
    """CMYK JPEG (as print workflows produce): cyan | yellow."""
    return encode(halves((255, 0, 0, 0), (0, 0, 255, 0), "CMYK"), "JPEG", quality=95)


def tiff_cmyk() -> bytes:
    """CMYK TIFF: red | blue."""
    return encode(halves((0, 255, 255, 0), (255, 255, 0, 0), "CMYK"), "TIFF")


def tiff_ycbcr() -> bytes:
    """YCbCr TIFF: red | blue."""
    return encode(halves(RED, BLUE).convert("YCbCr"), "TIFF")


def png_16bit(left: int = 0x8000, right: int = 0xFFFF) -> bytes:
    """16-bit grey PNG (mode I;16): 0x8000 must become ~128, 0xFFFF 255, not saturate."""
    a = np.full((16, 32), left, np.uint16)
    a[:, 16:] = right
    return encode(Image.fromarray(a), "PNG")


def png_16bit_ramp() -> bytes:
    """16-bit grey ramp 0..65535 over 256 columns: column i decodes to ~i."""
    a = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (4, 1))
    return encode(Image.fromarray(a), "PNG")


def tiff_16bit_big_endian() -> bytes:
    """Mode I;16B TIFF: 0x8000 | 0x4000, decodes ~128 | ~64."""
    a = np.full((16, 32), 0x8000, ">u2")
    a[:, 16:] = 0x4000
    img = Image.frombytes("I;16B", (32, 16), a.tobytes())
    return encode(img, "TIFF")


def tiff_mode_i() -> bytes:
    """32-bit int TIFF holding 16-bit data: 0 | 40000, decodes 0 | ~156."""
    return encode(halves((0,), (40000,), "I"), "TIFF")


def tiff_mode_f() -> bytes:
    """32-bit float TIFF in 0..1: 0.25 | 1.0, decodes ~64 | 255."""
    return encode(halves((0.25,), (1.0,), "F"), "TIFF")


# --- odd but valid ----------------------------------------------------------------------
def jpeg_exif_rotated(orientation: int) -> bytes:
    """40x20 stored red | blue, EXIF orientation 6 (turn clockwise) or 8 (anticlockwise).

    Upright it is 20x40: red on top for 6, blue on top for 8.
    """
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(halves(RED, BLUE, size=(40, 20)), "JPEG", quality=95, exif=exif)


def jpeg_progressive() -> bytes:
    return encode(photo_like((320, 240)), "JPEG", quality=90, progressive=True)


def png_1x1() -> bytes:
    return encode(Image.new("RGB", (1, 1), GREEN), "PNG")


def jpeg_4000x20() -> bytes:
    """Very wide: red | blue."""
    return encode(halves(RED, BLUE, size=(4000, 20)), "JPEG", quality=95)


def _frames(*colours: tuple[int, int, int], size: tuple[int, int] = (32, 16)) -> list[Image.Image]:
    return [Image.new("RGB", size, c) for c in colours]


def gif_animated() -> bytes:
    """Three frames red, green, blue: the first (red) must win."""
    first, *rest = _frames(RED, GREEN, BLUE)
    return encode(first, "GIF", save_all=True, append_images=rest, duration=100, loop=0)


def webp_animated() -> bytes:
    """Three frames red, green, blue: the first (red) must win."""
    first, *rest = _frames(RED, GREEN, BLUE)
    return encode(first, "WEBP", save_all=True, append_images=rest, duration=100, lossless=True)


def tiff_multipage() -> bytes:
    """Pages red, green, blue: the first (red) must win."""
    first, *rest = _frames(RED, GREEN, BLUE)
    return encode(first, "TIFF", save_all=True, append_images=rest)


def mpo() -> bytes:
    """Multi-picture JPEG (stereo cameras), frames red, green: JPEG magic, red wins."""
    first, *rest = _frames(RED, GREEN)
    return encode(first, "MPO", save_all=True, append_images=rest, quality=95)


def webp() -> bytes:
    return encode(halves(RED, BLUE), "WEBP", lossless=True)


def webp_lossy() -> bytes:
    return encode(photo_like((160, 120)), "WEBP", quality=80)


def tiff() -> bytes:
    return encode(halves(RED, BLUE), "TIFF", compression="tiff_deflate")


def bmp() -> bytes:
    return encode(halves(RED, BLUE), "BMP")


def jpeg_photo(size: tuple[int, int] = (640, 480)) -> bytes:
    return encode(photo_like(size), "JPEG", quality=90)


# --- hostile ----------------------------------------------------------------------------
def empty() -> bytes:
    return b""


def random_bytes(n: int = 4096, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def text() -> bytes:
    return b"This is not an image, it is a plain text file.\n" * 20


def html() -> bytes:
    return b"<!DOCTYPE html>\n<html><body><img src='cat.jpg'></body></html>\n"


def svg() -> bytes:
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg"'
        b' width="100" height="100"><rect width="100" height="100" fill="red"/></svg>\n'
    )


def pdf() -> bytes:
    return (
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n"
        b"%%EOF\n"
    )


def zip_archive() -> bytes:
    """A ZIP holding a real PNG: still not an image upload."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("cat.png", png_1x1())
    return buf.getvalue()


def jpeg_truncated() -> bytes:
    """A real JPEG cut in half."""
    data = jpeg_photo()
    return data[: len(data) // 2]


def png_corrupt_crc() -> bytes:
    """A PNG with one byte of its compressed image data flipped."""
    data = bytearray(encode(photo_like((64, 48)), "PNG"))
    data[data.index(b"IDAT") + 40] ^= 0xFF
    return bytes(data)


def gif_header_only() -> bytes:
    return b"GIF89a\x10\x00\x10\x00"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.cache
def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A genuine 1-bit PNG of zeros, streamed through zlib (~110 KB for 30000x30000)."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer, idat = zlib.compressobj(9), []
    for start in range(0, height, 1000):
        idat.append(packer.compress(row * min(1000, height - start)))
    idat.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(idat))
        + _png_chunk(b"IEND", b"")
    )


def png_over_limit() -> bytes:
    """8000x6000 = 48 MP: under Pillow's own bomb guard, over the service's 40 MP limit."""
    return png_bomb(8000, 6000)


def jpeg_sof_bomb(width: int = 65000, height: int = 65000) -> bytes:
    """A small real JPEG whose SOF header is patched to claim ``width`` x ``height``."""
    data = bytearray(encode(photo_like((16, 16)), "JPEG"))
    pos = 2
    while data[pos] == 0xFF:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        pos += 2 + length
    raise AssertionError("no SOF marker found")


def gif_screen_bomb() -> bytes:
    """A real GIF whose logical screen is patched to claim 65535x65535."""
    data = bytearray(gif_animated())
    data[6:10] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def webp_canvas_bomb() -> bytes:
    """An animated WebP whose VP8X canvas claims 16000x16000 (the decoder would allocate it)."""
    data = bytearray(webp_animated())
    assert data[12:16] == b"VP8X"
    data[24:30] = (16000 - 1).to_bytes(3, "little") * 2
    return bytes(data)


# name -> generator and the error it must raise
HOSTILE: dict[str, tuple[Callable[[], bytes], type[ServiceError]]] = {
    "empty": (empty, UnsupportedMediaType),
    "random": (random_bytes, UnsupportedMediaType),
    "text": (text, UnsupportedMediaType),
    "html": (html, UnsupportedMediaType),
    "svg": (svg, UnsupportedMediaType),
    "pdf": (pdf, UnsupportedMediaType),
    "zip": (zip_archive, UnsupportedMediaType),
    "jpeg_truncated": (jpeg_truncated, CorruptImage),
    "png_corrupt_crc": (png_corrupt_crc, CorruptImage),
    "gif_header_only": (gif_header_only, CorruptImage),
    "png_bomb": (png_bomb, ImageTooLarge),
    "png_over_limit": (png_over_limit, ImageTooLarge),
    "jpeg_sof_bomb": (jpeg_sof_bomb, ImageTooLarge),
    "gif_screen_bomb": (gif_screen_bomb, ImageTooLarge),
    "webp_canvas_bomb": (webp_canvas_bomb, ImageTooLarge),
}

# name -> generator and the upright (width, height) it must decode to
VALID: dict[str, tuple[Callable[[], bytes], tuple[int, int]]] = {
    "png_mode_1": (png_mode_1, (32, 16)),
    "png_mode_l": (png_mode_l, (32, 16)),
    "png_mode_la": (png_mode_la, (32, 16)),
    "png_mode_p": (png_mode_p, (32, 16)),
    "png_mode_p_transparent": (png_mode_p_transparent, (32, 16)),
    "gif_mode_p_transparent": (gif_mode_p_transparent, (32, 16)),
    "png_rgba": (png_rgba, (32, 16)),
    "jpeg_cmyk": (jpeg_cmyk, (32, 16)),
    "tiff_cmyk": (tiff_cmyk, (32, 16)),
    "tiff_ycbcr": (tiff_ycbcr, (32, 16)),
    "png_16bit": (png_16bit, (32, 16)),
    "png_16bit_ramp": (png_16bit_ramp, (256, 4)),
    "tiff_16bit_big_endian": (tiff_16bit_big_endian, (32, 16)),
    "tiff_mode_i": (tiff_mode_i, (32, 16)),
    "tiff_mode_f": (tiff_mode_f, (32, 16)),
    "jpeg_exif_6": (lambda: jpeg_exif_rotated(6), (20, 40)),
    "jpeg_exif_8": (lambda: jpeg_exif_rotated(8), (20, 40)),
    "jpeg_progressive": (jpeg_progressive, (320, 240)),
    "png_1x1": (png_1x1, (1, 1)),
    "jpeg_4000x20": (jpeg_4000x20, (4000, 20)),
    "gif_animated": (gif_animated, (32, 16)),
    "webp_animated": (webp_animated, (32, 16)),
    "tiff_multipage": (tiff_multipage, (32, 16)),
    "mpo": (mpo, (32, 16)),
    "webp": (webp, (32, 16)),
    "webp_lossy": (webp_lossy, (160, 120)),
    "tiff": (tiff, (32, 16)),
    "bmp": (bmp, (32, 16)),
    "jpeg_photo": (jpeg_photo, (640, 480)),
}
