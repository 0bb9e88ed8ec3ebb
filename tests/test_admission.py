"""Admission control: the latency-gradient concurrency limit and the fast 503 path."""

from __future__ import annotations

from typing import Any

import pytest

from app.errors import Overloaded
from app.serving.admission import Admission


def gate(**kw: Any) -> Admission:
    return Admission(name="v", **{"hard_limit": 64, "cold_limit": 16, "target_s": 0.3, **kw})


def test_cold_limit_until_latency_is_measured() -> None:
    g = gate()
    assert g.limit() == 16
    for _ in range(16):
        g.enter()
    with pytest.raises(Overloaded) as exc:
        g.enter()
    assert exc.value.retry_after >= 1 and "16 requests in flight" in exc.value.message


def test_fast_answers_grow_the_limit_to_the_hard_cap() -> None:
    g = gate()
    for _ in range(200):
        g.record(latency_s=0.01)
    assert g.limit() == 64


def test_slow_answers_shrink_the_limit_but_never_below_the_minimum() -> None:
    g = gate()
    for _ in range(50):
        g.record(latency_s=0.9)  # three times the target
    assert g.limit() < 16
    for _ in range(500):
        g.record(latency_s=30.0)
    assert g.limit() == 2


def test_limit_settles_where_latency_meets_the_target() -> None:
    """Simulate a server whose latency is in_flight / 50 per second (capacity 50/s)."""
    g = gate(cold_limit=64)
    for _ in range(300):
        g.record(latency_s=g.limit() / 50)
    assert 12 <= g.limit() <= 18  # 0.3 s * 50/s = 15


def test_leave_frees_a_slot_and_retry_after_tracks_the_backlog() -> None:
    g = gate(cold_limit=2)
    g.enter()
    g.enter()
    assert g.full()
    g.leave()
    assert not g.full()
    g.enter()
    for _ in range(20):
        g.record(latency_s=3.0)
    assert g.retry_after_s() >= 1


def test_fast_reject_answers_503_before_the_app(make_client: Any, cat_bytes: bytes) -> None:
    client = make_client(variants=["v1-0.25-128"])
    service = client.app.state.service
    g = service.admission["v1-0.25-128"]
    g.in_flight = g.limit()  # pretend the variant is full
    try:
        r = client.post(
            "/predict?model=v1",
            content=cat_bytes,
            headers={"content-type": "image/bmp", "x-request-id": "flood-1"},
        )
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) >= 1
        body = r.json()["error"]
        assert body["code"] == "overloaded" and body["request_id"] == "flood-1"
        assert r.headers["x-request-id"] == "flood-1"
        # Bad parameters still get their precise error from the app, not a 503.
        assert (
            client.post(
                "/predict?model=v9", content=cat_bytes, headers={"content-type": "image/bmp"}
            ).status_code
            == 404
        )
    finally:
        g.in_flight = 0
    assert (
        client.post(
            "/predict?model=v1", content=cat_bytes, headers={"content-type": "image/bmp"}
        ).status_code
        == 200
    )


@pytest.fixture
def cat_bytes(images_dir: Any) -> bytes:
    return (images_dir / "cat.bmp").read_bytes()
