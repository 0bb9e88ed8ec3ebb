"""Every inference backend answers like the others on the same preprocessed input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.imaging import prepare
from app.inference.select import choose_backend, create_backend
from app.weights import SPECS_BY_NAME

PHOTOS = ("cat.bmp", "bird.bmp", "grace_hopper.bmp", "hot_dog.jpg", "cat_720p.jpg")


@pytest.fixture(scope="module")
def batch_for(images_dir: Path):
    def make(spec_name: str) -> np.ndarray:
        pre = SPECS_BY_NAME[spec_name].preprocessing
        return np.stack(
            [prepare((images_dir / n).read_bytes(), pre, max_pixels=10**8) for n in PHOTOS]
        )

    return make


@pytest.mark.parametrize("variant", ["v1-0.25-128", "v3-small-1.0-224"])
def test_onnx_matches_torch(variant: str, weights_dir: Path, batch_for) -> None:
    spec = SPECS_BY_NAME[variant]
    batch = batch_for(variant)
    torch_probs = create_backend(
        spec, weights_dir=weights_dir, requested="torch", device="cpu"
    ).predict(batch)
    onnx = create_backend(spec, weights_dir=weights_dir, requested="onnx", device="cpu")
    assert (onnx.name, onnx.precision) == ("onnx", "fp32")
    onnx_probs = onnx.predict(batch)
    assert onnx_probs.shape == (len(PHOTOS), 1000)
    assert np.abs(onnx_probs - torch_probs).max() < 1e-4
    # A different batch size through the same session (dynamic batch axis).
    assert np.abs(onnx.predict(batch[:2]) - torch_probs[:2]).max() < 1e-4


@pytest.mark.parametrize("variant", ["v1-0.25-128", "v2-1.0-224", "v3-small-1.0-224"])
def test_litert_agrees_with_float_conversion(variant: str, weights_dir: Path, batch_for) -> None:
    """The int8 reference and our float conversion agree on the top-1 of these photos."""
    spec = SPECS_BY_NAME[variant]
    batch = batch_for(variant)
    litert = create_backend(spec, weights_dir=weights_dir, requested="litert", device="cpu")
    assert (litert.name, litert.precision) == ("litert", "int8")
    ref = litert.predict(batch)
    ours = create_backend(spec, weights_dir=weights_dir, requested="torch", device="cpu").predict(
        batch
    )
    assert np.allclose(ref.sum(1), 1, atol=1e-3)
    agree = [ref[i, ours[i].argmax()] == ref[i].max() for i in range(len(PHOTOS))]  # tie-aware
    assert sum(agree) >= len(PHOTOS) - (1 if variant.startswith("v3") else 0), agree


@pytest.mark.parametrize("variant", ["v1-1.0-224", "v3-small-1.0-224"])
def test_litert_interpreters_split_a_batch_without_changing_it(
    variant: str, weights_dir: Path, batch_for
) -> None:
    """Several single-threaded interpreters share a batch: same scores, same order, for
    every batch size (V1 1.0/224 is two chained graphs)."""
    spec = SPECS_BY_NAME[variant]
    batch = batch_for(variant)
    one = create_backend(spec, weights_dir=weights_dir, requested="litert", threads=1)
    three = create_backend(spec, weights_dir=weights_dir, requested="litert", threads=3)
    ref = one.predict(batch)
    assert len({int(p.argmax()) for p in ref}) > 1  # distinct photos, so order is checked
    for n in (1, 2, 3, len(PHOTOS)):
        assert np.array_equal(three.predict(batch[:n]), ref[:n]), n
    assert np.array_equal(three.predict(batch[::-1]), ref[::-1])


def test_auto_picks_litert_on_cpu_for_tf_origin_and_torch_otherwise(weights_dir: Path) -> None:
    tf = SPECS_BY_NAME["v3-small-1.0-224"]
    tv = SPECS_BY_NAME["v3-small-1.0-224-torchvision"]
    assert choose_backend(tf, requested="auto", device="cpu", weights_dir=weights_dir) == "litert"
    assert choose_backend(tf, requested="auto", device="cuda", weights_dir=weights_dir) == "torch"
    assert choose_backend(tv, requested="auto", device="cpu", weights_dir=weights_dir) == "torch"
    assert choose_backend(tf, requested="onnx", device="cpu", weights_dir=weights_dir) == "onnx"
    # Without the kept upstream file, auto falls back to the torch conversion.
    assert (
        choose_backend(tf, requested="auto", device="cpu", weights_dir=weights_dir / "nowhere")
        == "torch"
    )
