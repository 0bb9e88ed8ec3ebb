"""KServe v1 / TF Serving REST and TorchServe's inference API against a real server
process (curl for TorchServe, as its users call it), plus what every protocol route
shares: the API key, the request id, metrics by route.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

try:
    from tests.servers import ServerProcess, start_server
except ImportError:  # tests/ itself on sys.path
    from servers import ServerProcess, start_server

pytestmark = pytest.mark.slow

V1 = "v1-0.5-160"
V3 = "v3-small-1.0-224"


@pytest.fixture(scope="module")
def server(weights_dir: Path) -> Iterator[ServerProcess]:
    srv = start_server(
        weights_dir,
        variants=[V1, V3],
        env={"MOBILENET_THREADS": "1", "MOBILENET_DECODE_THREADS": "2"},
        ready_timeout=180,
    )
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def cat_path(images_dir: Path) -> Path:
    return images_dir / "cat.bmp"


@pytest.fixture(scope="module")
def cat(cat_path: Path) -> bytes:
    return cat_path.read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def predict_top5(server: ServerProcess, data: bytes, variant: str) -> list[dict]:
    r = httpx.post(
        f"{server.url}/predict",
        params={"variant": variant},
        files={"file": ("cat.bmp", data, "image/bmp")},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


# --- TorchServe -------------------------------------------------------------------------------
def curl(*args: str) -> tuple[int, Any]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    out = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


@pytest.mark.parametrize("path", ["/predictions/v3", "/predictions/v3/1.0"])
def test_torchserve_curl_upload_gives_the_top5_like_predict(
    server: ServerProcess, cat: bytes, cat_path: Path, path: str
) -> None:
    status, body = curl(f"{server.url}{path}", "-T", str(cat_path))  # a PUT, as TorchServe's docs
    assert status == 200, body
    expected = predict_top5(server, cat, V3)
    assert list(body) == [p["label"] for p in expected]  # most likely first
    assert next(iter(body)) == "Egyptian cat"
    for p in expected:
        assert body[p["label"]] == pytest.approx(p["score"], abs=1e-6)


@pytest.mark.parametrize("field", ["data", "file"])
def test_torchserve_multipart_fields_and_post(
    server: ServerProcess, cat: bytes, field: str
) -> None:
    r = httpx.post(f"{server.url}/predictions/{V1}", files={field: ("c.bmp", cat)}, timeout=60)
    assert r.status_code == 200, r.text
    assert next(iter(r.json())) == predict_top5(server, cat, V1)[0]["label"] == "Egyptian cat"


@pytest.mark.parametrize(
    ("path", "body", "status", "kind"),
    [
        ("/predictions/v9", b"x", 404, "ModelNotFoundException"),
        ("/predictions/v3/2.0", b"x", 404, "ModelNotFoundException"),
        ("/predictions/v3", b"", 400, "BadRequestException"),
        ("/predictions/v3", b"BM" + b"\0" * 40, 400, "BadRequestException"),
        ("/predictions/v3", b"%PDF-1.4 not an image", 400, "BadRequestException"),
    ],
)
def test_torchserve_errors_in_its_shape(
    server: ServerProcess, path: str, body: bytes, status: int, kind: str
) -> None:
    r = httpx.post(f"{server.url}{path}", content=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["code"] == status and r.json()["type"] == kind
    assert r.json()["message"]


def test_torchserve_ping(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/ping", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "Healthy"}


# --- KServe v1 / TF Serving -----------------------------------------------------------------
@pytest.mark.parametrize(
    "instance",
    [lambda s: {"b64": s}, lambda s: {"image_bytes": {"b64": s}}],
    ids=["b64", "image_bytes"],
)
@pytest.mark.parametrize(("name", "variant"), [("v3", V3), (V1, V1)])
def test_tf_serving_b64_request_gives_the_same_top1_as_predict(
    server: ServerProcess, cat: bytes, instance: Any, name: str, variant: str
) -> None:
    r = httpx.post(
        f"{server.url}/v1/models/{name}:predict",
        json={"instances": [instance(b64(cat))]},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    (pred,) = r.json()["predictions"]
    expected = predict_top5(server, cat, variant)
    assert pred["classes"] == [p["index"] for p in expected]
    assert pred["labels"][0] == "Egyptian cat"
    assert pred["scores"] == pytest.approx([p["score"] for p in expected], abs=1e-6)


def histogram(server: ServerProcess, metric: str, variant: str) -> tuple[float, float]:
    """(count, sum) of a per-variant Prometheus histogram."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    count = re.search(rf'{metric}_count{{variant="{variant}"}} (\S+)', text)
    total = re.search(rf'{metric}_sum{{variant="{variant}"}} (\S+)', text)
    return (float(count.group(1)), float(total.group(1))) if count and total else (0.0, 0.0)


def one_request_of(server: ServerProcess, variant: str, n: int, call) -> object:
    """Run ``call``; check its n images were ONE batcher request and all of them ran."""
    requests = histogram(server, "mobilenet_client_batch_images", variant)
    batches = histogram(server, "mobilenet_batch_size", variant)
    result = call()
    requests_after = histogram(server, "mobilenet_client_batch_images", variant)
    batches_after = histogram(server, "mobilenet_batch_size", variant)
    assert (requests_after[0] - requests[0], requests_after[1] - requests[1]) == (1, n)
    assert batches_after[1] - batches[1] == n  # every image ran ...
    assert batches_after[0] - batches[0] <= n  # ... in batches cut from that one request
    return result


def test_tf_serving_instances_are_one_request_and_keys_echo(
    server: ServerProcess, cat: bytes, images_dir: Path
) -> None:
    bird = (images_dir / "bird.bmp").read_bytes()
    r = one_request_of(
        server,
        V3,
        2,
        lambda: httpx.post(
            f"{server.url}/v1/models/v3:predict",
            json={
                "instances": [
                    {"image_bytes": {"b64": b64(cat)}, "key": "a"},
                    {"image_bytes": {"b64": b64(bird)}, "key": "b"},
                ]
            },
            timeout=60,
        ),
    )
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["key"] for p in preds] == ["a", "b"]
    assert [p["classes"][0] for p in preds] == [285, 19]
    columnar = httpx.post(
        f"{server.url}/v1/models/v3:predict",
        json={"inputs": {"image_bytes": [{"b64": b64(cat)}, {"b64": b64(bird)}]}},
        timeout=60,
    )
    assert [p["classes"][0] for p in columnar.json()["outputs"]] == [285, 19]


def test_tf_serving_model_status(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/v1/models/v3", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == V3 and body["ready"] is True
    assert body["model_version_status"][0]["state"] == "AVAILABLE"
    missing = httpx.get(f"{server.url}/v1/models/v9", timeout=10)
    assert missing.status_code == 404 and "v9" in missing.json()["error"]


@pytest.mark.parametrize(
    ("name", "body", "status", "needle"),
    [
        ("v9", {"instances": [{"b64": "AAAA"}]}, 404, "v9"),
        ("v3", {"instances": [{"b64": "not base64!"}]}, 400, "base64"),
        ("v3", {"instances": [{"b64": b64(b"BM" + b"\0" * 40)}]}, 400, "image"),
        ("v3", {"instances": ["plain string"]}, 400, "b64"),
        ("v3", {}, 400, "instances"),
        ("v3", {"instances": []}, 400, "instances"),
        ("v3", {"instances": [{"b64": "AAAA"}], "extra": 1}, 400, "extra"),
    ],
)
def test_tf_serving_errors_in_its_shape(
    server: ServerProcess, name: str, body: dict, status: int, needle: str
) -> None:
    r = httpx.post(f"{server.url}/v1/models/{name}:predict", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and needle in r.json()["error"]


# --- shared: request id, metrics by route ------------------------------------------------------
def test_request_id_and_metrics_by_protocol_route(server: ServerProcess, cat: bytes) -> None:
    calls = [
        ("POST", f"/predictions/{V3}", {"content": cat}),
        ("POST", "/v1/models/v3:predict", {"json": {"instances": [{"b64": b64(cat)}]}}),
        ("GET", "/v2/models/v3", {}),
    ]
    for method, path, kw in calls:
        r = httpx.request(
            method, f"{server.url}{path}", headers={"X-Request-ID": "proto-42"}, timeout=60, **kw
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == "proto-42"
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for route in ("/predictions/{name}", "/v1/models/{name}:predict", "/v2/models/{name}"):
        assert re.search(
            rf'mobilenet_requests_total{{model="{V3}",route="{re.escape(route)}",status="200"}}',
            text,
        ), route


def test_api_key_is_required_on_every_protocol_route(make_client: Any, cat: bytes) -> None:
    client = make_client(api_key="s3cret")
    variant = client.get("/models").json()["default"]
    v2 = {"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": [b64(cat)]}]}
    calls = [
        (f"/v2/models/{variant}/infer", {"json": v2}, lambda b: set(b) == {"error"}),
        (f"/v1/models/{variant}:predict", {"json": {"instances": [{"b64": b64(cat)}]}}, None),
        (f"/predictions/{variant}", {"content": cat}, lambda b: b["type"] == "InvalidKeyException"),
    ]
    for path, kw, shape in calls:
        refused = client.post(path, **kw)
        assert refused.status_code == 401, (path, refused.text)
        assert refused.headers["www-authenticate"] == "Bearer"
        assert shape is None or shape(refused.json())
        wrong = client.post(path, headers={"Authorization": "Bearer nope"}, **kw)
        assert wrong.status_code == 401
        ok = client.post(path, headers={"Authorization": "Bearer s3cret"}, **kw)
        assert ok.status_code == 200, (path, ok.text)


def test_bodies_over_the_limit_are_413_in_the_protocol_shape(make_client: Any) -> None:
    client = make_client(max_upload_bytes=4096)
    big = {"instances": [{"b64": "A" * 8000}]}
    v2 = {"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["A" * 8000]}]}
    for path, body in (("/v1/models/v1:predict", big), ("/v2/models/v1/infer", v2)):
        announced = client.post(path, json=body)  # Content-Length says it up front
        assert announced.status_code == 413, announced.text
        assert set(announced.json()) == {"error"} and "4096" in announced.json()["error"]
        data = json.dumps(body).encode()
        streamed = client.post(  # chunked: no Content-Length, refused while it streams
            path, content=(data[i : i + 1000] for i in range(0, len(data), 1000))
        )
        assert streamed.status_code == 413, streamed.text
        assert set(streamed.json()) == {"error"}
