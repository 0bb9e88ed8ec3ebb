"""The HTTP API end to end: the real app, the real converted weights, real photos.

Two session apps (``app_client``: backend auto, every variant; ``torch_client``: the
PyTorch backend, four variants) and small per-test apps for limits and options.
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from app.errors import WeightsError
from app.inference import litert_backend
from app.settings import Settings
from app.weights import SPECS_BY_NAME

CAT = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}
CHICKADEE = 19
ALL_VARIANTS = [
    "v1-0.25-128",
    "v1-0.5-160",
    "v1-0.75-192",
    "v1-0.75-224",
    "v1-1.0-224",
    "v2-1.0-224",
    "v3-small-1.0-224",
]
ACCEPTED = ("JPEG", "PNG", "WebP", "BMP", "GIF", "TIFF")


@pytest.fixture(scope="module")
def cat(images_dir: Path) -> bytes:
    return (images_dir / "cat.bmp").read_bytes()


@pytest.fixture(scope="module")
def bird(images_dir: Path) -> bytes:
    return (images_dir / "bird.bmp").read_bytes()


@pytest.fixture(scope="module")
def cat_jpeg(images_dir: Path) -> bytes:
    """1280x720 JPEG (921,600 pixels, ~105 KB)."""
    return (images_dir / "cat_720p.jpg").read_bytes()


@pytest.fixture(scope="module")
def small_cat_jpeg(images_dir: Path) -> bytes:
    """cat.bmp as a 256x171 JPEG (a few KB, 43,776 pixels)."""
    buf = io.BytesIO()
    Image.open(images_dir / "cat.bmp").convert("RGB").resize((256, 171)).save(buf, "JPEG")
    return buf.getvalue()


def expected_backend(client: Any) -> str:
    """The service's documented ``auto`` policy: LiteRT on CPU when it is installed."""
    settings = client.app.state.settings
    if settings.backend != "auto":
        return settings.backend
    import torch

    on_cpu = settings.device == "cpu" or not torch.cuda.is_available()
    return "litert" if on_cpu and litert_backend.available() else "torch"


def post_image(client: Any, data: bytes, query: str = "", **kw: Any) -> httpx.Response:
    return client.post(f"/predict?{query}", files={"file": ("img.bmp", data, "image/bmp")}, **kw)


def error_of(r: httpx.Response, status: int, code: str) -> dict:
    """Assert the common error shape and return ``body['error']``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["message"]
    assert err["request_id"] == r.headers["x-request-id"]
    return err


def top1(body: dict) -> dict:
    return body["predictions"][0]


# ------------------------------------------------------------------------ classification
@pytest.mark.parametrize(
    ("query", "variant", "model", "width", "resolution"),
    [
        ("model=v3", "v3-small-1.0-224", "v3-small", 1.0, 224),
        ("model=v2", "v2-1.0-224", "v2", 1.0, 224),
        ("model=v1&width=0.25", "v1-0.25-128", "v1", 0.25, 128),
        ("model=v1&width=1.0", "v1-1.0-224", "v1", 1.0, 224),
    ],
)
def test_cat_is_a_cat(
    any_client: Any,
    cat: bytes,
    query: str,
    variant: str,
    model: str,
    width: float,
    resolution: int,
) -> None:
    r = post_image(any_client, cat, query)
    assert r.status_code == 200, r.text
    body = r.json()
    best = top1(body)
    assert best["index"] in CAT, body["predictions"]
    assert best["label"] in CAT_LABELS
    v = body["variant"]
    assert v["name"] == variant
    assert (v["model"], v["width"], v["resolution"]) == (model, width, resolution)
    assert v["origin"] == "tflite"
    assert v["backend"] == expected_backend(any_client)
    if v["backend"] == "litert":
        assert (v["device"], v["precision"]) == ("cpu", "int8")
    else:
        assert (v["device"], v["precision"]) in (("cpu", "fp32"), ("cuda", "fp16"))


@pytest.mark.parametrize("query", ["model=v3", "model=v2", "model=v1&width=0.25", "model=v1"])
def test_bird_is_a_chickadee(any_client: Any, bird: bytes, query: str) -> None:
    r = post_image(any_client, bird, query)
    assert r.status_code == 200, r.text
    best = top1(r.json())
    assert (best["index"], best["label"]) == (CHICKADEE, "chickadee")


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_every_loaded_variant_by_name_sees_the_cat_and_the_bird(
    app_client: Any, cat: bytes, bird: bytes, name: str
) -> None:
    got_cat = post_image(app_client, cat, f"variant={name}").json()
    got_bird = post_image(app_client, bird, f"variant={name}").json()
    assert got_cat["variant"]["name"] == got_bird["variant"]["name"] == name
    assert top1(got_cat)["index"] in CAT
    assert top1(got_bird)["index"] == CHICKADEE


def test_response_shape_predictions_and_timings(app_client: Any, cat: bytes) -> None:
    r = post_image(app_client, cat, "model=v2&topk=7")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"request_id", "variant", "predictions", "batch_size", "timings"}
    preds = body["predictions"]
    assert len(preds) == 7
    assert all(set(p) == {"index", "label", "score"} for p in preds)
    scores = [p["score"] for p in preds]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert len({p["index"] for p in preds}) == 7
    labels = app_client.app.state.service.labels
    assert all(labels[p["index"]] == p["label"] for p in preds)
    assert body["batch_size"] >= 1
    t = body["timings"]
    assert set(t) == {"decode_ms", "queue_ms", "inference_ms", "total_ms"}
    assert all(value >= 0 for value in t.values())
    assert t["decode_ms"] > 0 and t["inference_ms"] > 0
    # The stages happen one after another inside the request's own time.
    assert t["decode_ms"] + t["queue_ms"] + t["inference_ms"] <= t["total_ms"] + 1.0


@pytest.mark.parametrize("k", [1, 20])
def test_topk_bounds_are_accepted(app_client: Any, cat: bytes, k: int) -> None:
    r = post_image(app_client, cat, f"model=v1&width=0.25&topk={k}")
    assert r.status_code == 200
    assert len(r.json()["predictions"]) == k


def test_default_model_is_the_most_accurate_loaded(app_client: Any, cat: bytes) -> None:
    body = post_image(app_client, cat).json()
    best = max(ALL_VARIANTS, key=lambda n: SPECS_BY_NAME[n].accuracy.top1)
    assert body["variant"]["name"] == best == "v2-1.0-224"
    assert len(body["predictions"]) == 5


def test_request_id_is_echoed_when_sent(app_client: Any, cat: bytes) -> None:
    r = post_image(app_client, cat, "model=v3", headers={"X-Request-ID": "trace-42.a:b"})
    assert r.headers["x-request-id"] == "trace-42.a:b"
    assert r.json()["request_id"] == "trace-42.a:b"


def test_request_id_is_made_when_missing_or_unsafe(app_client: Any, cat: bytes) -> None:
    ids = set()
    for headers in ({}, {"X-Request-ID": "no spaces allowed"}, {"X-Request-ID": "x" * 129}):
        r = post_image(app_client, cat, "model=v1&width=0.25", headers=headers)
        rid = r.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
        assert r.json()["request_id"] == rid
        ids.add(rid)
    assert len(ids) == 3
    assert re.fullmatch(r"[0-9a-f]{32}", app_client.get("/healthz").headers["x-request-id"])


def test_raw_body_agrees_with_multipart(any_client: Any, cat: bytes) -> None:
    multipart = post_image(any_client, cat, "model=v3").json()
    raw = any_client.post(
        "/predict?model=v3", content=cat, headers={"Content-Type": "image/bmp"}
    ).json()
    octets = any_client.post(
        "/predict?model=v3", content=cat, headers={"Content-Type": "application/octet-stream"}
    ).json()
    for other in (raw, octets):
        assert other["variant"] == multipart["variant"]
        assert top1(other)["index"] == top1(multipart)["index"]
        for a, b in zip(other["predictions"], multipart["predictions"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_batch_agrees_with_single_requests(any_client: Any, cat: bytes, bird: bytes) -> None:
    singles = [post_image(any_client, img, "model=v2").json() for img in (cat, bird, cat)]
    r = any_client.post(
        "/predict/batch?model=v2",
        files=[
            ("files", ("a.bmp", cat, "image/bmp")),
            ("files", ("b.bmp", bird, "image/bmp")),
            ("files", ("c.bmp", cat, "image/bmp")),
        ],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["variant"] == singles[0]["variant"]
    assert body["request_id"] == r.headers["x-request-id"]
    assert [item["index"] for item in body["results"]] == [0, 1, 2]
    assert [item["filename"] for item in body["results"]] == ["a.bmp", "b.bmp", "c.bmp"]
    for item, single in zip(body["results"], singles, strict=True):
        assert item["ok"] is True and item["error"] is None
        assert item["batch_size"] >= 1 and item["timings"]["total_ms"] > 0
        assert item["predictions"][0]["index"] == top1(single)["index"]
        for a, b in zip(item["predictions"], single["predictions"], strict=True):
            assert a["index"] == b["index"]
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert body["results"][1]["predictions"][0]["index"] == CHICKADEE


@pytest.mark.parametrize("run_to_completion", [False, True], ids=["batcher", "rtc"])
def test_64_concurrent_requests_over_three_variants_are_batched_and_right(
    app_client: Any, cat: bytes, bird: bytes, run_to_completion: bool, monkeypatch: Any
) -> None:
    """Concurrency on the app's own event loop (httpx + ASGITransport inside the portal):
    every answer is right for its own image, so batching never mixes up results. Run to
    completion (LiteRT's default): no batch, each image decoded and forwarded on one
    decode thread, still right, and the batchers' stats count every one as a batch of 1."""
    app = app_client.app
    monkeypatch.setattr(app.state.service.settings, "run_to_completion", run_to_completion)
    targets = {"v3": "v3-small-1.0-224", "v2": "v2-1.0-224", "v1": "v1-1.0-224"}
    batchers = {
        name: app.state.service.registry.variants[name].batcher for name in targets.values()
    }
    before = {name: Counter(b.stats.batch_sizes) for name, b in batchers.items()}
    jobs = [(list(targets)[i % 3], "bird" if i % 2 else "cat") for i in range(64)]

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"/predict?model={model}&topk=3",
                        files={"file": (f"{what}.bmp", cat if what == "cat" else bird)},
                        timeout=60,
                    )
                    for model, what in jobs
                )
            )

    responses = app_client.portal.call(burst)
    assert len(responses) == 64
    for (model, what), r in zip(jobs, responses, strict=True):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["variant"]["name"] == targets[model]
        if what == "cat":
            assert top1(body)["index"] in CAT, (model, body["predictions"])
        else:
            assert top1(body)["index"] == CHICKADEE, (model, body["predictions"])
    grown = {name: Counter(b.stats.batch_sizes) - before[name] for name, b in batchers.items()}
    assert sum(n * count for c in grown.values() for n, count in c.items()) == 64
    if run_to_completion:
        assert all(set(c) == {1} for c in grown.values()), grown
        assert {r.json()["batch_size"] for r in responses} == {1}
    else:
        assert any(size > 1 for c in grown.values() for size in c), grown
        assert max(r.json()["batch_size"] for r in responses) > 1


# ---------------------------------------------------------------------------- /models
def test_models_lists_every_loaded_variant_with_metadata(app_client: Any) -> None:
    r = app_client.get("/models")
    assert r.status_code == 200
    body = r.json()
    assert body["default"] == "v2-1.0-224"
    assert body["aliases"] == {
        "v1": "v1-1.0-224",
        "v2": "v2-1.0-224",
        "v3-small": "v3-small-1.0-224",
        "v3": "v3-small-1.0-224",
    }
    models = {m["name"]: m for m in body["models"]}
    assert sorted(models) == ALL_VARIANTS
    for name, m in models.items():
        spec = SPECS_BY_NAME[name]
        assert (m["model"], m["width"], m["resolution"]) == (
            spec.arch,
            spec.width,
            spec.resolution,
        )
        assert m["origin"] == "tflite"
        assert m["backend"] == expected_backend(app_client)
        assert m["params"] == spec.params > 100_000
        assert m["num_classes"] == 1000
        assert m["quantized_source"] is True
        assert "Apache-2.0" in m["license"]
        assert m["accuracy"]["top1"] == spec.accuracy.top1
        assert m["accuracy"]["source"]
        pre = m["preprocessing"]
        assert pre["size"] == spec.resolution
        assert len(pre["mean"]) == len(pre["std"]) == 3
        assert pre["interpolation"] and pre["crop"]
        assert m["sources"] and all(
            s["url"].startswith("https://") and re.fullmatch(r"[0-9a-f]{64}", s["sha256"])
            for s in m["sources"]
        )
        assert [s["filename"] for s in m["sources"]] == [s.filename for s in spec.sources]
    assert sorted(models["v3-small-1.0-224"]["default_for"]) == ["v3", "v3-small"]
    assert models["v1-1.0-224"]["default_for"] == ["v1"]
    assert models["v1-0.25-128"]["default_for"] == []


# ------------------------------------------------------------------------- refusals
def test_unknown_model_is_404_and_lists_allowed(app_client: Any, cat: bytes) -> None:
    err = error_of(post_image(app_client, cat, "model=v9"), 404, "unknown_model")
    assert "'v9'" in err["message"]
    for name in ("v1", "v2", "v3-small", "v3-large", "v3"):
        assert name in err["allowed"]
        assert name in err["message"]


def test_model_not_loaded_is_404_and_lists_loaded(app_client: Any, cat: bytes) -> None:
    err = error_of(post_image(app_client, cat, "model=v3-large"), 404, "unknown_model")
    assert "loaded models: v1, v2, v3-small, v3" in err["message"]


def test_width_not_loaded_is_404_and_lists_loaded_widths(app_client: Any, cat: bytes) -> None:
    err = error_of(post_image(app_client, cat, "model=v1&width=0.3"), 404, "unknown_model")
    assert "width 0.3" in err["message"]
    assert "loaded widths: 0.25, 0.5, 0.75, 1" in err["message"]
    assert err["widths"] == [0.25, 0.5, 0.75, 1.0]
    err = error_of(post_image(app_client, cat, "model=v2&width=0.5"), 404, "unknown_model")
    assert "loaded widths: 1" in err["message"]


def test_resolution_not_loaded_is_404_and_lists_loaded(app_client: Any, cat: bytes) -> None:
    r = post_image(app_client, cat, "model=v1&width=0.75&resolution=160")
    err = error_of(r, 404, "unknown_model")
    assert "resolution 160" in err["message"]
    assert "loaded: 192, 224" in err["message"]
    assert err["resolutions"] == [192, 224]
    ok = post_image(app_client, cat, "model=v1&width=0.75&resolution=192")
    assert ok.json()["variant"]["name"] == "v1-0.75-192"


def test_unknown_variant_is_404_and_lists_loaded(app_client: Any, cat: bytes) -> None:
    err = error_of(post_image(app_client, cat, "variant=v1-0.3-96"), 404, "unknown_model")
    assert "'v1-0.3-96'" in err["message"]
    assert all(name in err["message"] for name in ALL_VARIANTS)
    assert err["loaded"] == ALL_VARIANTS


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("topk=0", "topk"),
        ("topk=21", "topk"),
        ("topk=five", "topk"),
        ("width=0", "width"),
        ("width=abc", "width"),
        ("resolution=8", "resolution"),
        ("timeout_ms=0", "timeout_ms"),
    ],
)
def test_bad_parameters_are_422_and_name_the_parameter(
    app_client: Any, cat: bytes, query: str, names: str
) -> None:
    err = error_of(post_image(app_client, cat, query), 422, "invalid_request")
    assert err["message"].startswith(f"{names}: ")
    assert err["errors"][0]["loc"] == ["query", names]


def test_topk_message_gives_the_allowed_range(app_client: Any, cat: bytes) -> None:
    low = error_of(post_image(app_client, cat, "topk=0"), 422, "invalid_request")
    high = error_of(post_image(app_client, cat, "topk=21"), 422, "invalid_request")
    assert "greater than or equal to 1" in low["message"]
    assert "less than or equal to 20" in high["message"]


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"hello world, this is not an image", "unrecognised"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj", "'PDF'"),
        (b"<html><body>hi</body></html>", "'HTML'"),
    ],
)
def test_not_an_image_is_415_and_lists_accepted_formats(
    app_client: Any, data: bytes, what: str
) -> None:
    r = app_client.post("/predict", files={"file": ("x.jpg", data, "image/jpeg")})
    err = error_of(r, 415, "unsupported_media_type")
    assert what in err["message"]
    assert "accepted: " + ", ".join(ACCEPTED) in err["message"]
    assert err["accepted"] == ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"]


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "PNG"])
def test_truncated_or_corrupt_image_is_422(
    app_client: Any, cat: bytes, cat_jpeg: bytes, fmt: str
) -> None:
    if fmt == "JPEG":
        data = cat_jpeg[: len(cat_jpeg) // 2]
    elif fmt == "BMP":
        data = cat[: len(cat) // 2]
    else:
        buf = io.BytesIO()
        Image.open(io.BytesIO(cat)).save(buf, "PNG")
        png = bytearray(buf.getvalue())
        png[png.index(b"IDAT") + 100 : png.index(b"IDAT") + 140] = b"\x00" * 40
        data = bytes(png)
    err = error_of(post_image(app_client, data, "model=v1&width=0.25"), 422, "corrupt_image")
    assert err["format"] == fmt
    assert f"cannot decode {fmt} image" in err["message"]
    assert "truncated or damaged" in err["message"]


def test_json_body_is_415_and_says_what_to_send(app_client: Any) -> None:
    err = error_of(
        app_client.post("/predict", json={"image": "cat.jpg"}), 415, "unsupported_media_type"
    )
    assert "'application/json'" in err["message"]
    assert "multipart/form-data" in err["message"] and "'file'" in err["message"]
    assert "image/*" in err["message"]
    err = error_of(
        app_client.post("/predict/batch", json={"files": []}), 415, "unsupported_media_type"
    )
    assert "'files'" in err["message"]


def test_missing_file_field_is_422_naming_file(app_client: Any, cat: bytes) -> None:
    r = app_client.post("/predict", files={"image": ("cat.bmp", cat, "image/bmp")})
    err = error_of(r, 422, "invalid_request")
    assert "multipart field 'file' is missing" in err["message"]
    assert "'image'" in err["message"]
    assert err["expected_field"] == "file"


def test_text_value_instead_of_a_file_is_422(app_client: Any) -> None:
    r = app_client.post(
        "/predict", data={"file": "cat.jpg"}, files={"other": ("x.bin", b"x", "text/plain")}
    )
    err = error_of(r, 422, "invalid_request")
    assert "field 'file' must be a file upload, not a text value" in err["message"]


def test_empty_upload_is_422(app_client: Any) -> None:
    for r in (
        app_client.post("/predict", files={"file": ("empty.jpg", b"", "image/jpeg")}),
        app_client.post("/predict", content=b"", headers={"Content-Type": "image/jpeg"}),
    ):
        err = error_of(r, 422, "invalid_request")
        assert "empty" in err["message"]


def test_batch_with_a_bad_file_fails_only_that_item(
    app_client: Any, cat: bytes, bird: bytes, cat_jpeg: bytes
) -> None:
    r = app_client.post(
        "/predict/batch?model=v3",
        files=[
            ("files", ("cat.bmp", cat, "image/bmp")),
            ("files", ("notes.txt", b"not an image at all", "text/plain")),
            ("files", ("cut.jpg", cat_jpeg[:5000], "image/jpeg")),
            ("files", ("bird.bmp", bird, "image/bmp")),
        ],
    )
    assert r.status_code == 200, r.text
    items = r.json()["results"]
    assert [i["ok"] for i in items] == [True, False, False, True]
    assert items[0]["predictions"][0]["index"] in CAT
    assert items[3]["predictions"][0]["index"] == CHICKADEE
    assert items[1]["error"]["code"] == "unsupported_media_type"
    assert "accepted: " + ", ".join(ACCEPTED) in items[1]["error"]["message"]
    assert items[2]["error"]["code"] == "corrupt_image"
    assert items[1]["predictions"] is None and items[1]["filename"] == "notes.txt"


def test_batch_without_files_is_422(app_client: Any) -> None:
    r = app_client.post("/predict/batch", files={"images": ("a.bmp", b"BM", "image/bmp")})
    err = error_of(r, 422, "invalid_request")
    assert "'files'" in err["message"] and "'images'" in err["message"]


def test_batch_refuses_an_unknown_model_before_reading(app_client: Any, cat: bytes) -> None:
    r = app_client.post("/predict/batch?model=v7", files=[("files", ("a.bmp", cat))])
    assert "allowed: v1, v2" in error_of(r, 404, "unknown_model")["message"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "X-Request-Timeout must be a number of milliseconds (1-600000)"),
        ("0", "X-Request-Timeout must be between 1 and 600000 ms"),
        ("600001", "X-Request-Timeout must be between 1 and 600000 ms"),
        ("-5", "X-Request-Timeout must be between 1 and 600000 ms"),
    ],
)
def test_bad_request_timeout_header_is_422(
    app_client: Any, cat: bytes, value: str, message: str
) -> None:
    r = post_image(app_client, cat, "model=v3", headers={"X-Request-Timeout": value})
    assert error_of(r, 422, "invalid_request")["message"] == message


@pytest.mark.parametrize("value", ["inf", "-inf", "1e400"])
def test_infinite_request_timeout_header_is_422(app_client: Any, cat: bytes, value: str) -> None:
    r = post_image(app_client, cat, "model=v3", headers={"X-Request-Timeout": value})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith("X-Request-Timeout must be")


def test_request_past_its_deadline_is_504(app_client: Any, cat_jpeg: bytes) -> None:
    """1 ms cannot cover reading and decoding a 1280x720 JPEG: the batcher refuses it."""
    r = app_client.post(
        "/predict?model=v1&timeout_ms=1", files={"file": ("c.jpg", cat_jpeg, "image/jpeg")}
    )
    err = error_of(r, 504, "deadline_exceeded")
    assert "deadline passed" in err["message"] and "v1-1.0-224" in err["message"]


def test_good_request_timeout_header_is_accepted(app_client: Any, cat: bytes) -> None:
    r = post_image(app_client, cat, "model=v3", headers={"X-Request-Timeout": "30000"})
    assert r.status_code == 200


def test_unknown_route_and_wrong_method_are_json_errors(app_client: Any) -> None:
    err = error_of(app_client.get("/nowhere"), 404, "not_found")
    assert err["message"] == "Not Found"
    r = app_client.get("/predict")
    assert error_of(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]


# ------------------------------------------------------------------- limits (own apps)
@pytest.fixture
def limited(make_client: Any) -> Any:
    return make_client(max_upload_bytes=200_000, max_pixels=500_000, max_batch_files=2)


def test_small_upload_under_every_limit_is_served(limited: Any, small_cat_jpeg: bytes) -> None:
    r = limited.post("/predict", files={"file": ("c.jpg", small_cat_jpeg, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert top1(r.json())["index"] in CAT


def test_upload_over_the_byte_limit_is_413(limited: Any, cat: bytes) -> None:
    assert len(cat) > 200_000
    for r in (
        post_image(limited, cat),
        limited.post("/predict", content=cat, headers={"Content-Type": "image/bmp"}),
        limited.post("/predict/batch", files=[("files", ("a.bmp", cat))]),
    ):
        err = error_of(r, 413, "payload_too_large")
        assert "200000 byte limit" in err["message"]
        assert "MOBILENET_MAX_UPLOAD_BYTES" in err["message"]
        assert err["limit_bytes"] == 200_000


def test_streamed_upload_over_the_byte_limit_is_413(limited: Any, cat: bytes) -> None:
    """No Content-Length (chunked): the limit is enforced while the body streams in."""

    def chunks():
        for i in range(0, len(cat), 16_384):
            yield cat[i : i + 16_384]

    r = limited.post("/predict", content=chunks(), headers={"Content-Type": "image/bmp"})
    assert "content-length" not in r.request.headers
    err = error_of(r, 413, "payload_too_large")
    assert err["limit_bytes"] == 200_000


def test_image_over_max_pixels_is_413(limited: Any, cat_jpeg: bytes) -> None:
    assert len(cat_jpeg) < 200_000
    r = limited.post("/predict", files={"file": ("big.jpg", cat_jpeg, "image/jpeg")})
    err = error_of(r, 413, "image_too_large")
    assert "1280x720" in err["message"]
    assert "0.5 MP" in err["message"]
    assert (err["width"], err["height"], err["max_pixels"]) == (1280, 720, 500_000)


def test_too_many_batch_files_is_422_and_names_the_limit(
    limited: Any, small_cat_jpeg: bytes
) -> None:
    files = [("files", (f"{i}.jpg", small_cat_jpeg, "image/jpeg")) for i in range(3)]
    err = error_of(limited.post("/predict/batch", files=files), 422, "invalid_request")
    assert re.search(r"(Maximum number of files is|at most) 2\b", err["message"])
    ok = limited.post("/predict/batch", files=files[:2])
    assert ok.status_code == 200
    assert all(item["ok"] for item in ok.json()["results"])


def test_full_queue_is_503_with_retry_after(make_client: Any, cat: bytes) -> None:
    client = make_client(variants=["v1-1.0-224"], queue_limit=1, max_batch_size=1)
    app = client.app
    metrics = app.state.service.metrics
    rejected_before = metrics.rejected.labels("v1-1.0-224")._value.get()

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            return await asyncio.gather(
                *(
                    ac.post("/predict", files={"file": ("c.bmp", cat)}, timeout=60)
                    for _ in range(24)
                )
            )

    responses = client.portal.call(burst)
    codes = Counter(r.status_code for r in responses)
    assert set(codes) == {200, 503}, codes
    for r in responses:
        if r.status_code == 200:
            assert top1(r.json())["index"] in CAT
        else:
            err = error_of(r, 503, "overloaded")
            assert "(1 of 1 units of work in flight)" in err["message"], err
            assert int(r.headers["retry-after"]) >= 1
            assert err["retry_after"] >= 1
    assert metrics.rejected.labels("v1-1.0-224")._value.get() - rejected_before == codes[503]


def test_while_loading_not_ready_and_predict_is_503(
    make_client: Any, monkeypatch: pytest.MonkeyPatch, cat: bytes
) -> None:
    """Loading is held back on purpose: /healthz answers, /readyz and /predict say wait."""
    from app.serving import service as service_module

    release = threading.Event()
    real = service_module.create_backend

    def held_back(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(service_module, "create_backend", held_back)
    try:
        client = make_client(ready=False)
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json() == {
            "status": "not_ready",
            "variants": [],
            "problems": ["models are loading"],
            "degraded": [],
        }
        r = post_image(client, cat)
        assert "still loading" in error_of(r, 503, "not_ready")["message"]
        assert r.headers["retry-after"] == "1"
        assert client.get("/models").json() == {
            "default": "",
            "aliases": {},
            "spellings": {},
            "models": [],
        }
    finally:
        release.set()
    for _ in range(600):
        if client.get("/readyz").status_code == 200:
            break
        time.sleep(0.05)
    assert client.get("/readyz").json()["variants"] == ["v1-0.25-128"]
    assert post_image(client, cat).status_code == 200


def test_draining_refuses_new_work(make_client: Any, cat: bytes) -> None:
    client = make_client()
    assert post_image(client, cat).status_code == 200
    client.app.state.service.begin_draining()
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["problems"] == ["shutting down"]
    r = post_image(client, cat)
    assert "shutting down" in error_of(r, 503, "shutting_down")["message"]
    assert r.headers["retry-after"] == "1"
    assert client.get("/healthz").status_code == 200


# -------------------------------------------------------------------------- operations
def test_healthz(app_client: Any) -> None:
    r = app_client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_readyz_lists_the_variants(app_client: Any) -> None:
    r = app_client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "variants": ALL_VARIANTS, "problems": [], "degraded": []}


def test_metrics_is_prometheus_text(app_client: Any, cat: bytes) -> None:
    assert post_image(app_client, cat, "model=v3").status_code == 200
    assert post_image(app_client, cat, "model=v9").status_code == 404
    r = app_client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "# TYPE mobilenet_requests_total counter" in text
    assert "# TYPE mobilenet_batch_size histogram" in text
    assert "mobilenet_batch_size_bucket{" in text
    ok = re.search(
        r'mobilenet_requests_total\{model="v3-small-1.0-224",route="/predict",status="200"\} '
        r"(\d+\.\d+)",
        text,
    )
    assert ok and float(ok.group(1)) >= 1
    assert re.search(r'mobilenet_requests_total\{[^}]*status="404"[^}]*\} [1-9]', text)
    # Admission state: nothing in flight once answered, and the live limit per variant.
    assert 'mobilenet_in_flight{variant="v3-small-1.0-224"} 0.0' in text
    limit = re.search(r'mobilenet_admission_limit\{variant="v3-small-1.0-224"\} (\d+)', text)
    service = app_client.app.state.service
    assert limit and int(limit.group(1)) == service.admission["v3-small-1.0-224"].limit()


def test_api_key_guards_predict_but_not_health(make_client: Any, cat: bytes) -> None:
    client = make_client(api_key="s3cret-key")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-key"}):
        r = post_image(client, cat, headers=headers)
        err = error_of(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in err["message"]
    r = client.post("/predict/batch", files=[("files", ("a.bmp", cat))])
    assert error_of(r, 401, "unauthorized")
    good = {"Authorization": "Bearer s3cret-key"}
    r = post_image(client, cat, headers=good)
    assert r.status_code == 200 and top1(r.json())["index"] in CAT
    r = client.post("/predict/batch", files=[("files", ("a.bmp", cat))], headers=good)
    assert r.status_code == 200 and r.json()["results"][0]["ok"]
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_openapi_documents_predict(app_client: Any) -> None:
    r = app_client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    predict = spec["paths"]["/predict"]["post"]
    content = predict["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["required"] == ["file"]
    assert content["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert "image/*" in content
    for code in ("200", "404", "413", "415", "422", "500", "503", "504"):
        assert code in predict["responses"], code
    assert "401" not in predict["responses"]  # no API key set: none is documented (contract)
    assert predict["responses"]["415"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    params = {p["name"] for p in predict["parameters"]}
    assert {"model", "width", "resolution", "variant", "topk", "timeout_ms"} <= params
    batch = spec["paths"]["/predict/batch"]["post"]
    assert batch["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["files"]
    for path in ("/models", "/healthz", "/readyz", "/metrics"):
        assert "get" in spec["paths"][path]


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
