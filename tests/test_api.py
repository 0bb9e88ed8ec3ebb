"""The HTTP API end to end: the real app, the real converted weights, real photos.

Two session apps (``app_client``: backend auto, every variant; ``torch_client``: the
PyTorch backend, four variants). Classification, ``/models`` and the operations routes
here; refusals and limits in ``test_api_refusals.py``, start-up in ``test_api_startup.py``.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import httpx
import pytest

from app.weights import SPECS_BY_NAME
from tests.api_helpers import (
    ALL_VARIANTS,
    CAT,
    CAT_LABELS,
    CHICKADEE,
    error_of,
    expected_backend,
    post_image,
    top1,
)


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
