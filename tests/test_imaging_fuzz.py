"""Mutated real images through ``prepare``: only ServiceError subclasses, never a hang."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from app.errors import ServiceError
from app.imaging import Preprocessing, prepare, tf_preprocessing, torchvision_preprocessing

try:
    from tests import imagegen as gen
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    import imagegen as gen

# Pillow warns about some damage it survives (corrupt EXIF, truncated TIFF tags): not tested.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.timeout(120)]

MAX_PIXELS = 4_000_000
RECIPES = [
    tf_preprocessing(224),
    torchvision_preprocessing(),
    Preprocessing(size=96, crop="none", interpolation="nearest"),
]


@functools.cache
def seeds() -> list[bytes]:
    """Small real files of every accepted format, plus the shared photos when present."""
    photo = gen.photo_like((96, 64))
    out = [
        gen.encode(photo, "JPEG", quality=85),
        gen.encode(photo, "JPEG", quality=85, progressive=True),
        gen.encode(photo, "PNG"),
        gen.encode(photo.convert("P"), "PNG"),
        gen.encode(photo, "BMP"),
        gen.encode(photo.convert("P"), "GIF"),
        gen.gif_animated(),
        gen.encode(photo, "WEBP", quality=80),
        gen.encode(photo, "TIFF", compression="tiff_lzw"),
        gen.png_16bit_ramp(),
        gen.jpeg_exif_rotated(6),
    ]
    shared = gen.shared_images_dir()
    for name in ["cat_720p.jpg", "hot_dog.jpg"]:
        if (shared / name).exists():
            out.append((shared / name).read_bytes())
    if (shared / "cat.bmp").exists():  # re-encoded small so that each example stays fast
        cat = Image.open(shared / "cat.bmp").convert("RGB").resize((120, 90))
        out += [gen.encode(cat, "PNG"), gen.encode(cat, "GIF"), gen.encode(cat, "BMP")]
    return out


# Offsets favour the first bytes, where the headers an attacker would target live.
offsets = st.one_of(st.integers(0, 96), st.integers(0, 1 << 20))
mutation = st.one_of(
    st.tuples(st.just("flip"), offsets, st.integers(1, 255)),
    st.tuples(st.just("set"), offsets, st.sampled_from([0x00, 0xFF, 0x7F, 0x80])),
    st.tuples(st.just("truncate"), offsets, st.just(0)),
    st.tuples(st.just("insert"), offsets, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), offsets, st.integers(1, 64)),
)


def mutate(data: bytes, edits: list[tuple[str, int, object]]) -> bytes:
    buf = bytearray(data)
    for kind, offset, arg in edits:
        if not buf:
            break
        pos = offset % len(buf)
        if kind == "flip":
            buf[pos] ^= arg
        elif kind == "set":
            buf[pos] = arg
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = arg
        else:
            del buf[pos : pos + arg]
    return bytes(buf)


def check(data: bytes, pre: Preprocessing) -> None:
    try:
        out = prepare(data, pre, max_pixels=MAX_PIXELS)
    except ServiceError:
        return
    assert out.shape == (pre.size, pre.size, 3) and out.dtype == np.uint8


@settings(
    max_examples=150,
    deadline=2000,  # ms per example: a decode that spins fails here
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    seed=st.integers(0, 1 << 16),
    edits=st.lists(mutation, min_size=1, max_size=4),
    pre=st.sampled_from(RECIPES),
)
def test_mutated_images_raise_only_service_errors(seed, edits, pre):
    files = seeds()
    check(mutate(files[seed % len(files)], edits), pre)


@pytest.mark.parametrize("index", range(11))
def test_every_truncation_point_is_handled(index):
    data = seeds()[index]
    for cut in sorted({*range(0, min(len(data), 200)), *range(0, len(data), 97)}):
        check(data[:cut], RECIPES[0])


def test_seeds_are_valid_before_mutation():
    for data in seeds():  # so that the fuzzing starts from images that do decode
        assert prepare(data, RECIPES[0], max_pixels=MAX_PIXELS).shape == (224, 224, 3)
