"""Admission control: refuse early (503 + Retry-After) rather than queue into slowness.

The batcher's queue is bounded, but a request also waits before it (decoding), so the
whole path from admission to answer is what must stay bounded. Each variant keeps a
concurrency limit that follows measured latency, as Netflix's concurrency-limits and
TCP congestion control do: every answered request reports its server time, from taking
its slot to its answer (reading, decoding, queueing, inference and every wait between).

The limit changes once per window of answers (half the limit, at least four), never per
answer: latency reacts to a new limit only one generation of requests later, and
adjusting faster than that made the limit swing between its floor and its cap under a
flood (measured: 8 <-> 64 every second). At the end of a window:

* the window's p90 above the target: shrink multiplicatively, toward
  ``limit * target / p90`` but at most by half;
* below the target, and the limit was reached during the window: grow additively by
  ``sqrt(limit)`` (at least 1);
* otherwise keep it: a limit that nobody presses against is not evidence of capacity,
  and growing it while idle would let the next burst in all at once.

Requests are counted by their cost (``app.imaging.cost``: about how many ordinary
requests' worth of decoding they are), so a variant's limit is spent on work and a flood
of small files that decode large gets few slots. A request always gets in while nothing
else is in flight, however costly, so one honest large upload on an idle server is
answered.

After a shrink, answers to requests admitted before it are left out of the windows (they
still feed the Retry-After estimate): they waited behind the old, larger crowd, and
judging the new limit by them shrank it again and again, as TCP would if it cut its
window more than once per round trip. Measured at concurrency 64 on 2 cores: the limit
swung 64 -> 21 -> 64 and the server answered less than at concurrency 16.
"""

from __future__ import annotations

import math

from app.errors import Overloaded

ALPHA = 0.2  # EWMA weight of the newest latency (Retry-After estimates)
MIN_WINDOW = 4


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
        self.cold_limit = min(cold_limit, hard_limit)  # until answers are measured
        self.min_limit = min(min_limit, hard_limit)
        self.target_s = target_s
        self.in_flight: float = 0  # cost units of the admitted requests not yet answered
        self.heavy_in_flight: float = 0  # of which heavy requests (explains) hold
        self._limit = float(self.cold_limit)
        self._latency: float | None = None
        self._window: list[float] = []
        self._pressed = False  # the limit was reached during the current window
        self._epoch = 0  # shrinks so far; ``enter`` hands it out, ``record`` takes it back

    def record(self, *, latency_s: float, epoch: int | None = None) -> None:
        """One answered request's server-side latency, from admission to answer;
        ``epoch`` is what ``enter`` returned for it (None: judge it in any case)."""
        self._latency = (
            latency_s
            if self._latency is None
            else self._latency + ALPHA * (latency_s - self._latency)
        )
        if epoch is not None and epoch < self._epoch:
            return  # admitted before the last shrink: says nothing about the new limit
        self._window.append(latency_s)
        if len(self._window) < max(MIN_WINDOW, int(self._limit) // 2):
            return
        window = sorted(self._window)
        p90 = window[int(0.9 * (len(window) - 1))]
        if p90 > self.target_s:
            self._limit = max(self.min_limit, self._limit * max(0.5, self.target_s / p90))
            self._epoch += 1
        elif self._pressed:
            self._limit = min(self.hard_limit, self._limit + max(1.0, math.sqrt(self._limit)))
        self._window.clear()
        self._pressed = self.in_flight >= self.limit()

    def limit(self) -> int:
        return int(self._limit)

    def retry_after_s(self) -> int:
        per_item = (self._latency or self.target_s) / max(self._limit, 1)
        return max(1, min(60, math.ceil(self.in_flight * per_item)))

    def full(self, cost: float = 1.0) -> bool:
        """Would a request of ``cost`` be refused now?"""
        return self.in_flight > 0 and self.in_flight + cost > self.limit()

    def overloaded(self, cost: float = 1.0) -> Overloaded:
        self._pressed = True
        heavy = f", and this request weighs {cost:.1f}" if cost >= 1.5 else ""
        return Overloaded(
            f"{self.name} is at capacity ({self.in_flight:.0f} of {self.limit()} units of "
            f"work in flight{heavy}); retry in {self.retry_after_s()} s or use another replica",
            retry_after=self.retry_after_s(),
            variant=self.name,
        )

    def charge(self, cost: float, *, heavy: bool = False) -> float:
        """The units a request of ``cost`` holds. A heavy one (an explain, ``cost``
        forwards) holds at most half the limit, so it fits an idle variant whatever its
        size; an upload holds its decode cost (``app.imaging.cost``)."""
        return min(cost, self._half()) if heavy else cost

    def _half(self) -> int:
        return max(1, self.limit() // 2)

    def enter(self, charge: float = 1.0, *, heavy: bool = False) -> int:
        """Admit one request holding ``charge`` (from ``charge()``) or raise ``Overloaded``
        with a Retry-After; returns the epoch to pass back to ``record`` with its latency.

        An upload always gets in while nothing else is in flight, however costly. Heavy
        requests together hold at most half the limit, so a burst of them cannot starve
        predicts."""
        if heavy:
            refused = self.in_flight + charge > self.limit() or (
                self.heavy_in_flight + charge > self._half()
            )
        else:
            refused = self.full(charge)
        if refused:
            raise self.overloaded(charge)
        self.in_flight += charge
        if heavy:
            self.heavy_in_flight += charge
        if self.in_flight >= self.limit():
            self._pressed = True
        return self._epoch

    def leave(self, charge: float = 1.0, *, heavy: bool = False) -> None:
        self.in_flight -= charge
        if heavy:
            self.heavy_in_flight -= charge
        if self.in_flight < 1e-9:
            self.in_flight = 0
