"""One flooded variant cannot slow the others (issue 21), against a real server.

A flood from lean raw-socket clients (pre-encoded requests, one keep-alive connection
each, so the load generator costs little of the 2 cores) hits one variant while a probe
posts ``cat.bmp`` to another, one request at a time:

* 32 clients posting a flat 6000x6000 PNG (116 KB on the wire, 36 MP decoded) to V3:
  the V1 probe keeps p99 under 1 s (it took 1.4-7.2 s when admission counted requests
  and the shared stages served first come first served);
* 48 clients posting 720p JPEGs to V2: the V1 probe's median stays within 3x of its
  median on the idle server, measured just before (it was 5.6x; issue 21 asks for 2x,
  which ten runs here met in six: 1.56-2.3x).
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bench.loadgen import encode_form

try:
    from tests.servers import ServerProcess, start_server
except ImportError:  # tests/ itself on sys.path
    from servers import ServerProcess, start_server

pytestmark = pytest.mark.slow

VARIANTS = ["v1-1.0-224", "v2-1.0-224", "v3-small-1.0-224"]


def flat_png(side: int = 6000) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 130, 140)).save(buf, "PNG")
    return buf.getvalue()


def _request(port: int, path: str, image: bytes) -> bytes:
    body, ctype = encode_form([("file", "x", "application/octet-stream", image)])
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _flooder(port: int, request: bytes, stop: float, statuses: Counter) -> None:
    """One closed-loop client that ignores Retry-After (the worst honest-looking peer)."""
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            while time.monotonic() < stop:
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                statuses[status] += 1
                if b"connection: close" in head.lower():
                    break
        except (OSError, asyncio.IncompleteReadError):
            statuses["dropped"] += 1
        finally:
            writer.close()


SERVER_TIMINGS: list[dict] = []  # the probe's server-side timings, for the reports


async def _probe(url: str, cat: bytes, count: int, pause_s: float) -> list[tuple[int, float]]:
    out = []
    SERVER_TIMINGS.clear()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(count):
            t0 = time.perf_counter()
            r = await client.post("/predict?model=v1", files={"file": ("cat.bmp", cat)})
            out.append((r.status_code, time.perf_counter() - t0))
            if r.status_code == 200:
                SERVER_TIMINGS.append(r.json()["timings"])
            await asyncio.sleep(pause_s)
    return out


def _server_medians() -> str:
    keys = ("decode_ms", "queue_ms", "inference_ms", "total_ms")
    return ", ".join(f"{k} {statistics.median(t[k] for t in SERVER_TIMINGS):.1f}" for k in keys)


def _flood_process(port: int, request: bytes, clients: int, seconds: float, out) -> None:
    """The flood, in a process of its own: the probe's latency is then the server's, not
    that of a client loop busy with 48 other connections."""
    statuses: Counter = Counter()

    async def main() -> None:
        stop = time.monotonic() + seconds
        await asyncio.gather(*(_flooder(port, request, stop, statuses) for _ in range(clients)))

    asyncio.run(main())
    out.put(dict(statuses))


def _under_flood(
    server: ServerProcess, request: bytes, clients: int, cat: bytes, probes: int
) -> tuple[list[tuple[int, float]], Counter]:
    ctx = multiprocessing.get_context("fork")  # the child runs only asyncio sockets
    out = ctx.Queue()
    seconds = 3.0 + probes * 0.08 + 10.0  # warm-up, the probes, a margin; it stops itself
    flood = ctx.Process(target=_flood_process, args=(server.port, request, clients, seconds, out))
    flood.start()
    try:
        time.sleep(3.0)  # the flood reaches its steady state
        rows = asyncio.run(_probe(server.url, cat, probes, 0.05))
        statuses = Counter(out.get(timeout=seconds + 30))
    finally:
        flood.join(30)
        if flood.is_alive():
            flood.kill()
    return rows, statuses


def _summary(rows: list[tuple[int, float]]) -> tuple[float, float]:
    lat = sorted(t for s, t in rows if s == 200)
    return statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]


@pytest.fixture(scope="module")
def server(weights_dir: Path) -> Iterator[ServerProcess]:
    srv = start_server(weights_dir, variants=VARIANTS, ready_timeout=180)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def idle_probe(server: ServerProcess, cat: bytes) -> tuple[float, float]:
    rows = asyncio.run(_probe(server.url, cat, 40, 0.02))
    assert {s for s, _ in rows} == {200}
    return _summary(rows)


def test_a_lone_36mp_png_is_answered(server: ServerProcess) -> None:
    r = httpx.post(
        f"{server.url}/predict?model=v3", files={"file": ("flat.png", flat_png())}, timeout=30
    )
    assert r.status_code == 200, r.text


def test_heavy_png_flood_on_v3_leaves_v1_responsive(
    server: ServerProcess, cat: bytes, idle_probe: tuple[float, float]
) -> None:
    request = _request(server.port, "/predict?model=v3", flat_png())
    rows, statuses = _under_flood(server, request, 32, cat, probes=60)
    p50, p99 = _summary(rows)
    report = (
        f"V1 probe under a 36 MP PNG flood on V3: p50 {p50 * 1000:.0f} ms p99 "
        f"{p99 * 1000:.0f} ms (idle p50 {idle_probe[0] * 1000:.0f} ms); flood {dict(statuses)}"
    )
    print("\n" + report)
    assert {s for s, _ in rows} == {200}, report
    assert p99 < 1.0, report
    assert set(statuses) <= {200, 503}, report
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    shed = [ln for ln in text.splitlines() if ln.startswith("mobilenet_shed_cost_total")]
    assert any("v3-small" in ln and float(ln.rsplit(" ", 1)[1]) > 0 for ln in shed), shed


def test_jpeg_flood_on_v2_keeps_v1_median_within_2x_of_idle(
    server: ServerProcess, cat: bytes, images_dir: Path
) -> None:
    # Idle measured right before the flood: this machine's speed drifts within minutes.
    idle_rows = asyncio.run(_probe(server.url, cat, 40, 0.02))
    assert {s for s, _ in idle_rows} == {200}
    idle_probe = _summary(idle_rows)
    request = _request(server.port, "/predict?model=v2", (images_dir / "cat_720p.jpg").read_bytes())
    rows, statuses = _under_flood(server, request, 48, cat, probes=80)
    p50, p99 = _summary(rows)
    report = (
        f"V1 probe under a 720p JPEG flood on V2: p50 {p50 * 1000:.0f} ms p99 "
        f"{p99 * 1000:.0f} ms; idle p50 {idle_probe[0] * 1000:.0f} ms p99 "
        f"{idle_probe[1] * 1000:.0f} ms; flood {dict(statuses)}; server medians "
        f"{_server_medians()}"
    )
    print("\n" + report)
    assert {s for s, _ in rows} == {200}, report
    assert statuses[200] > 0, report
    # Issue 21's target. With run to completion (the V1 probe decoded and forwarded on
    # the decode thread its lane holds, no hand-off to a shared inference thread) sixteen
    # runs on 2 cores gave 1.06-1.5x; the batcher path gave 1.6-1.8x on the same day
    # (1.56-2.3x the day before), and 5.6x before fair scheduling.
    assert p50 < 2 * idle_probe[0], report
