"""Odd, hostile and oversized uploads against a real server process (``python -m app``).

* every odd-but-valid image of tests/imagegen.py -> 200 with 5 sane predictions;
* every hostile file (not an image, truncated, decompression bombs) -> the right 4xx in
  our JSON error shape, each answered in well under a second;
* repeating the whole battery does not grow the server's RSS (< 50 MB);
* a 64 MiB upload (Content-Length or chunked, raw or multipart) is refused 413 while it
  streams, without the server's RSS growing by anything near 64 MiB;
* path-traversal filenames are echoed, never used as paths;
* form abuse (missing/wrong field, two files, no boundary, JSON, urlencoded) -> 4xx that
  names what is expected.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.api.errors import STATUS_BY_CODE
from app.errors import InvalidRequest

try:
    from tests import imagegen
    from tests.servers import ServerProcess, start_server
except ImportError:  # tests/ itself on sys.path (pytest's rootdir-less import mode)
    import imagegen
    from servers import ServerProcess, start_server

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
FAST_S = 1.0  # every upload in the battery is answered within this
RSS_SLACK = 50 * MiB
HOW = "'file'"  # every form-misuse message names the expected field


@pytest.fixture(scope="module")
def server(weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    cwd = tmp_path_factory.mktemp("hostile-cwd")
    srv = start_server(weights_dir, cwd=cwd)  # default 16 MiB upload limit
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        yield c


def post_image(client: httpx.Client, data: bytes, name: str = "upload") -> httpx.Response:
    return client.post("/predict", files={"file": (name, data, "application/octet-stream")})


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    """Our error shape: {"error": {"code", "message", "request_id", ...}}."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and len(err["message"]) > 10
    assert err["request_id"] == r.headers["x-request-id"]
    if code is not None:
        assert err["code"] == code, err
    return err


def assert_sane_predictions(body: dict) -> None:
    preds = body["predictions"]
    assert len(preds) == 5
    scores = [p["score"] for p in preds]
    assert all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores), scores
    assert sum(scores) <= 1.0 + 1e-4, scores
    assert scores == sorted(scores, reverse=True)
    assert len({p["index"] for p in preds}) == 5
    assert all(0 <= p["index"] < 1000 and p["label"] for p in preds)


def expected_status(name: str) -> tuple[int, str]:
    if name == "empty":  # refused before sniffing: nothing was uploaded
        return STATUS_BY_CODE[InvalidRequest.code], InvalidRequest.code
    _, error = imagegen.HOSTILE[name]
    return STATUS_BY_CODE[error.code], error.code


# ------------------------------------------------------------------------- the battery
@pytest.mark.parametrize("name", sorted(imagegen.VALID))
def test_odd_but_valid_image_is_classified(client: httpx.Client, name: str) -> None:
    gen, _ = imagegen.VALID[name]
    data = gen()
    t0 = time.perf_counter()
    r = post_image(client, data, f"{name}.img")
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.text[:500]
    assert_sane_predictions(r.json())
    assert elapsed < FAST_S, f"{name} took {elapsed:.2f}s"


@pytest.mark.parametrize("name", sorted(imagegen.HOSTILE))
def test_hostile_file_is_refused_quickly(client: httpx.Client, name: str) -> None:
    gen, _ = imagegen.HOSTILE[name]
    data = gen()
    status, code = expected_status(name)
    t0 = time.perf_counter()
    r = post_image(client, data, f"{name}.img")
    elapsed = time.perf_counter() - t0
    assert_error(r, status, code)
    assert elapsed < FAST_S, f"{name} took {elapsed:.2f}s"


def test_hostile_raw_body_same_answers(client: httpx.Client) -> None:
    """The raw ``image/*`` body path refuses the same files the same way."""
    for name in ("random", "svg", "pdf", "zip", "jpeg_truncated", "png_bomb", "jpeg_sof_bomb"):
        status, code = expected_status(name)
        r = client.post(
            "/predict",
            content=imagegen.HOSTILE[name][0](),
            headers={"content-type": "image/jpeg"},
        )
        assert_error(r, status, code)


def test_battery_does_not_grow_rss(client: httpx.Client, server: ServerProcess) -> None:
    files = [g() for g, _ in imagegen.VALID.values()] + [g() for g, _ in imagegen.HOSTILE.values()]

    def one_pass() -> None:
        for data in files:
            assert post_image(client, data).status_code < 500

    one_pass()  # first use of each decoder is a one-time cost, not a leak
    before = server.rss()
    for _ in range(4):
        one_pass()
    after = server.rss()
    print(f"\nRSS before {before / MiB:.1f} MiB, after 4 passes {after / MiB:.1f} MiB")
    assert after - before < RSS_SLACK


# ------------------------------------------------------------------- oversized uploads
class RssSampler:
    """Peak RSS of a process while a block runs (sampled every 20 ms in a thread)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.base = server.rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss())
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.server.rss())

    @property
    def growth(self) -> int:
        return self.peak - self.base


def chunks(total: int, sent: list[int], chunk: int = MiB) -> Iterator[bytes]:
    """``total`` bytes, one MiB at a time, never held in full by the client."""
    block = b"\xff\xd8\xff" + b"\x00" * (chunk - 3)
    while sent[0] < total:
        n = min(chunk, total - sent[0])
        sent[0] += n
        yield block[:n]


def multipart_chunks(total: int, sent: list[int], boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    yield from chunks(total, sent)
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize(
    ("kind", "with_length"),
    [
        pytest.param("raw", True, id="raw-content-length"),
        pytest.param("raw", False, id="raw-chunked"),
        pytest.param("multipart", True, id="multipart-content-length"),
        pytest.param("multipart", False, id="multipart-chunked"),
    ],
)
def test_64mib_upload_refused_413_without_buffering(
    server: ServerProcess, kind: str, with_length: bool
) -> None:
    total = 64 * MiB
    sent = [0]
    if kind == "raw":
        body = chunks(total, sent)
        headers = {"content-type": "image/jpeg"}
        length = total
    else:
        boundary = uuid.uuid4().hex
        body = multipart_chunks(total, sent, boundary)
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        length = total + 200  # an upper bound is enough: it is over the limit either way
    if with_length:
        headers["content-length"] = str(length)
    t0 = time.perf_counter()
    with RssSampler(server) as rss, httpx.Client(timeout=30.0) as c:
        r = c.post(f"{server.url}/predict", content=body, headers=headers)
    elapsed = time.perf_counter() - t0
    err = assert_error(r, 413, "payload_too_large")
    assert err["limit_bytes"] == 16 * MiB
    print(
        f"\n{kind} length={with_length}: 413 after {elapsed:.2f}s, client sent "
        f"{sent[0] / MiB:.0f} MiB, server RSS +{rss.growth / MiB:.1f} MiB"
    )
    assert elapsed < 5.0
    assert rss.growth < 24 * MiB, f"server RSS grew {rss.growth / MiB:.1f} MiB"
    # The server still works afterwards.
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


# ----------------------------------------------------------------------- filenames
TRAVERSAL_NAMES = [
    "../../etc/passwd",
    "../../../../../../../../etc/passwd",
    "/etc/passwd",
    "..\\..\\..\\windows\\win.ini",
    "....//....//etc/passwd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
]


def test_traversal_filenames_are_not_paths(
    client: httpx.Client, server: ServerProcess, tmp_path: Path
) -> None:
    passwd = Path("/etc/passwd")
    passwd_stat = passwd.stat()
    cwd_before = sorted(p.name for p in server.cwd.iterdir())
    marker = f"mobilenet-traversal-{uuid.uuid4().hex}.jpg"
    # Resolved from the server's cwd, this names a file in tmp_path.
    sneaky = "../" * 12 + str(tmp_path.relative_to("/")) + "/" + marker
    image = imagegen.jpeg_photo((64, 48))
    for name in [*TRAVERSAL_NAMES, sneaky]:
        r = post_image(client, image, name)
        assert r.status_code == 200, (name, r.text[:300])
        assert_sane_predictions(r.json())
    # /predict/batch echoes the filename, as given, nothing more.
    r = client.post(
        "/predict/batch",
        files=[("files", (n, image, "image/jpeg")) for n in ["../../etc/passwd", sneaky]],
    )
    assert r.status_code == 200, r.text[:300]
    assert [i["filename"] for i in r.json()["results"]] == ["../../etc/passwd", sneaky]
    assert not (tmp_path / marker).exists()
    assert list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in server.cwd.iterdir()) == cwd_before
    after = passwd.stat()
    assert (after.st_size, after.st_mtime_ns) == (passwd_stat.st_size, passwd_stat.st_mtime_ns)


# ---------------------------------------------------------------------- form abuse
PNG = imagegen.png_1x1()


def test_missing_file_field(client: httpx.Client) -> None:
    # A multipart body with only a text field.
    r = client.post("/predict", files={"note": (None, "hello")})
    err = assert_error(r, 422, "invalid_request")
    assert HOW in err["message"] and "'note'" in err["message"]
    assert err["expected_field"] == "file"


def test_wrong_field_name(client: httpx.Client) -> None:
    r = client.post("/predict", files={"image": ("cat.png", PNG, "image/png")})
    err = assert_error(r, 422, "invalid_request")
    assert HOW in err["message"] and "'image'" in err["message"]


def test_file_field_as_text(client: httpx.Client) -> None:
    r = client.post("/predict", files={"file": (None, "not a file")})
    err = assert_error(r, 422, "invalid_request")
    assert "must be a file upload" in err["message"] and HOW in err["message"]


def test_two_files_in_predict(client: httpx.Client) -> None:
    r = client.post(
        "/predict",
        files=[("file", ("a.png", PNG, "image/png")), ("file", ("b.png", PNG, "image/png"))],
    )
    err = assert_error(r, 422, "invalid_request")
    assert "at most 1" in err["message"] or HOW in err["message"], err


def test_multipart_without_boundary(client: httpx.Client) -> None:
    r = client.post(
        "/predict",
        content=b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc\r\n--x--\r\n',
        headers={"content-type": "multipart/form-data"},
    )
    err = assert_error(r, 422, "invalid_request")
    assert "multipart" in err["message"] and HOW in err["message"]


@pytest.mark.parametrize(
    ("kwargs", "ctype"),
    [
        ({"json": {"file": "aGVsbG8="}}, "application/json"),
        ({"data": {"file": "aGVsbG8="}}, "application/x-www-form-urlencoded"),
        ({"content": b"plain text", "headers": {"content-type": "text/plain"}}, "text/plain"),
        ({"content": b""}, None),
    ],
    ids=["json", "urlencoded", "text", "no-content-type"],
)
def test_non_multipart_bodies_are_415(client: httpx.Client, kwargs: dict, ctype: str) -> None:
    r = client.post("/predict", **kwargs)
    err = assert_error(r, 415, "unsupported_media_type")
    assert HOW in err["message"] and "multipart/form-data" in err["message"]
    assert err["content_type"] == ctype


def test_batch_route_form_abuse(client: httpx.Client) -> None:
    r = client.post("/predict/batch", json={"files": []})
    assert "files" in assert_error(r, 415, "unsupported_media_type")["message"]
    r = client.post("/predict/batch", files={"image": ("a.png", PNG, "image/png")})
    assert "'files'" in assert_error(r, 422, "invalid_request")["message"]
    too_many = [("files", (f"{i}.png", PNG, "image/png")) for i in range(40)]
    r = client.post("/predict/batch", files=too_many)
    assert_error(r, 422, "invalid_request")
