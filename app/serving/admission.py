"""Admission control: refuse early (503 + Retry-After) rather than queue into slowness.

The batcher's queue is bounded, but a request also waits before it (decoding), so the
whole path from admission to answer is what must stay bounded. Each variant keeps a
concurrency limit that follows measured latency (a gradient limiter, as in Netflix's
concurrency-limits): every answered request reports its server time (decode + queue +
inference); the limit moves toward ``limit * target / latency``, so it grows while the
server answers faster than the target and shrinks as soon as queueing makes it slower.
Latency reflects contention for the CPU too, which a per-stage work estimate misses.
"""

from __future__ import annotations

import math

from app.errors import Overloaded

ALPHA = 0.2  # EWMA weight of the newest measurement


class Admission:
    """In-flight accounting and the admit/refuse decision for one variant."""

    def __init__(
        self,
        *,
        name: str,
        hard_limit: int,
        cold_limit: int,
        target_s: float,
        min_limit: int = 2,
    ) -> None:
        self.name = name
        self.hard_limit = hard_limit
        self.cold_limit = min(cold_limit, hard_limit)  # until work is measured: one batch
        self.min_limit = min(min_limit, hard_limit)
        self.target_s = target_s
        self.in_flight = 0
        self._limit = float(self.cold_limit)
        self._latency: float | None = None

    def record(self, *, latency_s: float) -> None:
        """One answered request's server-side latency (decode + queue + inference)."""
        lat = (
            latency_s
            if self._latency is None
            else self._latency + ALPHA * (latency_s - self._latency)
        )
        self._latency = lat
        desired = self._limit * self.target_s / max(lat, 1e-4)
        self._limit = min(
            self.hard_limit, max(self.min_limit, self._limit + ALPHA * (desired - self._limit))
        )

    def limit(self) -> int:
        return int(self._limit)

    def retry_after_s(self) -> int:
        per_item = (self._latency or self.target_s) / max(self._limit, 1)
        return max(1, min(60, math.ceil(self.in_flight * per_item)))

    def full(self) -> bool:
        return self.in_flight >= self.limit()

    def overloaded(self) -> Overloaded:
        return Overloaded(
            f"{self.name} is at capacity ({self.in_flight} requests in flight); retry "
            f"in {self.retry_after_s()} s or use another replica",
            retry_after=self.retry_after_s(),
            variant=self.name,
        )

    def enter(self) -> None:
        """Admit one request or raise ``Overloaded`` with a Retry-After."""
        if self.full():
            raise self.overloaded()
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
