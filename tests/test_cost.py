"""What an upload weighs in admission and the decode pool (app.imaging.cost)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from app.imaging.cost import decode_cost, image_size


def _encode(size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 130, 140)).save(buf, fmt)
    return buf.getvalue()


def test_an_ordinary_photo_weighs_one(images_dir: Path) -> None:
    assert decode_cost((images_dir / "cat_720p.jpg").read_bytes()) == 1.0
    assert decode_cost((images_dir / "cat.bmp").read_bytes()) == 1.0  # uncompressed


def test_a_small_file_that_decodes_large_weighs_by_its_pixels() -> None:
    png = _encode((6000, 6000), "PNG")
    assert len(png) < 200_000  # small on the wire...
    assert decode_cost(png) == pytest.approx(225)  # ...36 MP x 25 ms / 4 ms


def test_draft_decoding_makes_large_jpegs_cheap() -> None:
    # 36 MP as JPEG: draft decoding at 1/8 scale, (2 + 0.75 * 36) / 4 ms.
    assert decode_cost(_encode((6000, 6000), "JPEG")) == pytest.approx(7.25)


def test_webp_is_sized_without_opening_it() -> None:
    webp = _encode((4000, 2000), "WEBP")
    assert decode_cost(webp) == pytest.approx(50)  # 8 MP x 25 / 4


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 8])
def test_unreadable_headers_weigh_one(data: bytes) -> None:
    assert decode_cost(data) == 1.0


def test_the_header_is_read_not_the_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    png = _encode((6000, 6000), "PNG")

    def no_pixels(self: object) -> None:
        raise AssertionError("decode_cost decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    assert decode_cost(png) == pytest.approx(225)


@pytest.mark.parametrize(
    ("fmt", "size"),
    [("JPEG", (6000, 4000)), ("PNG", (123, 4567)), ("GIF", (300, 200)), ("BMP", (512, 341))],
)
def test_header_sizes_match_pillow(fmt: str, size: tuple[int, int]) -> None:
    data = _encode(size, fmt)
    assert image_size(data, fmt) == Image.open(io.BytesIO(data)).size == size


def test_jpeg_size_past_exif_and_progressive(images_dir: Path) -> None:
    img = Image.open(images_dir / "cat_720p.jpg")
    for params in ({"exif": b"Exif\x00\x00" + b"\x00" * 40000}, {"progressive": True}):
        buf = io.BytesIO()
        img.save(buf, "JPEG", **params)
        assert image_size(buf.getvalue(), "JPEG") == img.size
