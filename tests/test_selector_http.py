"""The selector through the real app (``app_client``: every mirror variant, real weights):
the fallback header and field, the 422 for contradictions, the 404 messages, /models and
the OpenAPI document. The rules themselves are tabled in tests/test_selector.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

CAT = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


def post(client: Any, data: bytes, query: str, route: str = "/predict") -> httpx.Response:
    if route == "/predict/batch":
        files = [("files", ("a.bmp", data, "image/bmp")), ("files", ("b.bmp", data, "image/bmp"))]
        return client.post(f"{route}?{query}", files=files)
    return client.post(f"{route}?{query}", files={"file": ("cat.bmp", data, "image/bmp")})


def error_of(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["request_id"] == r.headers["x-request-id"]
    return err


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("width=0.5", "v1-0.5-160"),  # issue 22: used to be a 404 from the default model, V2
        ("resolution=192", "v1-0.75-192"),
        ("model=MobileNetV2", "v2-1.0-224"),
        ("model=mobilenet_v3_small", "v3-small-1.0-224"),
        ("model=V3", "v3-small-1.0-224"),
        ("variant=mobilenet_v1_0.5_160_quant", "v1-0.5-160"),
        ("variant=v3-small_224_1.0_uint8", "v3-small-1.0-224"),
        ("variant=V1-0.25-128&model=mobilenet_v1&width=0.25", "v1-0.25-128"),
    ],
)
def test_spellings_people_type_are_served(
    app_client: Any, cat: bytes, query: str, expected: str
) -> None:
    r = post(app_client, cat, query)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["variant"]["name"] == expected
    assert body["variant"]["fallback"] is None
    assert "x-variant-fallback" not in r.headers
    assert {p["index"] for p in body["predictions"]} & CAT, body["predictions"]


@pytest.mark.parametrize("route", ["/predict", "/predict/batch"])
def test_fallback_nearest_serves_and_says_so(app_client: Any, cat: bytes, route: str) -> None:
    r = post(app_client, cat, "model=v1&width=0.6&fallback=nearest", route)
    assert r.status_code == 200, r.text
    assert r.headers["x-variant-fallback"] == (
        'nearest; asked="model v1, width 0.6"; served="v1-0.5-160"'
    )
    variant = r.json()["variant"]
    assert variant["name"] == "v1-0.5-160"
    assert (variant["model"], variant["width"], variant["resolution"]) == ("v1", 0.5, 160)
    fb = variant["fallback"]
    assert (fb["asked"], fb["served"]) == ("model v1, width 0.6", "v1-0.5-160")
    assert fb["reason"].startswith("width 0.6 is not loaded for v1; loaded widths: 0.25, 0.5")
    predictions = (
        r.json()["predictions"] if route == "/predict" else r.json()["results"][0]["predictions"]
    )
    assert {p["index"] for p in predictions} & CAT, predictions


def test_fallback_for_a_resolution(app_client: Any, cat: bytes) -> None:
    r = post(app_client, cat, "model=v1&width=0.75&resolution=160&fallback=nearest")
    assert r.status_code == 200, r.text
    assert r.json()["variant"]["name"] == "v1-0.75-192"
    assert 'served="v1-0.75-192"' in r.headers["x-variant-fallback"]


def test_without_fallback_the_404_names_the_nearest(app_client: Any, cat: bytes) -> None:
    err = error_of(post(app_client, cat, "model=v1&width=0.6"), 404, "unknown_model")
    assert err["message"] == (
        "width 0.6 is not loaded for v1; loaded widths: 0.25, 0.5, 0.75, 1; "
        "nearest loaded: 0.5 (v1-0.5-160), 0.75 (v1-0.75-224)"
    )
    assert err["nearest"] == ["v1-0.5-160", "v1-0.75-224"]
    assert err["widths"] == [0.25, 0.5, 0.75, 1.0]


def test_width_no_model_has_lists_each_models_widths(app_client: Any, cat: bytes) -> None:
    err = error_of(post(app_client, cat, "width=0.6"), 404, "unknown_model")
    assert "width 0.6 is not loaded for any model" in err["message"]
    assert "loaded widths: v1: 0.25, 0.5, 0.75, 1; v2: 1; v3-small: 1" in err["message"]
    assert err["widths"] == {"v1": [0.25, 0.5, 0.75, 1.0], "v2": [1.0], "v3-small": [1.0]}


def test_fallback_never_serves_another_model(app_client: Any, cat: bytes) -> None:
    err = error_of(post(app_client, cat, "model=v3-large&fallback=nearest"), 404, "unknown_model")
    assert "model 'v3-large' is not loaded" in err["message"]


@pytest.mark.parametrize("route", ["/predict", "/predict/batch"])
def test_contradictory_parameters_are_422_naming_both(
    app_client: Any, cat: bytes, route: str
) -> None:
    r = post(app_client, cat, "variant=v1-0.5-160&model=v3", route)
    err = error_of(r, 422, "conflicting_parameters")
    assert "model='v3' means model v3" in err["message"]
    assert "variant='v1-0.5-160' means model v1" in err["message"]
    assert err["parameters"] == ["model", "variant"]
    assert err["values"] == {"model": "v3", "variant": "v1-0.5-160"}


def test_bad_fallback_value_is_422_naming_it(app_client: Any, cat: bytes) -> None:
    err = error_of(post(app_client, cat, "fallback=closest"), 422, "invalid_request")
    assert err["message"].startswith("fallback: ")
    assert "nearest" in err["message"]


def test_models_documents_spellings_and_release_names(app_client: Any) -> None:
    body = app_client.get("/models").json()
    assert body["spellings"]["v2"][:3] == ["v2", "mobilenet_v2", "MobileNetV2"]
    assert "MobileNet" in body["spellings"]["v1"]
    assert "mobilenet_v3_small" in body["spellings"]["v3-small"]
    assert "v3-large" not in body["spellings"]  # not loaded here
    models = {m["name"]: m for m in body["models"]}
    assert "mobilenet_v1_0.5_160_quant" in models["v1-0.5-160"]["release_names"]
    assert "v3-small_224_1.0_uint8" in models["v3-small-1.0-224"]["release_names"]
    # Each listed name is accepted as written.
    for name in models["v1-0.75-192"]["release_names"]:
        assert app_client.post(f"/predict?variant={name}").status_code != 404, name


def test_openapi_describes_the_accepted_values(app_client: Any) -> None:
    op = app_client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    params = {p["name"]: p for p in op["parameters"]}
    for spelling in ("mobilenet_v2", "MobileNetV2", "MobileNet", "mobilenet_v3_small"):
        assert spelling in params["model"]["description"], spelling
    assert "mobilenet_v1_0.5_160" in params["variant"]["description"]
    assert "v3-small_224_1.0_uint8" in params["variant"]["description"]
    assert "most accurate" in params["width"]["description"]
    schema = params["fallback"]["schema"]  # no null branch: optional means "leave it out"
    fallback = schema["anyOf"][0] if "anyOf" in schema else schema
    assert fallback["enum"] == ["none", "nearest"]
    assert "X-Variant-Fallback" in op["responses"]["200"]["headers"]
    assert "conflicting_parameters" in op["responses"]["422"]["description"]


def test_fast_reject_resolves_with_the_same_rules(make_client: Any, cat: bytes) -> None:
    """The middleware that refuses a flood before the app resolves the variant from the raw
    query with the same selector: a fallback request to a full variant is refused there;
    a contradiction falls through to the app's precise 422, never a 503."""
    from app.api.middleware import FastRejectMiddleware

    client = make_client(variants=["v1-0.25-128"])
    service = client.app.state.service
    fast = FastRejectMiddleware(client.app, service=lambda: service)
    gate = service.admission["v1-0.25-128"]
    query = b"model=MobileNet&width=0.3&fallback=nearest"
    headers = {"content-type": "image/bmp"}
    gate.in_flight = gate.limit()  # pretend the variant is full
    try:
        assert fast._refusal({"query_string": query}) is not None
        assert fast._refusal({"query_string": b"model=MobileNet&width=0.3"}) is None  # 404
        assert fast._refusal({"query_string": b"model=v2&variant=v1-0.25-128"}) is None
        r = client.post(f"/predict?{query.decode()}", content=cat, headers=headers)
        assert r.status_code == 503, r.text
        r = client.post("/predict?model=v2&variant=v1-0.25-128", content=cat, headers=headers)
        assert r.status_code == 422 and r.json()["error"]["code"] == "conflicting_parameters"
    finally:
        gate.in_flight = 0
    assert fast._refusal({"query_string": query}) is None
    r = client.post(f"/predict?{query.decode()}", content=cat, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["variant"]["fallback"]["served"] == "v1-0.25-128"
