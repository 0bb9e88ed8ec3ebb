"""Structured logs carry the request id; CORS is off unless configured; metrics move."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from app.observability.logging import configure_logging


@pytest.fixture
def json_logs():
    """Call it once to switch JSON logging on (after the app is up), then to read lines."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    started = False

    def read() -> list[dict]:
        nonlocal started
        if not started:
            configure_logging(json_logs=True, level="info", stream=stream)
            started = True
        lines = stream.getvalue().splitlines()
        stream.seek(0)
        stream.truncate()
        return [json.loads(line) for line in lines if line.startswith("{")]

    yield read
    root.handlers, root.level = saved


def test_json_access_log_has_the_request_id(
    make_client: Any, images_dir: Path, json_logs: Any
) -> None:
    client = make_client()
    json_logs()  # JSON logging on from here
    cat = (images_dir / "cat.bmp").read_bytes()
    r = client.post(
        "/predict?model=v1", files={"file": ("cat.bmp", cat)}, headers={"X-Request-ID": "trace-42"}
    )
    assert r.status_code == 200
    r = client.post(
        "/predict?model=v9", files={"file": ("cat.bmp", cat)}, headers={"X-Request-ID": "trace-43"}
    )
    assert r.status_code == 404
    lines = json_logs()
    access = {line["request_id"]: line for line in lines if line.get("path") == "/predict"}
    assert access["trace-42"]["status"] == 200 and access["trace-42"]["method"] == "POST"
    assert access["trace-43"]["status"] == 404
    assert access["trace-42"]["duration_ms"] > 0
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)


def test_cors_is_off_by_default(make_client: Any) -> None:
    client = make_client()
    r = client.options(
        "/predict",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(make_client: Any) -> None:
    client = make_client(cors_origins=["https://app.example"])
    ok = client.options(
        "/predict",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    other = client.get("/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
