"""Decoding untrusted uploads and the three preprocessing recipes (numpy + Pillow only)."""

from __future__ import annotations

import io
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageFile

import app.imaging.preprocess as preprocess_module
from app.errors import ImageTooLarge, UnsupportedMediaType
from app.imaging import (
    ACCEPTED_FORMATS,
    Preprocessing,
    decode_image,
    draft_size,
    prepare,
    preprocess_image,
    sniff_format,
    tf_preprocessing,
    torchvision_preprocessing,
)

try:
    from tests import imagegen as gen
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    import imagegen as gen

MAX_PIXELS = 40_000_000
RED, GREEN, BLUE, WHITE, BLACK = gen.RED, gen.GREEN, gen.BLUE, gen.WHITE, gen.BLACK


def decode(data: bytes, **kwargs: object) -> Image.Image:
    return decode_image(data, max_pixels=MAX_PIXELS, **kwargs)


def rgb_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


# --- sniffing -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "fmt"),
    [
        (gen.jpeg_photo, "JPEG"),
        (gen.mpo, "JPEG"),
        (gen.png_1x1, "PNG"),
        (gen.gif_animated, "GIF"),
        (gen.webp, "WEBP"),
        (gen.tiff, "TIFF"),
        (gen.bmp, "BMP"),
    ],
)
def test_sniff_accepted_formats(make, fmt):
    assert sniff_format(make()) == fmt
    assert fmt in ACCEPTED_FORMATS


@pytest.mark.parametrize(
    ("make", "named"),
    [(gen.pdf, "'PDF'"), (gen.svg, "'SVG'"), (gen.zip_archive, "'ZIP'"), (gen.html, "'HTML'")],
)
def test_sniff_names_what_was_sent_and_what_is_allowed(make, named):
    with pytest.raises(UnsupportedMediaType) as info:
        sniff_format(make())
    assert f"unsupported format {named}" in info.value.message
    assert "accepted: JPEG, PNG, WebP, BMP, GIF, TIFF" in info.value.message
    assert info.value.details["accepted"] == list(ACCEPTED_FORMATS)


def test_text_starting_with_bmp_magic_is_not_a_bmp():
    with pytest.raises(UnsupportedMediaType):
        sniff_format(b"BMW owners club newsletter, issue 12: spring rally " * 4)


def test_module_needs_neither_torch_nor_fastapi():
    code = "import sys, app.imaging; print(sorted({'torch', 'fastapi'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_pillow_global_flags_left_alone():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- odd but valid uploads ---------------------------------------------------------------
# name -> [((x, y), rgb)] in the upright image; JPEG-coded ones within the tolerance
PIXELS: dict[str, list[tuple[tuple[int, int], tuple[int, int, int]]]] = {
    "png_mode_1": [((0, 0), BLACK), ((31, 15), WHITE)],
    "png_mode_l": [((5, 5), (100, 100, 100))],
    "png_mode_la": [((0, 0), WHITE), ((31, 0), BLACK)],  # transparent -> white, not black
    "png_mode_p": [((0, 0), RED), ((31, 0), GREEN)],
    "png_mode_p_transparent": [((0, 0), WHITE), ((31, 0), BLUE)],
    "gif_mode_p_transparent": [((0, 0), WHITE), ((31, 0), BLUE)],
    "png_rgba": [((0, 0), WHITE), ((31, 0), RED), ((13, 8), (255, 127, 127))],
    "jpeg_cmyk": [((2, 8), (0, 255, 255)), ((29, 8), (255, 255, 0))],
    "tiff_cmyk": [((0, 0), RED), ((31, 0), BLUE)],
    "tiff_ycbcr": [((0, 0), RED), ((31, 0), BLUE)],
    "png_16bit": [((0, 0), (128, 128, 128)), ((31, 0), WHITE)],
    "tiff_16bit_big_endian": [((0, 0), (128, 128, 128)), ((31, 0), (64, 64, 64))],
    "tiff_mode_i": [((0, 0), BLACK), ((31, 0), (156, 156, 156))],
    "tiff_mode_f": [((0, 0), (64, 64, 64)), ((31, 0), WHITE)],
    "jpeg_exif_6": [((10, 5), RED), ((10, 34), BLUE)],  # turned clockwise: left -> top
    "jpeg_exif_8": [((10, 5), BLUE), ((10, 34), RED)],  # anticlockwise: right -> top
    "png_1x1": [((0, 0), GREEN)],
    "jpeg_4000x20": [((10, 10), RED), ((3990, 10), BLUE)],
    "gif_animated": [((16, 8), RED)],  # first frame wins
    "webp_animated": [((16, 8), RED)],
    "tiff_multipage": [((16, 8), RED)],
    "mpo": [((16, 8), RED)],
    "webp": [((0, 0), RED), ((31, 0), BLUE)],
    "tiff": [((0, 0), RED), ((31, 0), BLUE)],
    "bmp": [((0, 0), RED), ((31, 0), BLUE)],
}
SAME_AS_PILLOW = ["jpeg_progressive", "webp_lossy", "jpeg_photo", "png_16bit_ramp"]


def test_every_valid_case_has_a_pixel_check():
    assert set(gen.VALID) == set(PIXELS) | set(SAME_AS_PILLOW)


@pytest.mark.parametrize("name", sorted(gen.VALID))
def test_valid_upload_decodes_to_upright_rgb(name):
    make, size = gen.VALID[name]
    img = decode(make())
    assert img.mode == "RGB"
    assert img.size == size
    for (x, y), expected in PIXELS.get(name, []):
        got = img.getpixel((x, y))
        assert np.abs(np.subtract(got, expected)).max() <= 6, (name, (x, y), got, expected)


@pytest.mark.parametrize("name", ["jpeg_progressive", "webp_lossy", "jpeg_photo"])
def test_photos_decode_exactly_like_pillow(name):
    data = gen.VALID[name][0]()
    assert np.array_equal(np.asarray(decode(data)), np.asarray(Image.open(io.BytesIO(data))))


def test_16bit_png_is_scaled_not_clipped():
    ramp = rgb_array(decode(gen.png_16bit_ramp()))[0, :, 0]  # column i holds ~i * 257
    assert np.abs(ramp - np.arange(256)).max() <= 1
    assert np.all(np.diff(ramp) >= 0)


# --- hostile uploads -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(gen.HOSTILE))
def test_hostile_upload_is_refused_quickly_with_the_right_error(name):
    make, error = gen.HOSTILE[name]
    data = make()
    start = time.perf_counter()
    with pytest.raises(error) as info:
        decode(data)
    assert time.perf_counter() - start < 1.0
    assert type(info.value) is error
    if error is ImageTooLarge:
        assert "the limit is 40.0 MP" in info.value.message
    elif error is UnsupportedMediaType:
        assert "accepted: JPEG, PNG, WebP, BMP, GIF, TIFF" in info.value.message


def test_bomb_messages_give_the_claimed_size():
    for data, claimed in [
        (gen.png_bomb(), "30000x30000 = 900.0 MP"),
        (gen.jpeg_sof_bomb(), "65000x65000 = 4225.0 MP"),
    ]:
        with pytest.raises(ImageTooLarge) as info:
            decode(data)
        assert info.value.message == f"image is {claimed}; the limit is 40.0 MP"


@pytest.mark.parametrize(
    "make", [gen.png_bomb, gen.jpeg_sof_bomb, gen.gif_screen_bomb, gen.webp_canvas_bomb]
)
def test_bomb_is_refused_without_allocating(make):
    data = make()
    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge):
            decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000  # Python-side bytes
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_rss_kib
    assert grown_kib < 100_000  # decoding 30000x30000 even at 1 byte/pixel would be 900 MB


def test_pixel_limit_does_not_rely_on_pillows_global(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own guard off
    with pytest.raises(ImageTooLarge):
        decode(gen.png_bomb())
    with pytest.raises(ImageTooLarge):
        decode(gen.png_over_limit())


def test_pixel_limit_is_inclusive():
    data = gen.png_bomb(1000, 1000)
    assert decode_image(data, max_pixels=1_000_000).size == (1000, 1000)
    with pytest.raises(ImageTooLarge, match=r"image is 1000x1000 = 1\.0 MP; the limit is 1\.0 MP"):
        decode_image(data, max_pixels=999_999)


# --- recipes -------------------------------------------------------------------------------
def coordinate_image(w: int, h: int) -> Image.Image:
    """R = x, G = y (mod 256): a crop's offsets can be read off its pixels."""
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x % 256, y % 256, x * 0], -1).astype(np.uint8))


def bordered(w: int, h: int, border: int) -> Image.Image:
    img = Image.new("RGB", (w, h), RED)
    img.paste(BLUE, (border, border, w - border, h - border))
    return img


RECIPES = [
    tf_preprocessing(224),
    torchvision_preprocessing(),
    Preprocessing(size=224, crop="none"),
    Preprocessing(size=160, crop="central_fraction", interpolation="bicubic"),
    Preprocessing(size=96, crop="resize_center_crop", resize_size=110, interpolation="lanczos"),
    Preprocessing(size=128, crop="none", interpolation="nearest"),
]


@pytest.mark.parametrize("pre", RECIPES, ids=lambda p: f"{p.crop}-{p.size}-{p.interpolation}")
@pytest.mark.parametrize("name", ["png_1x1", "jpeg_4000x20", "jpeg_exif_6", "jpeg_photo"])
def test_recipes_give_contiguous_uint8_of_the_right_shape(pre, name):
    out = prepare(gen.VALID[name][0](), pre, max_pixels=MAX_PIXELS)
    assert out.shape == (pre.size, pre.size, 3)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous and out.flags.writeable


def test_central_fraction_matches_tf_central_crop_offsets():
    # 256 * 0.875 = 224: TF keeps rows/cols 16..239, so nearest 224 is an exact crop.
    pre = Preprocessing(size=224, crop="central_fraction", interpolation="nearest")
    out = preprocess_image(coordinate_image(256, 256), pre)
    assert np.array_equal(out[..., 0], np.broadcast_to(np.arange(16, 240), (224, 224)))
    assert np.array_equal(out[..., 1], np.broadcast_to(np.arange(16, 240)[:, None], (224, 224)))


def test_central_fraction_removes_the_border_that_none_keeps():
    img = bordered(320, 240, 12)  # TF crops int((320 - 280) / 2) = 20 and 15 px
    cropped = preprocess_image(img, tf_preprocessing(224)).astype(np.int16)
    assert np.abs(cropped - BLUE).max() == 0
    whole = preprocess_image(img, Preprocessing(size=224, crop="none"))
    assert tuple(whole[0, 0]) == RED and tuple(whole[112, 112]) == BLUE


def test_resize_center_crop_matches_resize_then_crop():
    pre = torchvision_preprocessing()
    for w, h in [(512, 300), (300, 512), (257, 999), (1280, 720), (223, 223)]:
        img = coordinate_image(w, h)
        rw, rh = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
        left, top = round((rw - 224) / 2.0), round((rh - 224) / 2.0)  # Python round, as torchvision
        full = np.asarray(img.resize((rw, rh), Image.Resampling.BILINEAR), dtype=np.int16)
        expected = full[top : top + 224, left : left + 224]
        assert np.abs(preprocess_image(img, pre) - expected).max() <= 1, (w, h)


def test_resize_center_crop_matches_torchvision():
    tf = pytest.importorskip("torchvision.transforms.functional")
    pre = torchvision_preprocessing()
    for w, h in [(640, 480), (333, 517), (1000, 257)]:
        img = gen.photo_like((w, h))
        expected = np.asarray(tf.center_crop(tf.resize(img, 256), 224), dtype=np.int16)
        assert np.abs(preprocess_image(img, pre) - expected).max() <= 1, (w, h)


def test_very_wide_image_through_resize_center_crop_keeps_the_middle():
    out = prepare(gen.jpeg_4000x20(), torchvision_preprocessing(), max_pixels=MAX_PIXELS)
    # 4000x20 -> 51200x256; the middle 224 columns straddle the red | blue boundary
    assert np.abs(out[:, 5].astype(int) - RED).max() <= 8
    assert np.abs(out[:, -5].astype(int) - BLUE).max() <= 8


def test_resize_smaller_than_crop_is_zero_padded_like_torchvision():
    pre = Preprocessing(size=224, crop="resize_center_crop", resize_size=200)
    out = preprocess_image(Image.new("RGB", (300, 200), WHITE), pre)
    assert (out[:12] == 0).all() and (out[212:] == 0).all() and (out[12:212] == 255).all()


def test_non_rgb_input_is_converted():
    out = preprocess_image(Image.new("L", (50, 40), 77), tf_preprocessing(32))
    assert (out == 77).all()


# --- JPEG draft -----------------------------------------------------------------------------
def test_draft_size_per_recipe():
    assert draft_size(tf_preprocessing(224)) == (256, 256)
    assert draft_size(tf_preprocessing(192)) == (220, 220)  # ceil(219.43)
    assert draft_size(torchvision_preprocessing()) == (256, 256)
    assert draft_size(Preprocessing(size=128, crop="none")) == (128, 128)


def test_draft_only_reduces_jpeg_and_never_below_the_request():
    data = gen.jpeg_photo((1024, 768))
    assert decode(data, draft_to=(256, 256)).size == (512, 384)  # 1/4 would make 192 < 256
    assert decode(data, draft_to=(128, 96)).size == (128, 96)  # 1/8
    assert decode(gen.png_bomb(1000, 1000), draft_to=(100, 100)).size == (1000, 1000)


def test_draft_request_is_in_upright_orientation():
    img = gen.photo_like((800, 400))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = gen.encode(img, "JPEG", exif=exif)  # stored 800x400, upright 400x800
    assert decode(data, draft_to=(100, 200)).size == (100, 200)  # 1/4, not 1/2


def test_prepare_drafts_cat_720p_and_stays_close_to_full_decode(monkeypatch, images_dir):
    data, pre = (images_dir / "cat_720p.jpg").read_bytes(), tf_preprocessing(224)
    sizes: list[tuple[int, int]] = []

    def spy(*args, **kwargs):
        img = decode_image(*args, **kwargs)
        sizes.append(img.size)
        return img

    monkeypatch.setattr(preprocess_module, "decode_image", spy)
    drafted = prepare(data, pre, max_pixels=MAX_PIXELS)
    assert sizes == [(640, 360)]  # 1280x720 at 1/2: the smallest with both sides >= 256
    full = preprocess_image(decode_image(data, max_pixels=MAX_PIXELS), pre)
    assert np.abs(drafted.astype(np.int16) - full).mean() < 3


def test_print_prepare_timing(capsys, images_dir):
    data, pre = (images_dir / "cat_720p.jpg").read_bytes(), tf_preprocessing(224)

    def median_ms(fn) -> float:
        times = []
        for _ in range(50):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    drafted = median_ms(lambda: prepare(data, pre, max_pixels=MAX_PIXELS))
    full = median_ms(lambda: preprocess_image(decode_image(data, max_pixels=MAX_PIXELS), pre))
    with capsys.disabled():
        print(
            f"\nprepare(cat_720p.jpg, 224 central_fraction): drafted {drafted:.2f} ms, "
            f"full-size decode {full:.2f} ms (median of 50)"
        )
