"""Fuzzing the HTTP API in-process (the real app, one cheap real model).

* hypothesis: real JPEG/PNG/GIF/BMP/WebP/TIFF files (tests/imagegen.py and the photos in
  shared/images) with bytes flipped, cut, inserted and overwritten, posted to /predict:
  never a 5xx, always our JSON shape, never slow (bounded time per call);
* schemathesis against the app's own /openapi.json (``from_asgi``): no 5xx, every status
  documented, every response body matches its documented schema.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.python import asgi as st_asgi
from starlette.testclient import TestClient

from app.api import create_app
from app.settings import Settings

try:
    from tests import imagegen
except ImportError:  # tests/ itself on sys.path
    import imagegen

pytestmark = pytest.mark.slow

VARIANT = "v1-0.25-128"  # the cheapest real model: the fuzzing is about the HTTP layer
CALL_LIMIT_S = 5.0  # "never a hang": each call answers within this, even on a busy box
FUZZ_EXAMPLES = 60
SCHEMA_EXAMPLES = 25


def fuzz_settings(weights_dir: Path) -> Settings:
    return Settings(
        weights_dir=weights_dir,
        variants=[VARIANT],
        threads=1,
        decode_threads=2,
        shutdown_grace_s=5,
        log_level="warning",
    )


def seeds() -> list[bytes]:
    out = [
        imagegen.jpeg_photo((96, 72)),
        imagegen.jpeg_progressive(),
        imagegen.encode(imagegen.photo_like((48, 40)), "PNG"),
        imagegen.png_mode_p(),
        imagegen.png_16bit(),
        imagegen.gif_animated(),
        imagegen.bmp(),
        imagegen.webp_lossy(),
        imagegen.tiff(),
        imagegen.jpeg_exif_rotated(6),
    ]
    shared = imagegen.shared_images_dir()
    for name in ("cat_720p.jpg", "cat.bmp"):
        if (shared / name).exists():
            out.append((shared / name).read_bytes())
    return out


SEEDS = seeds()


@st.composite
def mutated_image(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    n_ops = draw(st.integers(1, 6))
    for _ in range(n_ops):
        if not data:
            break
        # Half of the edits land in the first 64 bytes, where the headers are.
        near_header = draw(st.booleans())
        span = min(len(data), 64) if near_header else len(data)
        pos = draw(st.integers(0, span - 1))
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "repeat"]))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "set":
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]))
        elif op == "truncate":
            del data[max(pos, 1) :]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        else:  # repeat a chunk: duplicated markers/chunks
            chunk = bytes(data[pos : pos + draw(st.integers(1, 256))])
            data[pos:pos] = chunk
    return bytes(data)


@pytest.fixture(scope="module")
def client(weights_dir: Path) -> Iterator[TestClient]:
    app = create_app(fuzz_settings(weights_dir))
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(c.get)
        yield c


def wait_ready(get, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = get("/readyz")
        if r.status_code == 200:
            return
        time.sleep(0.05)
    raise TimeoutError(f"app not ready: {r.status_code} {r.text[:300]}")


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=mutated_image(), raw=st.booleans())
def test_mutated_images_never_5xx_never_hang(client: TestClient, data: bytes, raw: bool) -> None:
    t0 = time.perf_counter()
    if raw:
        r = client.post("/predict", content=data, headers={"content-type": "image/jpeg"})
    else:
        r = client.post("/predict", files={"file": ("fuzz.img", data, "image/jpeg")})
    elapsed = time.perf_counter() - t0
    assert elapsed < CALL_LIMIT_S, f"{elapsed:.2f}s for {len(data)} bytes"
    assert r.status_code in (200, 413, 415, 422), (r.status_code, r.text[:500])
    body = r.json()
    if r.status_code == 200:
        assert len(body["predictions"]) == 5
        assert sum(p["score"] for p in body["predictions"]) <= 1 + 1e-4
    else:
        assert body["error"]["code"] in (
            "image_too_large",
            "unsupported_media_type",
            "corrupt_image",
            "invalid_request",
        )
        assert body["error"]["request_id"] == r.headers["x-request-id"]


# --------------------------------------------------------------------- schemathesis
# The contract under test is the app's own /openapi.json. It does not depend on settings,
# so it is read at import from an app whose lifespan never runs (no weights needed yet);
# the calls go to a fully started app built from the session's weights (``app=`` below).
# (``schemathesis.pytest.from_fixture`` would be the lazy way, but with pytest 9 it fails:
# schemathesis/pytest/lazy.py reads ``request.node._nodeid``, which pytest 9 dropped.)
_SPEC_APP = create_app(fuzz_settings(Path("weights")))
schema = schemathesis.openapi.from_dict(_SPEC_APP.openapi())
schema.app = _SPEC_APP  # what from_asgi sets: calls go over ASGI, not the network

# not_a_server_error, except the one 5xx a client can ask for: its own deadline passing.
CONTRACT_CHECKS = [
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


def asked_for_deadline(case) -> bool:
    return "timeout_ms" in (case.query or {}) or any(
        k.lower() == "x-request-timeout" for k in (case.headers or {})
    )


@pytest.fixture(scope="module")
def schema_app(weights_dir: Path):
    return create_app(fuzz_settings(weights_dir))


def ensure_ready(app) -> None:
    """schemathesis runs the app's lifespan on its own loop and ends it after each test:
    start it now and wait until the models are loaded, so /predict is not a 503."""
    service = getattr(app.state, "service", None)
    if service is not None and service.ready()[0]:
        return
    with st_asgi.get_client(app) as c:
        wait_ready(c.get)


@schema.parametrize()
@settings(max_examples=SCHEMA_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_contract(case, schema_app) -> None:
    ensure_ready(schema_app)
    t0 = time.perf_counter()
    response = case.call(app=schema_app)
    assert time.perf_counter() - t0 < CALL_LIMIT_S
    case.validate_response(response, checks=CONTRACT_CHECKS)
    if response.status_code >= 500:
        # A 1 ms timeout_ms expires before any batch can run: 504 is the documented answer.
        # each protocol has its own error shape; every one names the deadline
        assert response.status_code == 504 and "deadline" in response.text, (
            f"server error {response.status_code}: {response.text[:500]}\n"
            f"reproduce: {case.as_curl_command()}"
        )
        assert asked_for_deadline(case), case.as_curl_command()
