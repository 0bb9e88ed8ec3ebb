"""What the HTTP API refuses, and how: every bad request a clear 4xx in the common error
shape naming what was wrong and what is allowed; the limits (bytes, pixels, batch files,
queue, deadlines) on small per-test apps; not ready and draining.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.api_helpers import (
    ACCEPTED,
    ALL_VARIANTS,
    CAT,
    CHICKADEE,
    error_of,
    post_image,
    top1,
)


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
