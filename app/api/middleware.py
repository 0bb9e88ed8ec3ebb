"""Pure-ASGI middleware (no BaseHTTPMiddleware: it would break disconnect detection).

* ``RequestIdMiddleware``: echo a sane ``X-Request-ID`` or make one; every log line of
  the request carries it.
* ``BodyLimitMiddleware``: refuse an oversized body with 413 while it streams in, from
  ``Content-Length`` up front or by counting chunks, so it is never held in full.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import Overloaded, PayloadTooLarge
from app.observability.logging import request_id_var

access_log = logging.getLogger("app.access")
# Probes and scrapes would drown the log; every other request gets one line.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    """32 random hex digits, as ``uuid4().hex`` but without a getrandom() call per request
    (an id needs to be unique, not unpredictable; ``random`` reseeds in forked workers)."""
    return f"{random.getrandbits(128):032x}"


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _ID_OK.match(incoming) else new_request_id()
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        start = time.perf_counter()
        status = 500
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["path"] not in QUIET_PATHS:
                access_log.info(
                    "%s %s %s",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                    },
                )
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """413 for request bodies over ``limit`` bytes on the given path prefixes."""

    def __init__(self, app: ASGIApp, *, limit: int, prefixes: tuple[str, ...] = ("/predict",)):
        self.app = app
        self.limit = limit
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send, int(length))
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Raised inside the app, so the one error handler answers 413.
                    raise PayloadTooLarge(self._message(), limit_bytes=self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except PayloadTooLarge:
            if not started:
                await self._refuse(send, received)

    def _message(self, size: int | None = None) -> str:
        got = f" (got {size} bytes)" if size else ""
        return (
            f"request body exceeds the {self.limit} byte limit{got}; the limit is "
            f"{self.limit / 1048576:.1f} MiB (MOBILENET_MAX_UPLOAD_BYTES)"
        )

    async def _refuse(self, send: Send, size: int) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": "payload_too_large",
                    "message": self._message(size),
                    "limit_bytes": self.limit,
                    "request_id": request_id_var.get(),
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class FastRejectMiddleware:
    """Answer ``POST /predict`` with 503 before any parsing when its variant is full.

    Under a flood most requests are refused; doing that here costs a fraction of going
    through routing, dependencies and validation, which keeps the event loop free for
    the requests that were admitted. The route still takes the real admission slot.
    Anything unusual (bad parameters, not loaded yet) falls through to the app, which
    gives the precise error.

    Retry-After is enforced per connection (``hold_s`` > 0): a connection that was just
    refused and comes back before its Retry-After while the variant is still full gets
    its next 503 only when that Retry-After is up (at most ``hold_s``). A client that
    honours Retry-After never notices; one that retries in a tight loop is slowed to the
    pace it was asked for, instead of spending the cores on refusals (on 2 cores with
    200 such clients: ~20 % more images admitted and p99 0.86-0.93 s instead of 0.96-1.15
    s, side by side). The first
    503 on a connection is always immediate, and a request is held only when it would
    be refused anyway.
    """

    MAX_TRACKED = 10_000  # connections remembered at once (each is a few dozen bytes)

    def __init__(
        self, app: ASGIApp, *, service: Callable[[], object | None], hold_s: float = 0.0
    ) -> None:
        self.app = app
        self.service = service
        self.hold_s = hold_s
        self._refused_until: dict[tuple, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/predict" and scope["method"] == "POST":
            refusal = self._refusal(scope)
            if refusal is not None:
                await self._hold_if_early(scope, refusal)
                await _send_json(
                    send,
                    503,
                    refusal.to_body(request_id_var.get()),
                    [(b"retry-after", str(refusal.retry_after).encode())],
                )
                return
        await self.app(scope, receive, send)

    async def _hold_if_early(self, scope: Scope, refusal: _Refusal) -> None:
        """Delay this refusal until the previous one's Retry-After is up (see class doc)."""
        client = scope.get("client")
        if self.hold_s <= 0 or not client:
            return
        key, now = tuple(client), time.monotonic()
        until = self._refused_until.pop(key, None)
        if until is not None and until > now:
            await asyncio.sleep(min(until - now, self.hold_s))
            return  # the next request on this connection is judged afresh
        if len(self._refused_until) >= self.MAX_TRACKED:
            self._refused_until = {k: t for k, t in self._refused_until.items() if t > now}
            if len(self._refused_until) >= self.MAX_TRACKED:
                return
        self._refused_until[key] = now + refusal.retry_after

    def _refusal(self, scope: Scope):
        service = self.service()
        admission = getattr(service, "admission", None)
        if not admission:
            return None
        try:
            q = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}
            target = service.registry.resolve(
                model=q.get("model"),
                variant=q.get("variant"),
                width=float(q["width"]) if "width" in q else None,
                resolution=int(q["resolution"]) if "resolution" in q else None,
                fallback=q.get("fallback"),
            )
        except Exception:
            return None
        gate = admission.get(target.name)
        if gate is None or not gate.full():
            return None
        service.metrics.rejected.labels(target.name).inc()
        service.metrics.shed_cost.labels(target.name).inc()  # its weight is not known yet
        service.metrics.requests.labels("/predict", target.name, "503").inc()
        return _Refusal(gate.overloaded())


class _Refusal:
    def __init__(self, exc: Overloaded) -> None:
        self.exc = exc
        self.retry_after = max(1, int(exc.retry_after))

    def to_body(self, request_id: str | None) -> dict:
        return {
            "error": {
                "code": self.exc.code,
                "message": self.exc.message,
                "request_id": request_id,
                **self.exc.details,
            }
        }


async def _send_json(send: Send, status: int, body: dict, headers: list) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
