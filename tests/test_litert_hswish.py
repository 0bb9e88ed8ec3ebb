"""V3's uint8 hard-swish rewritten as XNNPACK float ops: exact, or not used at all."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from app.imaging import prepare
from app.weights import SPECS_BY_NAME
from app.weights.store import source_paths

pytest.importorskip("ai_edge_litert.interpreter")

from app.inference import litert_backend, litert_hswish

V3 = SPECS_BY_NAME["v3-small-1.0-224"]
PHOTOS = ("cat.bmp", "bird.bmp", "grace_hopper.bmp", "hot_dog.jpg", "cat_720p.jpg")


@pytest.fixture(scope="module")
def v3_path(weights_dir: Path) -> Path:
    paths = source_paths(weights_dir, V3)
    assert paths is not None and len(paths) == 1
    return paths[0]


@pytest.fixture(scope="module")
def photos(images_dir: Path) -> np.ndarray:
    """The five test photos and 20 ImageNet samples, as the service prepares them."""
    files = [images_dir / n for n in PHOTOS]
    files += sorted((images_dir / "imagenet-sample").glob("*.JPEG"))[:20]
    return np.stack([prepare(f.read_bytes(), V3.preprocessing, max_pixels=10**8) for f in files])


def _scores(model: Path | bytes, images: np.ndarray) -> np.ndarray:
    return litert_backend._Chain([model]).run(images)


def test_rewritten_v3_scores_bit_for_bit_like_the_stock_graph(
    v3_path: Path, photos: np.ndarray
) -> None:
    model, report = litert_hswish.rewrite(v3_path)
    assert report.hard_swish == 19
    assert report.replaced >= 15  # 18 on the machines measured so far
    stock, fast = _scores(v3_path, photos), _scores(model, photos)
    assert len({int(s.argmax()) for s in stock}) > 10  # varied photos, varied answers
    assert np.array_equal(stock, fast)


def test_a_chain_that_is_not_exact_is_never_used(
    v3_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Candidates come from a float emulation; the runtime's own answer decides."""
    monkeypatch.setattr(litert_hswish, "_candidates", lambda tin, tout, ref: [(1.05, 0.0)])
    _, report = litert_hswish.rewrite(v3_path)
    assert report.hard_swish == 19
    assert report.replaced == 0


def test_graph_check_rejects_a_rewrite_that_changes_scores(
    v3_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Even if the per-op proof were wrong, the whole-graph check keeps the stock graph."""
    monkeypatch.setattr(litert_hswish, "_candidates", lambda tin, tout, ref: [(1.05, 0.0)])
    monkeypatch.setattr(
        litert_hswish, "_probe", lambda tin, tout, *, chain: np.arange(256, dtype=np.uint8)
    )
    with caplog.at_level(logging.WARNING, logger=litert_backend.__name__):
        assert litert_backend.faster_graph(v3_path) == v3_path
    assert "differs from the stock graph" in caplog.text


def test_a_failing_rewrite_falls_back_to_the_stock_graph(
    v3_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(path: Path) -> None:
        raise ImportError("no flatbuffer tools in this LiteRT")

    monkeypatch.setattr(litert_hswish, "rewrite", broken)
    with caplog.at_level(logging.WARNING, logger=litert_backend.__name__):
        assert litert_backend.faster_graph(v3_path) == v3_path
    assert "rewrite skipped" in caplog.text


def test_graphs_without_hard_swish_are_left_alone(weights_dir: Path) -> None:
    paths = source_paths(weights_dir, SPECS_BY_NAME["v2-1.0-224"])
    assert paths is not None
    _, report = litert_hswish.rewrite(paths[0])
    assert (report.hard_swish, report.replaced) == (0, 0)
    assert litert_backend.faster_graph(paths[0]) == paths[0]


def test_backend_uses_the_rewrite_by_default_and_answers_the_same(
    v3_path: Path, photos: np.ndarray
) -> None:
    fast = litert_backend.LiteRTBackend([v3_path], threads=2)
    stock = litert_backend.LiteRTBackend([v3_path], threads=2, exact_hard_swish=False)
    assert (fast.rewritten, stock.rewritten) == (True, False)
    for part in (photos[:1], photos):  # the lone-image interpreter, then the split batch
        assert np.array_equal(fast.predict(part), stock.predict(part))
