"""The CUDA code path: device-side JPEG decoding, mixed batches, CUDA graphs, fp16.

The decode-on-device code is the same on CPU and CUDA, so it is checked here on the CPU
against the CPU pipeline; the tests marked ``gpu`` run only where CUDA is available
(``bench/gpu_check.sh`` runs them on a GPU machine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.errors import CorruptImage, ServiceError
from app.imaging import prepare
from app.inference.gpu_decode import crop_box
from app.inference.torch_backend import TorchBackend, bucket_for
from app.serving.execution import JpegItem, make_predict_fn
from app.weights import SPECS_BY_NAME
from app.weights.store import load_model

JPEGS = ("cat_720p.jpg", "hot_dog.jpg")
CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def _jpegs(images_dir: Path) -> list[bytes]:
    names = [*JPEGS, *sorted(p.name for p in (images_dir / "imagenet-sample").glob("*.JPEG"))[:6]]
    return [
        (
            images_dir / n if (images_dir / n).exists() else images_dir / "imagenet-sample" / n
        ).read_bytes()
        for n in names
    ]


@pytest.fixture(scope="module", params=["v2-1.0-224", "v3-small-1.0-224"])
def spec_and_model(request: pytest.FixtureRequest, weights_dir: Path):
    spec = SPECS_BY_NAME[request.param]
    # A factory: backends fold BN and move the module in place, so each gets a fresh one.
    return spec, lambda: load_model(weights_dir, spec)


def _top1_agree(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def test_device_decode_agrees_with_cpu_pipeline(spec_and_model, images_dir: Path) -> None:
    spec, fresh = spec_and_model
    backend = TorchBackend(fresh(), spec.preprocessing, device="cpu")
    data = _jpegs(images_dir)
    cpu = backend.predict(
        np.stack([prepare(d, spec.preprocessing, max_pixels=10**8) for d in data])
    )
    device = backend.predict_jpegs(data)
    assert device.shape == cpu.shape == (len(data), 1000)
    assert np.allclose(device.sum(1), 1, atol=1e-4)
    # Different resamplers (PIL vs torch antialiased bilinear): top-1 should still agree.
    assert _top1_agree(device, cpu) >= 0.85, (device.argmax(1), cpu.argmax(1))
    assert device[0].argmax() in (281, 282, 285)  # cat_720p is a cat either way


def test_crop_box_matches_recipes() -> None:
    tf = SPECS_BY_NAME["v2-1.0-224"].preprocessing
    assert crop_box(1280, 720, tf) == (80, 45, 1200, 675)  # 87.5% central crop
    tv = SPECS_BY_NAME["v2-1.0-224-torchvision"].preprocessing
    left, top, right, bottom = crop_box(1280, 720, tv)
    assert bottom - top == right - left == round(720 * 224 / 256)
    assert left == round((1280 - 630) / 2)


def test_mixed_batch_isolates_a_bad_jpeg(images_dir: Path) -> None:
    """Arrays and device-decoded JPEGs share a batch; a corrupt JPEG fails alone."""

    class FakeBackend:
        def predict(self, batch: np.ndarray) -> np.ndarray:
            return np.full((len(batch), 3), 0.5, dtype=np.float32)

        def predict_jpegs(self, jpegs: list[bytes]) -> np.ndarray:
            if any(j.startswith(b"bad") for j in jpegs):
                raise RuntimeError("nvjpeg: bitstream error")
            return np.full((len(jpegs), 3), 0.25, dtype=np.float32)

    pre = SPECS_BY_NAME["v2-1.0-224"].preprocessing
    predict = make_predict_fn(FakeBackend(), pre, 10**8)
    items = [np.zeros((2, 2, 3), np.uint8), JpegItem(b"good"), JpegItem(b"bad"), JpegItem(b"ok")]
    out = predict(items)
    assert np.allclose(out[0], 0.5)
    assert np.allclose(out[1], 0.25) and np.allclose(out[3], 0.25)
    # The device refused it: the CPU decoder gets the final word (here: not a JPEG at all).
    assert isinstance(out[2], ServiceError) and not isinstance(out[2], np.ndarray)
    # A real JPEG the device refuses is decoded on the CPU instead of failing.
    cat = (images_dir / "cat_720p.jpg").read_bytes()
    out = predict([JpegItem(b"bad" + cat[3:])])
    assert isinstance(out[0], CorruptImage | ServiceError)


def test_bucket_for() -> None:
    buckets = [1, 2, 4, 8, 16]
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 5, 9, 16, 17)] == [1, 2, 4, 8, 16, 16, 17]


# ------------------------------------------------------------------------ CUDA only
@gpu
@pytest.mark.gpu
def test_cuda_fp16_keeps_top1(spec_and_model, images_dir: Path) -> None:
    spec, fresh = spec_and_model
    data = _jpegs(images_dir)
    batch = np.stack([prepare(d, spec.preprocessing, max_pixels=10**8) for d in data])
    cpu = TorchBackend(fresh(), spec.preprocessing, device="cpu").predict(batch)
    cuda = TorchBackend(fresh(), spec.preprocessing, device="cuda")
    assert cuda.precision == "fp16"
    out = cuda.predict(batch)
    assert _top1_agree(out, cpu) == 1.0
    assert np.abs(out - cpu).max() < 0.02


@gpu
@pytest.mark.gpu
def test_cuda_graphs_match_eager(spec_and_model) -> None:
    spec, fresh = spec_and_model
    graphs = TorchBackend(fresh(), spec.preprocessing, device="cuda", buckets=[1, 2, 4, 8])
    eager = TorchBackend(fresh(), spec.preprocessing, device="cuda", cuda_graphs=False)
    rng = np.random.default_rng(0)
    for n in (1, 3, 8, 11):  # 3 pads to bucket 4; 11 is past the last bucket (eager)
        batch = rng.integers(0, 255, (n, spec.resolution, spec.resolution, 3), dtype=np.uint8)
        a, b = graphs.predict(batch), eager.predict(batch)
        assert a.shape == (n, 1000)
        assert np.abs(a - b).max() < 1e-3
    assert set(graphs._graphs) == {1, 4, 8}


@gpu
@pytest.mark.gpu
def test_nvjpeg_decode_agrees_with_cpu(spec_and_model, images_dir: Path) -> None:
    spec, fresh = spec_and_model
    data = _jpegs(images_dir)
    cpu = TorchBackend(fresh(), spec.preprocessing, device="cpu").predict_jpegs(data)
    cuda = TorchBackend(fresh(), spec.preprocessing, device="cuda").predict_jpegs(data)
    assert _top1_agree(cuda, cpu) == 1.0


@gpu
@pytest.mark.gpu
def test_service_on_cuda(weights_dir: Path, images_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from app.api import create_app
    from app.settings import Settings

    settings = Settings(
        weights_dir=weights_dir,
        device="cuda",
        variants=["v3-small-1.0-224", "v1-0.25-128"],
        max_batch_size=32,
    )
    with TestClient(create_app(settings)) as client:
        for _ in range(600):
            if client.get("/readyz").status_code == 200:
                break
            import time

            time.sleep(0.1)
        for name in ("cat_720p.jpg", "cat.bmp"):  # JPEG decodes on the GPU, BMP on the CPU
            r = client.post(
                "/predict?model=v3", files={"file": (name, (images_dir / name).read_bytes())}
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["variant"]["device"].startswith("cuda")
            assert body["variant"]["precision"] == "fp16"
            assert body["predictions"][0]["index"] in (281, 282, 285)
