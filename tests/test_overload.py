"""Overload, deadlines, disconnects and injected faults.

Against a real server process with default settings (one cheap variant):
* a flood of 200 concurrent clients (one connection each, 600 requests, <= 60 s) posting
  the 720p JPEG: every answer is 200 or 503 + integer Retry-After >= 1, every request gets
  an answer, admitted requests keep a bounded p99, RSS stays bounded;
* ``timeout_ms=1`` / ``X-Request-Timeout: 1`` on a busy server -> 504 in our error shape;
* clients that hang up early leave a healthy server.

In-process (create_app, lifespan driven by the test, httpx over ASGI):
* a client that disconnects while queued has its work dropped (batcher ``cancelled``);
* predict raising once -> exactly that batch's requests get 500 with their request id,
  the next requests succeed;
* a stuck predict -> /readyz 503 (stalled) while /healthz stays 200; recovers on release.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

import app.serving.service as service_module
from app.api import create_app
from app.settings import Settings

# One TLS context for every client: httpx builds (and loads CA certificates into) a new
# one per AsyncClient, ~25 ms of CPU each, which stalls a load generator with hundreds.
SHARED_SSL = ssl.create_default_context()

try:
    from tests import imagegen
    from tests.servers import ServerProcess, start_server
except ImportError:  # tests/ itself on sys.path
    import imagegen
    from servers import ServerProcess, start_server

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
FLOOD_VARIANT = "v3-small-1.0-224"
CLIENTS = 200
TOTAL = 600
FLOOD_LIMIT_S = 60.0
RSS_LIMIT = 300 * MiB
INPROC_VARIANT = "v1-0.25-128"


# ------------------------------------------------------------------------------ flood
@dataclass
class Outcome:
    status: int | str  # HTTP status, or the transport error's class name
    latency: float
    retry_after: str | None = None
    code: str | None = None
    server: dict | None = None  # timings + batch size the server reported (200 only)


@dataclass
class FloodResult:
    outcomes: list[Outcome] = field(default_factory=list)
    sent: int = 0
    wall_s: float = 0.0
    rss_base: int = 0
    rss_peak: int = 0

    @property
    def statuses(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    def latencies(self, status: int) -> list[float]:
        return sorted(o.latency for o in self.outcomes if o.status == status)

    def p(self, status: int, q: float) -> float:
        lat = self.latencies(status)
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    def server_medians(self) -> str:
        rows = [o.server for o in self.outcomes if o.server]
        if not rows:
            return "no 200s"
        keys = ("decode_ms", "queue_ms", "inference_ms", "total_ms", "batch_size")
        medians = ", ".join(f"{k} {statistics.median(r[k] for r in rows):.0f}" for k in keys)
        totals = sorted(r["total_ms"] for r in rows)
        return f"{medians}; server total_ms p99 {totals[int(0.99 * (len(totals) - 1))]:.0f}"

    def report(self) -> str:
        ok = self.statuses.get(200, 0)
        return (
            f"{self.sent} sent in {self.wall_s:.1f}s, statuses {dict(self.statuses)}, "
            f"throughput {ok / self.wall_s:.1f} ok/s, 503 share "
            f"{self.statuses.get(503, 0) / max(1, self.sent):.1%}, admitted latency "
            f"p50 {self.p(200, 0.5):.3f}s p99 {self.p(200, 0.99):.3f}s max "
            f"{self.p(200, 1.0):.3f}s, RSS {self.rss_base / MiB:.0f} -> peak "
            f"{self.rss_peak / MiB:.0f} MiB (+{(self.rss_peak - self.rss_base) / MiB:.0f}); "
            f"server-side medians of 200s: {self.server_medians()}"
        )


async def _flood(
    url: str,
    body: bytes,
    *,
    clients: int,
    total: int,
    limit_s: float,
    params: dict | None = None,
    headers: dict | None = None,
) -> FloodResult:
    result = FloodResult()
    stop_at = time.monotonic() + limit_s
    hdrs = {"content-type": "image/jpeg", **(headers or {})}

    async def client() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(
            verify=SHARED_SSL, base_url=url, timeout=30.0, limits=limits
        ) as c:
            while result.sent < total and time.monotonic() < stop_at:
                result.sent += 1
                t0 = time.perf_counter()
                try:
                    r = await c.post("/predict", content=body, headers=hdrs, params=params)
                except httpx.HTTPError as exc:
                    result.outcomes.append(Outcome(type(exc).__name__, time.perf_counter() - t0))
                    continue
                latency = time.perf_counter() - t0
                code, server = None, None
                with contextlib.suppress(Exception):
                    answer = r.json()
                    if r.status_code == 200:
                        server = {**answer["timings"], "batch_size": answer["batch_size"]}
                    else:
                        code = answer["error"]["code"]
                result.outcomes.append(
                    Outcome(r.status_code, latency, r.headers.get("retry-after"), code, server)
                )

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    result.wall_s = time.perf_counter() - t0
    return result


def flood(server: ServerProcess, body: bytes, **kwargs) -> FloodResult:
    """Run a flood while sampling the server's RSS every 50 ms."""
    stop = threading.Event()
    base = server.rss()
    peak = [base]

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                peak[0] = max(peak[0], server.rss())
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = asyncio.run(_flood(server.url, body, **kwargs))
    finally:
        stop.set()
        sampler.join(5)
    result.rss_base, result.rss_peak = base, max(peak[0], server.rss())
    return result


@pytest.fixture(scope="module")
def cat_720p(images_dir: Path) -> bytes:
    return (images_dir / "cat_720p.jpg").read_bytes()


@pytest.fixture(scope="module")
def server(weights_dir: Path) -> Iterator[ServerProcess]:
    # Default settings: queue limit, batch size, max wait and timeouts as shipped.
    srv = start_server(weights_dir, variants=[FLOOD_VARIANT])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def flood_result(server: ServerProcess, cat_720p: bytes) -> FloodResult:
    res = flood(server, cat_720p, clients=CLIENTS, total=TOTAL, limit_s=FLOOD_LIMIT_S)
    print(f"\nflood ({CLIENTS} clients, default settings, {FLOOD_VARIANT}): {res.report()}")
    return res


def test_flood_every_request_answered_200_or_503(
    server: ServerProcess, flood_result: FloodResult
) -> None:
    res = flood_result
    # Nothing lost: every request sent got an HTTP answer.
    assert len(res.outcomes) == res.sent
    assert res.sent == TOTAL, f"only {res.sent} sent within {FLOOD_LIMIT_S}s"
    assert set(res.statuses) <= {200, 503}, res.report()
    for o in res.outcomes:
        if o.status == 503:
            assert o.code == "overloaded", o
            assert o.retry_after is not None and o.retry_after.isdigit(), o
            assert int(o.retry_after) >= 1
    assert res.statuses[200] > 0
    assert res.rss_peak - res.rss_base < RSS_LIMIT, res.report()
    # The server is still fine afterwards.
    assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200


def _admission_limit(server: ServerProcess) -> int:
    """The variant's current adaptive in-flight limit (it stays where the flood left it)."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    return min(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("mobilenet_admission_limit{")
    )


def test_tiny_deadlines_on_busy_server_504(server: ServerProcess, cat_720p: bytes) -> None:
    # Busy, but with room for the request under test (sent one at a time): a full server
    # would answer it 503 before its deadline is ever looked at, and the flood test may
    # have left the adaptive limit anywhere between its floor (8) and the cap.
    clients = max(2, min(24, _admission_limit(server) - 3))

    async def scenario() -> tuple[FloodResult, list[httpx.Response]]:
        background = asyncio.create_task(
            _flood(server.url, cat_720p, clients=clients, total=150, limit_s=30)
        )
        await asyncio.sleep(0.5)  # let the queue fill
        async with httpx.AsyncClient(verify=SHARED_SSL, base_url=server.url, timeout=30) as c:
            hdr = {"content-type": "image/jpeg"}
            answers = []
            for i in range(8):
                if i % 2:
                    kw = {"headers": {**hdr, "X-Request-Timeout": "1"}}
                else:
                    kw = {"headers": hdr, "params": {"timeout_ms": 1}}
                answers.append(await c.post("/predict", content=cat_720p, **kw))
            answers.append(
                await c.post(
                    "/predict", content=cat_720p, headers=hdr, params={"timeout_ms": 60_000}
                )
            )
        return await background, answers

    bg, answers = asyncio.run(scenario())
    assert bg.statuses[200] > 0, bg.report()  # the server really was busy
    *tiny, generous = answers
    for r in tiny:
        assert r.status_code == 504, r.text[:300]
        err = r.json()["error"]
        assert err["code"] == "deadline_exceeded"
        assert err["request_id"] == r.headers["x-request-id"]
        assert "deadline" in err["message"]
    assert generous.status_code in (200, 503), generous.text[:300]


def test_hung_up_clients_leave_server_healthy(server: ServerProcess, cat_720p: bytes) -> None:
    def count_499() -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("mobilenet_requests_total{") and 'status="499"' in line
        )

    before = count_499()

    async def scenario() -> tuple[FloodResult, int]:
        background = asyncio.create_task(
            _flood(server.url, cat_720p, clients=32, total=160, limit_s=30)
        )
        await asyncio.sleep(0.5)
        hung_up = 0
        hdr = {"content-type": "image/jpeg"}
        async with httpx.AsyncClient(verify=SHARED_SSL, base_url=server.url, timeout=0.05) as c:
            for _ in range(10):
                try:
                    await c.post("/predict", content=cat_720p, headers=hdr)
                except httpx.TimeoutException:
                    hung_up += 1  # httpx closes the connection on a timeout
        return await background, hung_up

    bg, hung_up = asyncio.run(scenario())
    assert hung_up > 0
    assert set(bg.statuses) <= {200, 503}, bg.report()
    # The server noticed (answered 499 to nobody) at least once, and still serves.
    deadline = time.monotonic() + 5
    while count_499() <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count_499() > before
    assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
    r = httpx.post(
        f"{server.url}/predict",
        content=cat_720p,
        headers={"content-type": "image/jpeg"},
        timeout=30,
    )
    assert r.status_code == 200


# -------------------------------------------------------------------------- in-process
def inproc_settings(weights_dir: Path, threads: int = 1, **overrides: Any) -> Settings:
    """Batch path by default (these tests are about the batcher); ``run_to_completion=True``
    for LiteRT's default path, where a lone image never enters the batcher's queue."""
    fields: dict[str, Any] = dict(
        weights_dir=weights_dir,
        variants=[INPROC_VARIANT],
        threads=threads,
        decode_threads=2,
        shutdown_grace_s=5,
        log_level="warning",
        run_to_completion=False,
    )
    return Settings(**(fields | overrides))


@contextlib.asynccontextmanager
async def running_app(weights_dir: Path, threads: int = 1, **overrides: Any):
    """The real app with its lifespan, ready, and an httpx client over ASGI."""
    app = create_app(inproc_settings(weights_dir, threads, **overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            deadline = time.monotonic() + 60
            while (r := await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, r.text
                await asyncio.sleep(0.05)
            yield app, client


class Gate:
    """Wraps a backend's predict: call ``block_call`` waits for ``release()``, call
    ``fail_call`` raises; every call's batch size is recorded."""

    def __init__(self, original, *, block_call: int | None = None, fail_call: int | None = None):
        self.original = original
        self.block_call = block_call
        self.fail_call = fail_call
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self._open = threading.Event()

    def release(self) -> None:
        self._open.set()

    def __call__(self, batch, **kwargs):
        n = len(self.sizes)
        self.sizes.append(len(batch) if batch.ndim == 4 else 1)  # predict_one: one image
        if n == self.block_call:
            self.entered.set()
            if not self._open.wait(30):
                raise TimeoutError("gate never released")
        if n == self.fail_call:
            raise RuntimeError("injected fault")
        return self.original(batch, **kwargs)


async def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


IMAGE = imagegen.jpeg_photo((160, 120))
JPEG = {"content-type": "image/jpeg"}


def leaving_request(app, *, rid: str | None = None) -> tuple[asyncio.Task, asyncio.Event, list]:
    """A raw ASGI POST /predict of IMAGE whose client hangs up when the returned event is
    set; returns the app's task, that event and the messages the app sent."""
    hang_up = asyncio.Event()
    sent: list[dict] = []
    body_sent = False

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": IMAGE, "more_body": False}
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [
        (b"host", b"app"),
        (b"content-type", b"image/jpeg"),
        (b"content-length", str(len(IMAGE)).encode()),
    ]
    if rid is not None:
        headers.append((b"x-request-id", rid.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("app", 80),
    }
    return asyncio.create_task(app(scope, receive, send)), hang_up, sent


def _variant(app):
    return app.state.service.registry.variants[INPROC_VARIANT]


def test_injected_fault_fails_exactly_that_batch(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        # Two LiteRT interpreters: batches of up to 2 (one image per interpreter).
        async with running_app(weights_dir, threads=2) as (app, client):
            v = _variant(app)
            gate = Gate(v.backend.predict, block_call=0, fail_call=1)
            monkeypatch.setattr(v.backend, "predict", gate)
            before = v.batcher.stats

            def post(rid: str):
                return asyncio.create_task(
                    client.post("/predict", content=IMAGE, headers={**JPEG, "X-Request-ID": rid})
                )

            first = post("first")
            await wait_for(gate.entered.is_set, what="the first batch to start")
            # One full batch queues behind the blocked one (LiteRT cuts a batch per
            # interpreter, so its size is the batcher's cap, not the setting's 16).
            n = min(4, v.batcher.max_batch_size)
            assert n >= 2
            doomed_ids = [f"doomed-{i}" for i in range(n)]
            doomed = [post(rid) for rid in doomed_ids]
            await wait_for(lambda: v.batcher.depth == n, what=f"{n} queued requests")
            gate.release()
            assert (await first).status_code == 200
            for rid, task in zip(doomed_ids, doomed, strict=True):
                r = await task
                assert r.status_code == 500, r.text
                err = r.json()["error"]
                assert err["code"] == "inference_failed"
                assert "injected fault" in err["message"]
                assert err["request_id"] == rid == r.headers["x-request-id"]
            after_ids = [f"after-{i}" for i in range(3)]
            for rid, r in zip(
                after_ids, await asyncio.gather(*(post(rid) for rid in after_ids)), strict=True
            ):
                assert r.status_code == 200, r.text
                assert r.json()["request_id"] == rid
            stats = v.batcher.stats
            assert gate.sizes[:2] == [1, n]
            assert stats.failed - before.failed == n
            assert stats.items_done - before.items_done == 4  # first + the 3 after
            assert (await client.get("/readyz")).status_code == 200

    asyncio.run(scenario())


def test_stuck_worker_turns_readyz_503_and_recovers(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "HEARTBEAT_STALL_S", 0.3)

    async def scenario() -> None:
        async with running_app(weights_dir) as (app, client):
            v = _variant(app)
            gate = Gate(v.backend.predict, block_call=0)
            monkeypatch.setattr(v.backend, "predict", gate)
            stuck = asyncio.create_task(client.post("/predict", content=IMAGE, headers=JPEG))
            await wait_for(gate.entered.is_set, what="the batch to start")
            await asyncio.sleep(0.5)
            r = await client.get("/readyz")
            assert r.status_code == 503, r.text
            assert any("stalled" in p for p in r.json()["problems"]), r.text
            assert (await client.get("/healthz")).status_code == 200  # alive, not ready
            gate.release()
            assert (await stuck).status_code == 200
            r = await client.get("/readyz")
            assert r.status_code == 200, r.text
            r = await client.post("/predict", content=IMAGE, headers=JPEG)
            assert r.status_code == 200

    asyncio.run(scenario())


def test_disconnected_client_work_is_dropped(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with running_app(weights_dir) as (app, client):
            v = _variant(app)
            gate = Gate(v.backend.predict, block_call=0)
            monkeypatch.setattr(v.backend, "predict", gate)
            busy = asyncio.create_task(client.post("/predict", content=IMAGE, headers=JPEG))
            await wait_for(gate.entered.is_set, what="the batch to start")
            before = v.batcher.stats

            # A raw ASGI request whose client hangs up once it is queued.
            rid = uuid.uuid4().hex
            call, hang_up, sent = leaving_request(app, rid=rid)
            await wait_for(lambda: v.batcher.depth == 1, what="the request to be queued")
            hang_up.set()
            await asyncio.wait_for(call, 10)
            assert v.batcher.depth == 0
            assert v.batcher.stats.cancelled - before.cancelled == 1
            start = next(m for m in sent if m["type"] == "http.response.start")
            assert start["status"] == 499  # logged as such; nobody reads it
            gate.release()
            assert (await busy).status_code == 200
            # Only the busy request's batch ran: the dropped one cost no compute.
            await asyncio.sleep(0.1)
            assert gate.sizes == [1]
            assert v.batcher.stats.items_done - before.items_done == 1
            r = await client.post("/predict", content=IMAGE, headers=JPEG)
            assert r.status_code == 200

    asyncio.run(scenario())


def test_flood_statistics_are_sane() -> None:
    """FloodResult's percentile helper (used for the numbers reported above)."""
    res = FloodResult(outcomes=[Outcome(200, x / 100) for x in range(1, 101)], sent=100)
    assert res.p(200, 0.99) == pytest.approx(1.0)
    assert res.p(200, 0.5) == pytest.approx(0.51)
    assert statistics.mean(res.latencies(200)) == pytest.approx(0.505)


# --- run to completion (LiteRT's default): a lone image decoded and forwarded on one decode
# thread, outside the batcher's queue. The same guarantees, checked on that path.


def test_run_to_completion_fault_fails_exactly_that_request(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with running_app(weights_dir, run_to_completion=True) as (app, client):
            v = _variant(app)
            gate = Gate(v.backend.predict_one, fail_call=1)
            monkeypatch.setattr(v.backend, "predict_one", gate)
            before = v.batcher.stats
            statuses = []
            for rid in ("ok-1", "doomed", "ok-2"):
                r = await client.post(
                    "/predict", content=IMAGE, headers={**JPEG, "X-Request-ID": rid}
                )
                statuses.append(r.status_code)
                if rid == "doomed":
                    err = r.json()["error"]
                    assert err["code"] == "inference_failed", r.text
                    assert "injected fault" in err["message"]
                    assert err["request_id"] == rid
                else:
                    assert r.json()["batch_size"] == 1
            assert statuses == [200, 500, 200]
            assert gate.sizes == [1, 1, 1]
            assert v.batcher.stats.items_done - before.items_done == 2  # the answered ones
            assert (await client.get("/readyz")).status_code == 200

    asyncio.run(scenario())


def test_run_to_completion_stuck_forward_turns_readyz_503_and_recovers(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "HEARTBEAT_STALL_S", 0.3)

    async def scenario() -> None:
        async with running_app(weights_dir, run_to_completion=True) as (app, client):
            v = _variant(app)
            gate = Gate(v.backend.predict_one, block_call=0)
            monkeypatch.setattr(v.backend, "predict_one", gate)
            stuck = asyncio.create_task(client.post("/predict", content=IMAGE, headers=JPEG))
            await wait_for(gate.entered.is_set, what="the forward to start")
            await asyncio.sleep(0.5)
            r = await client.get("/readyz")
            assert r.status_code == 503, r.text
            assert any("stalled" in p for p in r.json()["problems"]), r.text
            gate.release()
            assert (await stuck).status_code == 200
            assert (await client.get("/readyz")).status_code == 200

    asyncio.run(scenario())


def test_run_to_completion_queued_request_of_a_gone_client_costs_nothing(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One decode thread, held by a blocked forward: the next request waits in the decode
    pool; its client hangs up, it is answered 499 and never decoded nor forwarded."""

    async def scenario() -> None:
        async with running_app(weights_dir, run_to_completion=True, decode_threads=1) as (
            app,
            client,
        ):
            v, pool = _variant(app), app.state.service.decode_pool
            gate = Gate(v.backend.predict_one, block_call=0)
            monkeypatch.setattr(v.backend, "predict_one", gate)
            busy = asyncio.create_task(client.post("/predict", content=IMAGE, headers=JPEG))
            await wait_for(gate.entered.is_set, what="the forward to start")
            call, hang_up, sent = leaving_request(app)
            await wait_for(lambda: pool.waiting().get(v.name) == 1, what="a queued request")
            hang_up.set()
            await asyncio.wait_for(call, 10)
            start = next(m for m in sent if m["type"] == "http.response.start")
            assert start["status"] == 499
            gate.release()
            assert (await busy).status_code == 200
            await asyncio.sleep(0.1)
            assert gate.sizes == [1]  # the gone client's image was never forwarded

    asyncio.run(scenario())
