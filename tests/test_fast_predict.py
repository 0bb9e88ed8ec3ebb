"""POST /predict's fast route (app.api.fast_predict): plain requests skip FastAPI's
dependency solver, the rest fall through to the FastAPI route. Both must answer alike:
same body, headers and errors, with the real app and weights (``app_client``)."""

from __future__ import annotations

from typing import Any

import pytest

from app.api import fast_predict
from app.api.fast_predict import plain_query

CAT = {281, 282, 285}
VOLATILE = ("request_id", "timings")


@pytest.fixture
def fast_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The parameters of every request the fast route served."""
    calls: list[dict] = []
    original = fast_predict.FastPredictRoute.handle

    async def spy(self, scope, receive, send):
        calls.append(scope["fast_predict.params"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(fast_predict.FastPredictRoute, "handle", spy)
    return calls


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {}),
        ("model=v3&topk=3", {"model": "v3", "topk": 3}),
        ("width=0.5&resolution=160", {"width": 0.5, "resolution": 160}),
        ("variant=v1-0.5-160&fallback=nearest", {"variant": "v1-0.5-160", "fallback": "nearest"}),
        ("timeout_ms=2500", {"timeout_ms": 2500}),
        ("model=mobilenet%5Fv2", {"model": "mobilenet_v2"}),
        # Not plain: the FastAPI route judges them (and answers its documented 422s).
        ("topk=0", None),
        ("topk=21", None),
        ("width=abc", None),
        ("width=0", None),
        ("width=2.5", None),
        ("width=1e-1", None),
        ("resolution=16", None),
        ("timeout_ms=600001", None),
        ("fallback=always", None),
        ("model=", None),
        ("model=v1&model=v2", None),
        ("colour=red", None),
    ],
)
def test_plain_query(query: str, expected: dict | None) -> None:
    assert plain_query(query.encode()) == expected


def _comparable(body: dict) -> dict:
    out = {k: v for k, v in body.items() if k not in VOLATILE}
    if "error" in out:
        out["error"] = {k: v for k, v in out["error"].items() if k not in VOLATILE}
    return out


@pytest.mark.parametrize(
    "query",
    ["model=v3", "model=v2&topk=3", "width=0.5", "variant=v1-0.25-128", "model=v1&width=0.3"],
)
def test_fast_and_fastapi_routes_answer_alike(
    app_client: Any, cat: bytes, query: str, fast_calls: list[dict]
) -> None:
    """The same request served by the fast route, then by the FastAPI route (the fast
    one taken out of the router): the same body and headers."""
    files = {"file": ("cat.bmp", cat, "image/bmp")}
    fast = app_client.post(f"/predict?{query}", files=files)
    assert len(fast_calls) == 1
    routes = app_client.app.router.routes
    mine = routes.pop(0)
    assert isinstance(mine, fast_predict.FastPredictRoute)
    try:
        full = app_client.post(f"/predict?{query}", files=files)
    finally:
        routes.insert(0, mine)
    assert len(fast_calls) == 1  # the second went through FastAPI
    assert fast.status_code == full.status_code, (fast.text, full.text)
    assert _comparable(fast.json()) == _comparable(full.json())
    assert fast.headers["content-type"] == full.headers["content-type"]
    assert fast.headers.get("x-variant-fallback") == full.headers.get("x-variant-fallback")
    if fast.status_code == 200:
        assert {p["index"] for p in fast.json()["predictions"]} & CAT


def test_fallback_header_from_the_fast_route(
    app_client: Any, cat: bytes, fast_calls: list[dict]
) -> None:
    r = app_client.post(
        "/predict?model=v1&width=0.3&fallback=nearest", files={"file": ("c.bmp", cat)}
    )
    assert r.status_code == 200, r.text
    assert fast_calls == [{"model": "v1", "width": 0.3, "fallback": "nearest"}]
    assert r.headers["x-variant-fallback"].startswith("nearest;")
    assert r.json()["variant"]["fallback"] is not None


@pytest.mark.parametrize(
    ("query", "headers", "code"),
    [
        ("topk=0", {}, "invalid_request"),
        ("width=abc", {}, "invalid_request"),
        ("model=v3", {"X-Request-Timeout": "soon"}, "invalid_request"),
        ("model=nosuch", {}, "unknown_model"),
    ],
)
def test_errors_keep_their_shape(
    app_client: Any, cat: bytes, query: str, headers: dict, code: str
) -> None:
    r = app_client.post(f"/predict?{query}", files={"file": ("c.bmp", cat)}, headers=headers)
    assert r.status_code in (404, 422), r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["request_id"] == r.headers["x-request-id"]


def test_wrong_content_type_on_the_fast_route(app_client: Any, fast_calls: list[dict]) -> None:
    r = app_client.post(
        "/predict?model=v3", content=b"hello", headers={"content-type": "text/plain"}
    )
    assert fast_calls == [{"model": "v3"}]
    assert r.status_code == 415, r.text
    assert "multipart/form-data" in r.json()["error"]["message"]
