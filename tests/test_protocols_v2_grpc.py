"""Open Inference Protocol v2 over gRPC, driven by NVIDIA's official client
(tritonclient.grpc) against a real server process with the real weights; plus the
.proto itself: compiled as committed, and wire-identical to the client's copy.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

tritongrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

try:
    from tests.servers import ServerProcess, free_port, start_server
except ImportError:  # tests/ itself on sys.path
    from servers import ServerProcess, free_port, start_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
V1 = "v1-0.5-160"
V3 = "v3-small-1.0-224"
EGYPTIAN_CAT = 285


@pytest.fixture(scope="module")
def server(weights_dir: Path) -> Iterator[tuple[ServerProcess, int]]:
    port = free_port()
    srv = start_server(
        weights_dir,
        variants=[V1, V3],
        env={
            "MOBILENET_THREADS": "1",
            "MOBILENET_DECODE_THREADS": "2",
            "MOBILENET_GRPC_PORT": str(port),
        },
        ready_timeout=180,
    )
    try:
        yield srv, port
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server: tuple[ServerProcess, int]) -> Iterator[Any]:
    c = tritongrpc.InferenceServerClient(url=f"127.0.0.1:{server[1]}")
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


def image_input(images: list[bytes]) -> Any:
    inp = tritongrpc.InferInput("IMAGE", [len(images)], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=np.object_))
    return inp


def test_health_and_metadata(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("v3") and client.is_model_ready(V1, model_version="1")
    assert not client.is_model_ready("v9")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "mobilenet-serve" and "classification" in meta["extensions"]
    model = client.get_model_metadata("v3", as_json=True)
    assert model["name"] == V3
    assert [(t["name"], t["datatype"]) for t in model["inputs"]] == [
        ("IMAGE", "BYTES"),
        ("PIXELS", "UINT8"),
    ]
    assert model["outputs"][0]["shape"] == ["-1", "1000"]  # int64 as JSON strings


@pytest.mark.parametrize(("name", "variant"), [("v3", V3), (V1, V1)])
def test_bytes_input_classifies_the_cat_like_predict(
    client: Any, server: tuple[ServerProcess, int], cat: bytes, name: str, variant: str
) -> None:
    result = client.infer(name, [image_input([cat])])
    probs = result.as_numpy("PROBABILITIES")
    assert probs.shape == (1, 1000) and probs.dtype == np.float32
    expected = predict_top5(server[0], cat, variant)
    assert int(probs[0].argmax()) == expected[0]["index"] == EGYPTIAN_CAT
    for p in expected:
        assert probs[0, p["index"]] == pytest.approx(p["score"], abs=1e-6)
    assert result.get_response().model_name == variant


def test_uint8_pixels_and_classification(
    client: Any, server: tuple[ServerProcess, int], cat: bytes
) -> None:
    from app.imaging import prepare
    from app.weights import SPECS_BY_NAME

    pixels = prepare(cat, SPECS_BY_NAME[V3].preprocessing, max_pixels=10**8)[None]
    inp = tritongrpc.InferInput("PIXELS", list(pixels.shape), "UINT8")
    inp.set_data_from_numpy(pixels)
    out = tritongrpc.InferRequestedOutput("PROBABILITIES", class_count=5)
    rows = client.infer("v3", [inp], outputs=[out]).as_numpy("PROBABILITIES")
    assert rows.shape == (1, 5)
    parsed = [re.fullmatch(r"([0-9.]+):(\d+):(.+)", c.decode()).groups() for c in rows[0]]
    expected = predict_top5(server[0], cat, V3)
    assert [int(i) for _, i, _ in parsed] == [p["index"] for p in expected]
    assert parsed[0][2] == "Egyptian cat"
    assert [float(s) for s, _, _ in parsed] == pytest.approx(
        [p["score"] for p in expected], abs=1e-6
    )


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


def test_a_batch_of_8_is_one_request(
    client: Any, server: tuple[ServerProcess, int], cat: bytes, images_dir: Path
) -> None:
    bird = (images_dir / "bird.bmp").read_bytes()
    result = one_request_of(
        server[0], V1, 8, lambda: client.infer(V1, [image_input([cat, bird] * 4)])
    )
    assert list(result.as_numpy("PROBABILITIES").argmax(axis=1)) == [EGYPTIAN_CAT, 19] * 4
    text = httpx.get(f"{server[0].url}/metrics", timeout=10).text
    route = "/inference.GRPCInferenceService/ModelInfer"
    assert f'mobilenet_requests_total{{model="{V1}",route="{route}",status="OK"}}' in text


def test_errors_are_grpc_status_codes(client: Any, cat: bytes) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("v9", [image_input([cat])])
    assert info.value.status() == "StatusCode.NOT_FOUND" and "v9" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("v3", [image_input([cat[: len(cat) // 3]])])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "image 0" in info.value.message()
    bad = tritongrpc.InferInput("PIXELS", [1, 8, 8, 3], "UINT8")
    bad.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(InferenceServerException) as info:
        client.infer("v3", [bad])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "224" in info.value.message()


def test_deadline_parameter_reaches_the_batcher(client: Any, cat: bytes) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("v3", [image_input([cat])], timeout=1)  # parameters.timeout = 1 us
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "deadline" in info.value.message()  # the server's answer, not the client's


def test_deadline_is_the_sooner_of_the_grpc_deadline_and_the_default() -> None:
    import time
    from types import SimpleNamespace

    from app.protocols.oip_v2_grpc import InferenceServicer, messages
    from app.settings import Settings

    servicer = InferenceServicer.__new__(InferenceServicer)
    servicer.settings = Settings(request_timeout_ms=10_000)
    request = messages()["ModelInferRequest"]()
    for remaining, expected in ((0.25, 0.25), (None, 10.0), (60.0, 10.0)):
        context = SimpleNamespace(time_remaining=lambda r=remaining: r)
        deadline = servicer._deadline(request, context)
        assert deadline - time.monotonic() == pytest.approx(expected, abs=0.05)


def test_api_key_comes_as_bearer_metadata(make_client: Any, cat: bytes) -> None:
    port = free_port()
    client = make_client(api_key="s3cret", grpc_port=port)
    variant = client.get("/models").json()["default"]
    c = tritongrpc.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        assert c.is_server_live()  # health needs no key
        with pytest.raises(InferenceServerException) as info:
            c.infer(variant, [image_input([cat])])
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException):
            c.infer(variant, [image_input([cat])], headers={"authorization": "Bearer no"})
        ok = c.infer(variant, [image_input([cat])], headers={"authorization": "Bearer s3cret"})
        assert ok.as_numpy("PROBABILITIES").shape == (1, 1000)
    finally:
        c.close()


def test_grpc_port_in_use_fails_start_up_clearly(make_client: Any) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError, match="MOBILENET_GRPC_PORT"):
            make_client(grpc_port=s.getsockname()[1])


# --- the .proto ---------------------------------------------------------------------------
def test_committed_descriptor_set_is_what_protoc_makes(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    out = tmp_path / "inference.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "app/protocols",
            f"--descriptor_set_out={out}",
            "app/protocols/inference.proto",
        ],
        cwd=REPO,
        check=True,
    )
    assert out.read_bytes() == (REPO / "app/protocols/inference.pb").read_bytes()


def _fields(desc: Any) -> dict:
    return {
        f.name: (
            f.number,
            f.type,
            f.label,
            f.message_type.full_name if f.message_type else None,
        )
        for f in desc.fields
    }


def test_our_proto_is_wire_identical_to_the_official_client_s() -> None:
    from tritonclient.grpc import service_pb2

    from app.protocols.oip_v2_grpc import SERVICE, messages

    ours = messages()
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours_service = next(iter(ours.values())).DESCRIPTOR.file.pool.FindServiceByName(SERVICE)
    for method in ours_service.methods:
        other = theirs.methods_by_name[method.name]
        for mine, official in (
            (method.input_type, other.input_type),
            (method.output_type, other.output_type),
        ):
            assert mine.full_name == official.full_name
            stack = [(mine, official)]
            while stack:
                a, b = stack.pop()
                assert _fields(a) == _fields(b), a.full_name
                for f in a.fields:
                    if f.message_type is not None:
                        stack.append((f.message_type, b.fields_by_name[f.name].message_type))


def test_request_id_echoed_and_grpc_stops_with_the_app(weights_dir: Path) -> None:
    import time

    import grpc
    from fastapi.testclient import TestClient

    from app.api import create_app
    from app.protocols.oip_v2_grpc import SERVICE, messages
    from app.settings import Settings

    msg = messages()
    port = free_port()
    settings = Settings(weights_dir=weights_dir, variants=["v1-0.25-128"], grpc_port=port)

    def live(channel: grpc.Channel, **kw: Any) -> Any:
        call = channel.unary_unary(
            f"/{SERVICE}/ServerLive",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=msg["ServerLiveResponse"].FromString,
        )
        return call.with_call(msg["ServerLiveRequest"](), timeout=5, **kw)

    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer, call = live(channel, metadata=[("x-request-id", "grpc-7")])
            assert answer.live
            assert dict(call.initial_metadata())["x-request-id"] == "grpc-7"
            _, call = live(channel)  # none sent: one is made
            assert re.fullmatch(r"[0-9a-f]{32}", dict(call.initial_metadata())["x-request-id"])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # the lifespan stopped it
        with pytest.raises(grpc.RpcError) as info:
            live(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_typed_contents_and_malformed_requests(weights_dir: Path, images_dir: Path) -> None:
    """What tritonclient never sends: typed ``contents`` instead of raw bytes, and
    requests that break the protocol's own rules."""
    import time

    import grpc
    from fastapi.testclient import TestClient

    from app.api import create_app
    from app.imaging import prepare
    from app.protocols.oip_v2_grpc import SERVICE, messages
    from app.settings import Settings
    from app.weights import SPECS_BY_NAME

    variant = "v1-0.25-128"
    msg = messages()
    req_cls = msg["ModelInferRequest"]
    cat = (images_dir / "cat.bmp").read_bytes()
    pixels = prepare(cat, SPECS_BY_NAME[variant].preprocessing, max_pixels=10**8)
    port = free_port()
    settings = Settings(weights_dir=weights_dir, variants=[variant], grpc_port=port)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        expected = client.post(
            f"/predict?variant={variant}", files={"file": ("cat.bmp", cat)}
        ).json()["predictions"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            infer = channel.unary_unary(
                f"/{SERVICE}/ModelInfer",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=msg["ModelInferResponse"].FromString,
            )
            image = req_cls.InferInputTensor(name="IMAGE", datatype="BYTES", shape=[1])
            image.contents.bytes_contents.append(cat)
            pix = req_cls.InferInputTensor(
                name="PIXELS", datatype="UINT8", shape=[1, *pixels.shape]
            )
            pix.contents.uint_contents.extend(pixels.reshape(-1).tolist())
            for tensor in (image, pix):
                answer = infer(req_cls(model_name=variant, inputs=[tensor]), timeout=30)
                probs = np.frombuffer(answer.raw_output_contents[0], dtype="<f4")
                assert list(answer.outputs[0].shape) == [1, 1000]
                assert int(probs.argmax()) == expected[0]["index"]
                assert probs[expected[0]["index"]] == pytest.approx(expected[0]["score"], abs=1e-6)
            bad = [
                req_cls(model_name=variant, inputs=[image], raw_input_contents=[b"", b""]),
                req_cls(
                    model_name=variant,
                    inputs=[image],
                    outputs=[req_cls.InferRequestedOutputTensor(name="LOGITS")],
                ),
                req_cls(model_name=variant, inputs=[image, image]),
                req_cls(model_name=variant),
            ]
            for request in bad:
                with pytest.raises(grpc.RpcError) as info:
                    infer(request, timeout=30)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
