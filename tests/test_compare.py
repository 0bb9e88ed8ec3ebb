"""POST /predict/compare: one image, every loaded variant, one decode per preprocessing.

Checked with the real weights against /predict itself: same top-k and scores per
variant, the published cost and accuracy figures of /models, and the decode count
(``prepare`` counted with monkeypatch).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pytest

CAT = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


def post(client: Any, path: str, data: bytes, **params: Any) -> httpx.Response:
    return client.post(path, params=params, files={"file": ("image.bmp", data)})


def test_compare_answers_every_variant_decoding_once_per_preprocessing(
    app_client: Any, cat: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.serving import service as service_module

    calls: list[int] = []
    real = service_module.prepare

    def counting(data: bytes, pre: Any, **kwargs: Any) -> np.ndarray:
        calls.append(pre.size)
        return real(data, pre, **kwargs)

    monkeypatch.setattr(service_module, "prepare", counting)
    models = app_client.get("/models").json()["models"]
    r = post(app_client, "/predict/compare", cat, topk=3)
    assert r.status_code == 200, r.text
    body = r.json()
    rows = body["results"]
    assert [row["variant"]["name"] for row in rows] == [m["name"] for m in models]
    # The mirror's seven variants have four input sizes; the four at 224 share a decode.
    sizes = Counter(m["resolution"] for m in models)
    assert sorted(calls) == sorted(sizes) and body["decodes"] == len(sizes) < len(models)
    monkeypatch.undo()
    for row, m in zip(rows, models, strict=True):
        assert row["ok"] and row["error"] is None
        assert (row["params"], row["macs"], row["accuracy"]) == (
            m["params"],
            m["macs"],
            m["accuracy"],
        )
        assert row["macs"] > 0
        assert len(row["predictions"]) == 3 and row["predictions"][0]["index"] in CAT
        t = row["timings"]
        assert 0 < t["inference_ms"] <= t["total_ms"] <= body["total_ms"]
        single = post(app_client, "/predict", cat, variant=m["name"], topk=3).json()
        assert [p["index"] for p in row["predictions"]] == [
            p["index"] for p in single["predictions"]
        ]
        for a, b in zip(row["predictions"], single["predictions"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    # Reported cost and accuracy rise with the width multiplier within V1.
    v1 = sorted((row for row in rows if row["variant"]["model"] == "v1"), key=lambda r: r["macs"])
    assert [r["accuracy"]["top1"] for r in v1] == sorted(r["accuracy"]["top1"] for r in v1)


def test_compare_of_a_corrupt_image_is_one_422(app_client: Any, cat: bytes) -> None:
    r = post(app_client, "/predict/compare", cat[: len(cat) // 3])
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "corrupt_image"


def test_compare_reports_a_full_variant_as_its_row(make_client: Any, cat: bytes) -> None:
    client = make_client(variants=["v1-0.25-128", "v1-0.5-160"])
    service = client.app.state.service
    small, full = (service.resolve(variant=n) for n in ("v1-0.25-128", "v1-0.5-160"))
    with contextlib.ExitStack() as held:
        for _ in range(service.admission[full.name].limit()):
            held.enter_context(service.admit(full))
        body = post(client, "/predict/compare", cat).json()
        by_name = {row["variant"]["name"]: row for row in body["results"]}
        assert by_name[small.name]["ok"] and by_name[small.name]["predictions"]
        assert not by_name[full.name]["ok"]
        assert by_name[full.name]["error"]["code"] == "overloaded"
        for _ in range(service.admission[small.name].limit()):
            held.enter_context(service.admit(small))
        r = post(client, "/predict/compare", cat)  # nobody has room: a plain 503
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1


def test_compare_on_the_torch_backend(torch_client: Any, cat: bytes) -> None:
    models = torch_client.get("/models").json()["models"]
    body = post(torch_client, "/predict/compare", cat).json()
    assert [r["variant"]["name"] for r in body["results"]] == [m["name"] for m in models]
    assert all(r["ok"] and r["variant"]["backend"] == "torch" for r in body["results"])
    assert all(r["predictions"][0]["index"] in CAT for r in body["results"])
