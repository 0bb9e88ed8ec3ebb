"""Open Inference Protocol v2 over REST, driven by NVIDIA's official client (tritonclient.http)
against a real server process, with the real weights and photos.

Every answer is checked against what ``/predict`` says for the same image and variant.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

try:
    from tests.servers import ServerProcess, start_server
except ImportError:  # tests/ itself on sys.path
    from servers import ServerProcess, start_server

pytestmark = pytest.mark.slow

V1 = "v1-0.5-160"
V3 = "v3-small-1.0-224"
EGYPTIAN_CAT = 285


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
def client(server: ServerProcess) -> Iterator[Any]:
    c = tritonhttp.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=60)
    yield c
    c.close()


def predict_top5(server: ServerProcess, data: bytes, variant: str) -> list[dict]:
    r = httpx.post(
        f"{server.url}/predict",
        params={"variant": variant},
        files={"file": ("cat.bmp", data, "image/bmp")},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def image_input(images: list[bytes], *, binary: bool = True) -> Any:
    inp = tritonhttp.InferInput("IMAGE", [len(images)], "BYTES")
    if binary:
        inp.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    else:  # JSON: each image as base64 text
        text = [base64.b64encode(x).decode() for x in images]
        inp.set_data_from_numpy(np.array(text, dtype=np.object_), binary_data=False)
    return inp


def assert_matches_predict(probs: np.ndarray, expected: list[dict]) -> None:
    top = np.argsort(-probs)[: len(expected)]
    assert top[0] == expected[0]["index"] == EGYPTIAN_CAT
    for p in expected:
        assert probs[p["index"]] == pytest.approx(p["score"], abs=1e-6)


def test_health_and_server_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "mobilenet-serve"
    assert {"classification", "binary_tensor_data"} <= set(meta["extensions"])


@pytest.mark.parametrize(("name", "variant"), [("v3", V3), (V1, V1), ("V1-0.5-160", V1)])
def test_model_metadata_and_readiness(client: Any, name: str, variant: str) -> None:
    assert client.is_model_ready(name)
    assert client.is_model_ready(name, model_version="1")
    meta = client.get_model_metadata(name)
    size = int(variant.split("-")[-1])
    assert meta["name"] == variant and meta["versions"] == ["1"]
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["inputs"]} == {
        ("IMAGE", "BYTES", (-1,)),
        ("PIXELS", "UINT8", (-1, size, size, 3)),
    }
    assert meta["outputs"] == [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, 1000]}]


@pytest.mark.parametrize(("name", "variant"), [("v3", V3), (V1, V1)])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_input_classifies_the_cat_like_predict(
    client: Any, server: ServerProcess, cat: bytes, name: str, variant: str, binary: bool
) -> None:
    out = tritonhttp.InferRequestedOutput("PROBABILITIES", binary_data=binary)
    result = client.infer(name, [image_input([cat], binary=binary)], outputs=[out])
    probs = result.as_numpy("PROBABILITIES")
    assert probs.shape == (1, 1000) and probs.dtype == np.float32
    assert_matches_predict(probs[0], predict_top5(server, cat, variant))
    assert result.get_response()["model_name"] == variant


@pytest.mark.parametrize("variant", [V3, V1])
def test_uint8_pixels_input_gives_the_same_probabilities(
    client: Any, server: ServerProcess, cat: bytes, variant: str
) -> None:
    from app.imaging import prepare
    from app.weights import SPECS_BY_NAME

    pixels = prepare(cat, SPECS_BY_NAME[variant].preprocessing, max_pixels=10**8)[None]
    inp = tritonhttp.InferInput("PIXELS", list(pixels.shape), "UINT8")
    inp.set_data_from_numpy(pixels, binary_data=True)
    probs = client.infer(variant, [inp]).as_numpy("PROBABILITIES")
    assert_matches_predict(probs[0], predict_top5(server, cat, variant))
    inp.set_data_from_numpy(pixels, binary_data=False)  # JSON numbers
    json_probs = client.infer(variant, [inp]).as_numpy("PROBABILITIES")
    np.testing.assert_array_equal(json_probs, probs)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension_top5_strings(
    client: Any, server: ServerProcess, cat: bytes, binary: bool
) -> None:
    out = tritonhttp.InferRequestedOutput("PROBABILITIES", binary_data=binary, class_count=5)
    result = client.infer("v3", [image_input([cat])], outputs=[out])
    rows = result.as_numpy("PROBABILITIES")
    assert rows.shape == (1, 5)
    parsed = []
    for cell in rows[0]:
        text = cell.decode() if isinstance(cell, bytes) else cell
        score, index, label = re.fullmatch(r"([0-9.]+):(\d+):(.+)", text).groups()
        parsed.append((float(score), int(index), label))
    expected = predict_top5(server, cat, V3)
    assert [i for _, i, _ in parsed] == [p["index"] for p in expected]
    assert [label for _, _, label in parsed] == [p["label"] for p in expected]
    for (score, _, _), p in zip(parsed, expected, strict=True):
        assert score == pytest.approx(p["score"], abs=1e-6)
    assert parsed[0][2] == "Egyptian cat"


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


def test_a_batch_of_8_images_is_one_request_not_8(
    client: Any, server: ServerProcess, cat: bytes, images_dir: Path
) -> None:
    bird = (images_dir / "bird.bmp").read_bytes()
    result = one_request_of(server, V1, 8, lambda: client.infer(V1, [image_input([cat, bird] * 4)]))
    probs = result.as_numpy("PROBABILITIES")
    assert probs.shape == (8, 1000)
    assert list(probs.argmax(axis=1)) == [EGYPTIAN_CAT, 19] * 4  # chickadee


def test_unknown_model_and_version_are_404(client: Any, cat: bytes) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("v9", [image_input([cat])])
    assert info.value.status() == "404" and "v9" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("v3", model_version="7")
    assert info.value.status() == "404" and "version" in info.value.message()
    assert not client.is_model_ready("v9")


def test_corrupt_image_is_400_naming_the_image(client: Any, cat: bytes) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("v3", [image_input([cat, cat[: len(cat) // 3]])])
    assert info.value.status() == "400"
    assert "image 1 of 2" in info.value.message()


def test_timeout_parameter_is_the_deadline(client: Any, cat: bytes) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("v3", [image_input([cat])], timeout=1)  # 1 microsecond
    assert info.value.status() == "504"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"inputs": []}, "inputs"),
        ({"inputs": [{"name": "X", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}]}, "IMAGE"),
        ({"inputs": [{"name": "IMAGE", "shape": [2], "datatype": "BYTES", "data": ["AA=="]}]}, "2"),
        ({"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["%%"]}]}, "b"),
        ({"inputs": [{"name": "PIXELS", "shape": [1, 2, 2, 3], "datatype": "UINT8"}]}, "224"),
        ({"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "FP32", "data": [1]}]}, "BYTES"),
        ({"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES"}]}, "neither"),
        ({"inputs": [], "bogus": 1}, "bogus"),
    ],
)
def test_bad_requests_get_400_in_the_v2_error_shape(
    server: ServerProcess, body: dict, needle: str
) -> None:
    r = httpx.post(f"{server.url}/v2/models/v3/infer", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and needle in r.json()["error"]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(
    client: Any, server: ServerProcess, cat: bytes, algorithm: str
) -> None:
    result = client.infer("v3", [image_input([cat])], request_compression_algorithm=algorithm)
    expected = predict_top5(server, cat, V3)
    assert_matches_predict(result.as_numpy("PROBABILITIES")[0], expected)


def test_a_compressed_bomb_stops_at_the_upload_limit(make_client: Any) -> None:
    import gzip

    client = make_client(max_upload_bytes=64 * 1024)
    bomb = gzip.compress(b"{" + b" " * (10 * 1024 * 1024) + b"}")  # 10 MiB of JSON, ~10 KiB
    r = client.post("/v2/models/v1/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413 and "inflates past" in r.json()["error"]
    bad = client.post("/v2/models/v1/infer", content=b"nope", headers={"Content-Encoding": "gzip"})
    assert bad.status_code == 400 and "gzip" in bad.json()["error"]
