"""Shared fixtures: where the real weights and photos are, and a converted weights dir.

The real upstream files live in ``../shared`` beside the checkout (override with
``MOBILENET_SHARED_DIR``). Outside CI a missing mirror skips the tests that need it;
in CI (``CI=true``) it is an error, so real-weight tests can never silently vanish.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOBILENET_SHARED_DIR", REPO.parent / "shared"))
MIRROR = SHARED / "pretrained" / "tflite"
IMAGES = SHARED / "images"
# Apps built in tests serve no gRPC unless a test asks (its default port, 8001, would
# clash between apps and with other test runs); tests/servers.py does the same.
os.environ.setdefault("MOBILENET_GRPC_PORT", "0")


def _need(path: Path) -> Path:
    if not path.exists():
        msg = f"{path} is missing (set MOBILENET_SHARED_DIR to the shared/ folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def mirror_dir() -> Path:
    """The local mirror of Google's TF Lite releases."""
    return _need(MIRROR)


@pytest.fixture(scope="session")
def images_dir() -> Path:
    """Real photos: cat.bmp, bird.bmp, cat_720p.jpg, ... and imagenet-sample/."""
    return _need(IMAGES)


@pytest.fixture(scope="session")
def cat(images_dir: Path) -> bytes:
    return (images_dir / "cat.bmp").read_bytes()


@pytest.fixture(scope="session")
def bird(images_dir: Path) -> bytes:
    return (images_dir / "bird.bmp").read_bytes()


@pytest.fixture(scope="session")
def cat_jpeg(images_dir: Path) -> bytes:
    """1280x720 JPEG (921,600 pixels, ~105 KB)."""
    return (images_dir / "cat_720p.jpg").read_bytes()


@pytest.fixture(scope="session")
def small_cat_jpeg(images_dir: Path) -> bytes:
    """cat.bmp as a 256x171 JPEG (a few KB, 43,776 pixels)."""
    buf = io.BytesIO()
    Image.open(images_dir / "cat.bmp").convert("RGB").resize((256, 171)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> Path:
    """Every variant the mirror holds, converted once per test session."""
    from app.weights import default_variants, fetch_variants

    out = tmp_path_factory.mktemp("weights")
    results = fetch_variants(
        default_variants(mirror_dir), weights_dir=out, mirror=mirror_dir, progress=False
    )
    failed = [r for r in results if r.status == "failed"]
    assert not failed, failed
    return out


# --------------------------------------------------------------------------- HTTP apps
SMALL_VARIANT = "v1-0.25-128"
"""The cheapest variant to load: apps built only to test limits and options use it."""

TORCH_VARIANTS = ["v1-0.25-128", "v1-1.0-224", "v2-1.0-224", "v3-small-1.0-224"]
"""What the torch-backend session app loads: one per model the API tests ask for."""


def wait_ready(client: Any, timeout_s: float = 180.0) -> dict:
    """Poll ``/readyz`` until 200; fail at once if the background loading gave up."""
    deadline = time.monotonic() + timeout_s
    while True:
        loading = getattr(client.app.state, "loading", None)
        finished = loading is not None and loading.done()  # read before asking /readyz
        r = client.get("/readyz")
        if r.status_code == 200:
            return r.json()
        if finished:
            # Loading ended but the app is not ready: it never will be.
            pytest.fail(f"the app did not become ready: {r.json()}")
        if time.monotonic() > deadline:
            pytest.fail(f"the app was not ready after {timeout_s}s: {r.json()}")
        time.sleep(0.05)


@contextlib.contextmanager
def serving(settings: Any, *, ready: bool = True) -> Iterator[Any]:
    """A TestClient over ``create_app(settings)`` with its lifespan running (and ready)."""
    from fastapi.testclient import TestClient

    from app.api import create_app

    with TestClient(create_app(settings)) as client:
        if ready:
            wait_ready(client)
        yield client


@pytest.fixture(scope="session")
def app_client(weights_dir: Path) -> Iterator[Any]:
    """The real app over every converted variant, backend chosen by the service (auto)."""
    from app.settings import Settings

    with serving(Settings(weights_dir=weights_dir, backend="auto", variants=None)) as client:
        yield client


@pytest.fixture(scope="session")
def torch_client(weights_dir: Path) -> Iterator[Any]:
    """The real app forced onto the PyTorch backend (a subset of variants, small batches
    so the warm-up stays quick on a shared CPU)."""
    from app.settings import Settings

    settings = Settings(
        weights_dir=weights_dir, backend="torch", variants=TORCH_VARIANTS, max_batch_size=4
    )
    with serving(settings) as client:
        yield client


@pytest.fixture(params=["auto", "torch"])
def any_client(request: pytest.FixtureRequest) -> Any:
    """Parametrizes a test over both session apps: ``auto`` and ``torch`` backends."""
    return request.getfixturevalue("app_client" if request.param == "auto" else "torch_client")


@pytest.fixture
def make_client(weights_dir: Path) -> Iterator[Callable[..., Any]]:
    """Factory: ``make_client(max_upload_bytes=...)`` -> a ready TestClient over an app
    with those settings (default: ``weights_dir`` and only the smallest variant), or
    ``make_client(settings=Settings(...))``. Every app is shut down after the test."""
    from app.settings import Settings

    with contextlib.ExitStack() as stack:

        def make(settings: Settings | None = None, *, ready: bool = True, **overrides: Any):
            if settings is None:
                fields: dict[str, Any] = {"weights_dir": weights_dir, "variants": [SMALL_VARIANT]}
                settings = Settings(**(fields | overrides))
            return stack.enter_context(serving(settings, ready=ready))

        yield make
