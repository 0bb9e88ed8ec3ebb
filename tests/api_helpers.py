"""What the HTTP API tests share: the classes the real photos must get, every variant's
name, the accepted formats, and small request/answer helpers."""

from __future__ import annotations

from typing import Any

import httpx

from app.inference import litert_backend
from tests.shared_data import MIRROR_NAMES

CAT = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}
CHICKADEE = 19
ALL_VARIANTS = MIRROR_NAMES  # app_client loads every variant the mirror holds
ACCEPTED = ("JPEG", "PNG", "WebP", "BMP", "GIF", "TIFF")


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
