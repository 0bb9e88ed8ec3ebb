"""Receiving request bodies: bounded, fair per client address, and never slower than allowed.

A request's inference slot (``ClassifierService.admit``) is taken only once its body has
arrived, so uploads in progress are bounded here instead, separately and more loosely:
an upload costs a socket and its buffered bytes, not the pipeline's capacity. Without
this split, forty connections trickling a byte a second held every slot of a variant
and locked every other client out (issue 20).

* ``max_uploads`` bodies arrive at once in all (past it: 503 + Retry-After), counted
  from the request's start to its last body byte.
* At most ``max_per_client`` *slow* ones (still arriving after ``SLOW_AFTER_S``) from one
  client address; past it that upload gets 429 and its connection is closed. Only slow
  ones count, so an honest client behind the same address (a NAT, a proxy that passes no
  client address) still gets through while an attacker's trickles are turned away.
* A body must arrive within ``upload_timeout_s`` and, once ``upload_grace_s`` has
  passed, at ``upload_min_rate_bytes`` per second on average; else 408 and the
  connection is closed (the same idea as nginx's ``client_body_timeout``, but on the
  whole body, so one byte every few seconds does not keep it alive).

It applies to every request that carries a body, whatever protocol adapter it is for.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import Overloaded, ServiceError, TooManyUploads, UploadTooSlow

SLOW_AFTER_S = 1.0  # an upload still arriving after this long counts against its address


@dataclass(frozen=True)
class UploadLimits:
    max_uploads: int = 512
    max_per_client: int = 64  # 0: no per-client bound
    timeout_s: float = 10.0
    min_rate: int = 4096  # bytes/s once the grace period is over; 0: no rate floor
    grace_s: float = 5.0

    def allowed_until(self, start: float, received: int) -> float:
        """When a body that has ``received`` bytes so far must have sent more by."""
        until = start + self.timeout_s
        if self.min_rate > 0:
            until = min(until, start + self.grace_s + received / self.min_rate)
        return until


class UploadCounter:
    """Uploads in progress in all, and slow ones per client address. ``observe(event,
    delta)`` hears of every change (``in_progress`` +1/-1, ``refused``,
    ``refused_client``, ``too_slow``): the metrics see it without this module knowing of
    Prometheus."""

    def __init__(
        self, limits: UploadLimits, observe: Callable[[str, int], None] | None = None
    ) -> None:
        self.limits = limits
        self.total = 0
        self.slow_by_client: Counter[str] = Counter()
        self._observe = observe or (lambda event, delta: None)

    def enter(self) -> None:
        """Count one more upload, or raise ``Overloaded`` (503) past the server's bound."""
        if self.total >= self.limits.max_uploads:
            self._observe("refused", 1)
            raise Overloaded(
                f"{self.total} uploads are being received, the most this server takes at "
                "once (MOBILENET_MAX_UPLOADS); retry in 1 s or use another replica",
                retry_after=1,
                uploads_in_progress=self.total,
            )
        self.total += 1
        self._observe("in_progress", 1)

    def leave(self) -> None:
        self.total -= 1
        self._observe("in_progress", -1)

    def mark_slow(self, client: str) -> None:
        """An upload of ``client``'s is still arriving after ``SLOW_AFTER_S``: count it,
        or raise ``TooManyUploads`` (429) if that address has its share of slow ones."""
        limit = self.limits.max_per_client
        if limit and self.slow_by_client[client] >= limit:
            self._observe("refused_client", 1)
            raise TooManyUploads(
                f"your address already has {self.slow_by_client[client]} slow uploads in "
                f"progress, the most one client may have (MOBILENET_MAX_UPLOADS_PER_CLIENT); "
                "finish those first",
                retry_after=1,
                limit=limit,
            )
        self.slow_by_client[client] += 1

    def unmark_slow(self, client: str) -> None:
        self.slow_by_client[client] -= 1
        if self.slow_by_client[client] <= 0:
            del self.slow_by_client[client]

    def too_slow(self) -> None:
        self._observe("too_slow", 1)


def _has_body(scope: Scope) -> bool:
    if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
        return False
    headers = dict(scope["headers"])
    length = headers.get(b"content-length")
    if length is not None:
        return length.strip() not in (b"0", b"")
    return b"transfer-encoding" in headers


class UploadGuardMiddleware:
    """Bounds and times the reception of every request body (see the module doc)."""

    def __init__(self, app: ASGIApp, *, counter: UploadCounter, respond) -> None:
        self.app = app
        self.counter = counter
        self.respond = respond  # (scope, send, ServiceError) -> awaitable: the one error shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        client = peer[0] if peer else None
        try:
            self.counter.enter()
        except ServiceError as exc:
            await self.respond(scope, send, exc)
            return
        loop = asyncio.get_running_loop()
        limits, start = self.counter.limits, loop.time()
        received, counted, slow_marked = 0, True, False
        cut: ServiceError | None = None  # why the upload was cut off, if it was
        answered = False

        def done() -> None:
            nonlocal counted, slow_marked
            if counted:
                counted = False
                self.counter.leave()
            if slow_marked:
                slow_marked = False
                self.counter.unmark_slow(client)

        async def timed_receive() -> Message:
            nonlocal received, cut, slow_marked
            if not counted:  # the body is in: waiting now is for a disconnect
                return await receive()
            while True:
                until = limits.allowed_until(start, received)
                check_slow = client is not None and not slow_marked
                if check_slow:
                    until = min(until, start + SLOW_AFTER_S)
                try:
                    async with asyncio.timeout_at(until):
                        message = await receive()
                    break
                except TimeoutError:
                    if check_slow and loop.time() < limits.allowed_until(start, received):
                        try:
                            self.counter.mark_slow(client)
                        except TooManyUploads as exc:
                            cut = exc
                            done()
                            raise
                        slow_marked = True
                        continue  # receive() is cancel-safe: nothing was lost
                    done()
                    self.counter.too_slow()
                    cut = UploadTooSlow(self._slow_message(received, loop.time() - start))
                    raise cut from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    done()
            else:
                done()
            return message

        async def guarded_send(message: Message) -> None:
            # A route that turns any body error into its own answer (FastAPI's 400 for an
            # unreadable JSON body) still answers a too-slow upload with our 408.
            nonlocal answered
            if cut is not None:
                if not answered:
                    answered = True
                    await self.respond(scope, send, cut)
                return
            answered = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except (UploadTooSlow, TooManyUploads):
            if cut is None:
                raise
            if not answered:
                answered = True
                await self.respond(scope, send, cut)
        finally:
            done()

    def _slow_message(self, received: int, elapsed: float) -> str:
        lim = self.counter.limits
        floor = (
            f" and at least {lim.min_rate} bytes/s after the first {lim.grace_s:g} s"
            if lim.min_rate
            else ""
        )
        return (
            f"the request body arrived too slowly ({received} bytes in {elapsed:.1f} s); "
            f"a body must arrive within {lim.timeout_s:g} s{floor} "
            "(MOBILENET_UPLOAD_TIMEOUT_S, MOBILENET_UPLOAD_MIN_RATE_BYTES)"
        )
