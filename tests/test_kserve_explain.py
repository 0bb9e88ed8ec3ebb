"""KServe v1's explain verb answers what POST /explain does, per instance."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np


def test_v1_explain_matches_the_explain_route(app_client: Any, cat: bytes) -> None:
    body = {"instances": [{"image_bytes": {"b64": base64.b64encode(cat).decode()}}]}
    r = app_client.post("/v1/models/v3:explain", json=body)
    assert r.status_code == 200, r.text
    (v1,) = r.json()["explanations"]
    direct = app_client.post("/explain?model=v3", files={"file": ("cat.bmp", cat)}).json()
    assert v1["variant"]["name"] == direct["variant"]["name"]
    assert v1["saliency"]["class_index"] == direct["saliency"]["class_index"] == 285
    assert v1["saliency"]["forwards"] == 50
    # Same image, same variant, same occlusion plan: the same map.
    np.testing.assert_allclose(v1["saliency"]["values"], direct["saliency"]["values"], atol=1e-4)


def test_v1_explain_errors_in_the_protocols_shape(app_client: Any) -> None:
    r = app_client.post("/v1/models/nonesuch:explain", json={"instances": [{"b64": "AA=="}]})
    assert r.status_code == 404 and set(r.json()) == {"error"}
    bad = {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}
    r = app_client.post("/v1/models/v3:explain", json=bad)
    assert r.status_code == 400 and "format" in r.json()["error"].lower()
