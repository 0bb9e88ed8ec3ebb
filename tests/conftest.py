"""Shared fixtures: where the real weights and photos are, and a converted weights dir.

The real upstream files live in ``../shared`` beside the checkout (override with
``MOBILENET_SHARED_DIR``). Outside CI a missing mirror skips the tests that need it;
in CI (``CI=true``) it is an error, so real-weight tests can never silently vanish.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOBILENET_SHARED_DIR", REPO.parent / "shared"))
MIRROR = SHARED / "pretrained" / "tflite"
IMAGES = SHARED / "images"


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
