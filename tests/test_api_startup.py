"""Start-up and weights: no weights says how to fetch them, ``MOBILENET_VARIANTS`` restricts
what is loaded, tampered weights are never offered, the GIL switch interval is restored.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from app.errors import WeightsError
from app.settings import Settings
from app.weights import SPECS_BY_NAME
from tests.api_helpers import (
    error_of,
    post_image,
)


# ------------------------------------------------------------------ start-up and weights
@pytest.mark.parametrize("exists", [True, False])
def test_start_up_without_weights_fails_saying_how_to_fetch(
    make_client: Any, tmp_path: Path, exists: bool
) -> None:
    empty = tmp_path / "weights"
    if exists:
        empty.mkdir()
    with pytest.raises(WeightsError) as info:
        make_client(Settings(weights_dir=empty, variants=None))
    msg = info.value.message
    assert "no model weights found" in msg
    assert str(empty.resolve()) in msg
    assert "mobilenet-serve weights fetch" in msg


def test_mobilenet_variants_restricts_what_is_loaded(
    make_client: Any, weights_dir: Path, monkeypatch: pytest.MonkeyPatch, cat: bytes
) -> None:
    monkeypatch.setenv("MOBILENET_VARIANTS", "v1-0.25-128, v3-small-1.0-224")
    client = make_client(Settings(weights_dir=weights_dir))
    assert client.get("/readyz").json()["variants"] == ["v1-0.25-128", "v3-small-1.0-224"]
    body = client.get("/models").json()
    assert [m["name"] for m in body["models"]] == ["v1-0.25-128", "v3-small-1.0-224"]
    assert body["aliases"] == {
        "v1": "v1-0.25-128",
        "v3-small": "v3-small-1.0-224",
        "v3": "v3-small-1.0-224",
    }
    err = error_of(post_image(client, cat, "model=v2"), 404, "unknown_model")
    assert "loaded models: v1, v3-small, v3" in err["message"]
    assert post_image(client, cat, "model=v1").json()["variant"]["name"] == "v1-0.25-128"


def test_unknown_name_in_mobilenet_variants_fails_start_up(
    make_client: Any, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOBILENET_VARIANTS", "v1-0.25-128,v5-1.0-224")
    with pytest.raises(WeightsError) as info:
        make_client(Settings(weights_dir=weights_dir))
    assert "v5-1.0-224" in info.value.message
    assert "known: " in info.value.message and "v3-small-1.0-224" in info.value.message


def _tampered_copy(weights_dir: Path, dest: Path, relative: str, n: int = 64) -> Path:
    """Copy the weights dir and flip ``n`` bytes in the middle of one file."""
    shutil.copytree(weights_dir, dest)
    target = dest / relative
    data = bytearray(target.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + n):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    return dest


def _assert_not_offered(client: Any, cat: bytes, bad: str, good: str) -> None:
    assert client.get("/readyz").json()["variants"] == [good]
    assert [m["name"] for m in client.get("/models").json()["models"]] == [good]
    err = error_of(post_image(client, cat, f"variant={bad}"), 404, "unknown_model")
    assert f"loaded: {good}" in err["message"]
    assert post_image(client, cat, f"variant={good}").status_code == 200


def test_tampered_weights_are_not_offered_torch_backend(
    make_client: Any, weights_dir: Path, tmp_path: Path, cat: bytes
) -> None:
    copy = _tampered_copy(weights_dir, tmp_path / "w", "v1-0.5-160.safetensors")
    client = make_client(
        weights_dir=copy, backend="torch", variants=["v1-0.25-128", "v1-0.5-160"], max_batch_size=1
    )
    _assert_not_offered(client, cat, bad="v1-0.5-160", good="v1-0.25-128")


def test_tampered_weights_are_not_offered_auto_backend(
    make_client: Any, weights_dir: Path, tmp_path: Path, cat: bytes
) -> None:
    copy = _tampered_copy(weights_dir, tmp_path / "w", "v1-0.5-160.safetensors")
    client = make_client(weights_dir=copy, variants=["v1-0.25-128", "v1-0.5-160"])
    _assert_not_offered(client, cat, bad="v1-0.5-160", good="v1-0.25-128")


def test_tampered_tflite_source_is_not_offered_auto_backend(
    make_client: Any, weights_dir: Path, tmp_path: Path, cat: bytes
) -> None:
    spec = SPECS_BY_NAME["v1-0.5-160"]
    copy = _tampered_copy(weights_dir, tmp_path / "w", f"sources/{spec.sources[0].filename}", n=4)
    client = make_client(weights_dir=copy, variants=["v1-0.25-128", "v1-0.5-160"])
    _assert_not_offered(client, cat, bad="v1-0.5-160", good="v1-0.25-128")


def test_serving_shortens_the_gil_switch_interval_and_restores_it(weights_dir: Path) -> None:
    """The interval is process-wide: set for the app's lifetime, put back at shutdown."""
    import sys

    from fastapi.testclient import TestClient

    from app.api import create_app

    before = sys.getswitchinterval()
    settings = Settings(
        weights_dir=weights_dir, variants=["v1-0.25-128"], gil_switch_interval_ms=0.7
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert sys.getswitchinterval() == pytest.approx(0.0007)
    assert sys.getswitchinterval() == pytest.approx(before)
    assert Settings().gil_switch_interval_ms == 0.5
