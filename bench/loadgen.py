"""A closed-loop HTTP load generator for loopback benchmarks.

Closed loop: each of ``concurrency`` virtual users keeps exactly one request in flight on
its own keep-alive HTTP/1.1 connection and sends the next as soon as the answer arrives,
so the offered load adapts to the server (what real callers with a connection pool do)
and throughput is what the server sustains at that concurrency, not what we push at it.

The multipart body is encoded once up front: on a 2-core machine the client shares the
CPUs with the server, and re-encoding the form per request would bill the server for the
client's work. Every run is bounded in request count and in wall time, and only loopback
addresses are accepted, so a typo can never load-test someone else's host.

Throughput counts the answers that arrive while the load is full: from the start of the
measured phase until its time is up (or, if it comes first, until the first virtual user
finds the request budget spent; the benchmark sets the budget high so the window is
timed, and a timed edge falls at random against a batching server's bursts of answers).
After that the phase only drains (fewer and fewer requests in flight), and counting the drain would
charge every server for a tail that a steady load never has: at concurrency 64 it is a
whole latency's worth of idle capacity, and with a server that holds early retries before
its 503 (``Retry-After``) up to a second more. Latency percentiles cover every measured
request, drain included, so no slow answer is left out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

# One TLS context for every client of every load generator here: httpx would load the
# CA bundle per client (~25 ms of CPU each, 1.6 s for 64 users before every cell).
SHARED_SSL = ssl.create_default_context()

LOOPBACK_NAMES = frozenset({"localhost"})
MAX_CONCURRENCY = 1024


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    """What to send and how hard.

    ``requests`` bounds the measured phase by count and ``max_seconds`` by time (whichever
    comes first); ``warmup`` requests (at most ``warmup_seconds``) go first with the same
    concurrency and are not recorded: they open the connections and fill the pipeline.
    """

    url: str
    body: bytes
    content_type: str
    filename: str = "image"
    concurrency: int = 1
    warmup: int = 10
    warmup_seconds: float = 2.0
    requests: int = 200
    max_seconds: float = 30.0
    timeout_s: float = 30.0


@dataclass(frozen=True, kw_only=True)
class LoadResult:
    """Measured-phase outcome. Latencies in milliseconds over successful requests only."""

    concurrency: int
    sent: int
    ok: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    warmup_sent: int = 0  # requests of the warm-up before the window (for CPU per request)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Tally:
    """Shared state of one phase: tickets handed out and what came back."""

    budget: int
    deadline: float
    issued: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    ok_times: list[float] = field(default_factory=list)  # perf_counter() of each 200
    errors: Counter[str] = field(default_factory=Counter)
    closed_at: float | None = None  # when the first user found no ticket: the drain began

    def take(self) -> bool:
        """One ticket per request; False once the count or the time budget is spent."""
        now = time.perf_counter()
        if self.issued >= self.budget or now >= self.deadline:
            if self.closed_at is None:  # a late answer must not stretch a timed window
                self.closed_at = min(now, self.deadline)
            return False
        self.issued += 1
        return True


def check_loopback(url: str) -> None:
    """Refuse any target that is not this machine (a load test is an attack elsewhere)."""
    host = urlsplit(url).hostname or ""
    if host in LOOPBACK_NAMES:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"load generation is loopback-only; refusing {url!r}")


def encode_form(files: Iterable[tuple[str, str, str, bytes]]) -> tuple[bytes, str]:
    """Pre-encode a form of files, each ``(field, filename, content type, data)``;
    returns (payload, Content-Type header)."""
    boundary = uuid.uuid4().hex
    parts = [
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
        for field, filename, content_type, data in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def encode_multipart(body: bytes, content_type: str, filename: str) -> tuple[bytes, str]:
    """Pre-encode a one-file form (field ``file``); returns (payload, Content-Type header)."""
    return encode_form([("file", filename, content_type, body)])


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (NaN when empty)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


async def _user(
    client: httpx.AsyncClient, url: str, payload: bytes, headers: dict[str, str], tally: _Tally
) -> None:
    """One virtual user: a request at a time on its own connection until tickets run out."""
    while tally.take():
        t0 = time.perf_counter()
        try:
            response = await client.post(url, content=payload, headers=headers)
            await response.aread()
        except httpx.HTTPError as exc:
            tally.errors[type(exc).__name__] += 1
            continue
        if response.status_code == 200:
            done = time.perf_counter()
            tally.latencies_ms.append((done - t0) * 1000)
            tally.ok_times.append(done)
        else:
            tally.errors[str(response.status_code)] += 1


async def _phase(
    clients: list[httpx.AsyncClient],
    url: str,
    payload: bytes,
    headers: dict[str, str],
    *,
    budget: int,
    max_seconds: float,
) -> tuple[_Tally, float]:
    """Run every user until ``budget`` requests were issued or ``max_seconds`` passed."""
    start = time.perf_counter()
    tally = _Tally(budget=budget, deadline=start + max_seconds)
    await asyncio.gather(*(_user(c, url, payload, headers, tally) for c in clients))
    return tally, start


def _summarise(
    concurrency: int, tally: _Tally, start: float, *, warmup_sent: int = 0
) -> LoadResult:
    """Throughput over the full-load window (see the module docstring), latency over all."""
    lat = sorted(tally.latencies_ms)
    end = tally.closed_at if tally.closed_at is not None else time.perf_counter()
    seconds = end - start
    served = sum(1 for t in tally.ok_times if t <= end)
    return LoadResult(
        concurrency=concurrency,
        sent=tally.issued,
        ok=len(lat),
        seconds=round(seconds, 3),
        rps=served / seconds if seconds > 0 else 0.0,
        p50_ms=percentile(lat, 50),
        p95_ms=percentile(lat, 95),
        p99_ms=percentile(lat, 99),
        mean_ms=sum(lat) / len(lat) if lat else math.nan,
        max_ms=lat[-1] if lat else math.nan,
        errors=dict(tally.errors),
        warmup_sent=warmup_sent,
    )


def _client(spec: LoadSpec) -> httpx.AsyncClient:
    """One connection per virtual user: the pool holds exactly one keep-alive connection."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(
        http1=True, http2=False, limits=limits, timeout=spec.timeout_s, verify=SHARED_SSL
    )


async def run_load(spec: LoadSpec) -> LoadResult:
    """Warm up, then measure: at most ``warmup + requests`` requests, and at most
    ``warmup_seconds + max_seconds`` plus one request timeout of wall time."""
    check_loopback(spec.url)
    if not 1 <= spec.concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be in 1..{MAX_CONCURRENCY}")
    payload, ctype = encode_multipart(spec.body, spec.content_type, spec.filename)
    headers = {"Content-Type": ctype}
    clients = [_client(spec) for _ in range(spec.concurrency)]
    warmup_sent = 0
    try:
        if spec.warmup:
            warm, _ = await _phase(
                clients,
                spec.url,
                payload,
                headers,
                budget=spec.warmup,
                max_seconds=spec.warmup_seconds,
            )
            warmup_sent = warm.issued
        tally, start = await _phase(
            clients,
            spec.url,
            payload,
            headers,
            budget=spec.requests,
            max_seconds=spec.max_seconds,
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return _summarise(spec.concurrency, tally, start, warmup_sent=warmup_sent)


def run_load_sync(spec: LoadSpec) -> LoadResult:
    """``run_load`` from synchronous code (uvloop when installed: less client CPU)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_load(spec))
    return uvloop.run(run_load(spec))
