"""Dynamic batching: many concurrent requests for one model variant become few predict() calls.

Why: a forward pass over a batch of 16 images costs far less than 16 passes over one, so each
variant gets a bounded queue and one worker task that cuts batches from it. The worker hands
each batch to ``predict`` in an executor thread, so the event loop never waits on the model.

This module knows nothing of HTTP, torch or numpy: ``predict`` is a plain function, which keeps
the batching logic testable with fakes. Every accepted request gets exactly one outcome: a
``Completed`` result or one of the domain errors in ``app.errors``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar

from app.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded, ShuttingDown

T = TypeVar("T")
R = TypeVar("R")

PredictFn = Callable[[list[T]], Sequence[R]]
"""Synchronous; runs in an executor thread; returns one result per input, in input order."""

log = logging.getLogger(__name__)

IDLE_WAKE_S = 0.5  # an idle worker still refreshes its heartbeat this often
DEFAULT_SERVICE_RATE = 50.0  # items/s assumed for Retry-After before any batch was measured
_RATE_ALPHA = 0.3  # EWMA weight of the newest batch


@dataclass(frozen=True, slots=True)
class Completed(Generic[R]):
    """One request's result plus the timings that the API reports and the metrics record."""

    result: R
    queue_ms: float  # submit -> predict() of its batch started
    inference_ms: float  # the batch's predict() duration
    batch_size: int


@dataclass
class BatchStats:
    """Counters. Once nothing is pending, ``submitted == settled``: no request is lost."""

    submitted: int = 0
    batches: int = 0  # predict() calls, failed ones and split halves included
    items_done: int = 0
    rejected: int = 0  # refused with Overloaded
    expired: int = 0
    cancelled: int = 0
    failed: int = 0  # items answered with InferenceFailed
    abandoned: int = 0  # still pending when the worker stopped (close past grace, crash)
    splits: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)

    @property
    def settled(self) -> int:
        return (
            self.items_done
            + self.rejected
            + self.expired
            + self.cancelled
            + self.failed
            + self.abandoned
        )


class BatchObserver(Protocol):
    """Metric hooks, so Prometheus can be attached elsewhere. Subclass to inherit the no-ops.

    Hooks run on the event loop and must be quick; an exception in one is logged and ignored.
    """

    def on_batch(self, name: str, size: int, queue_ms: list[float], inference_ms: float) -> None:
        return None

    def on_reject(self, name: str) -> None:
        return None

    def on_submit_many(self, name: str, size: int) -> None:
        """A client batch of ``size`` items was queued as one request (``submit_many``)."""
        return None

    def on_expire(self, name: str) -> None:
        return None

    def on_failure(self, name: str, exc: BaseException) -> None:
        return None


@dataclass(eq=False, slots=True)
class _Entry(Generic[T, R]):
    item: T
    future: asyncio.Future[Completed[R]]
    enqueued_at: float
    deadline: float | None
    taken: bool = False  # popped into a batch: from then on it is computed, not expired


class Batcher(Generic[T, R]):
    """A bounded queue and a single worker task for one model variant.

    A batch is cut when ``max_batch_size`` items are queued or the oldest has waited
    ``max_wait_ms``; a worker woken from idle runs what it finds at once, so a lone request
    never pays a fixed delay. ``clock`` (seconds, monotonic) is used for deadlines and timings.
    """

    def __init__(
        self,
        predict: PredictFn[T, R],
        *,
        name: str,
        max_batch_size: int = 16,
        max_wait_ms: float = 2.0,
        queue_limit: int = 256,
        executor: concurrent.futures.Executor | None = None,
        split_on: Callable[[BaseException], bool] | None = None,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1 or queue_limit < 1 or max_wait_ms < 0:
            raise ValueError("need max_batch_size >= 1, queue_limit >= 1 and max_wait_ms >= 0")
        self.name = name
        self._predict = predict
        self._max_batch = max_batch_size
        self._max_wait_s = max_wait_ms / 1000
        self._queue_limit = queue_limit
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"batcher-{name}"
        )
        self._split_on = split_on
        self._observer = observer
        self._clock = clock
        self._queue: deque[_Entry[T, R]] = deque()
        self._inflight: list[_Entry[T, R]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._stats = BatchStats()
        self._rate: float | None = None
        self._heartbeat = clock()
        self._batch_started: float | None = None

    # --- state ------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Requests queued and not yet in a running batch."""
        return len(self._queue)

    @property
    def max_batch_size(self) -> int:
        """The most items one predict() call gets."""
        return self._max_batch

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def stats(self) -> BatchStats:
        """A snapshot of the counters."""
        return replace(self._stats, batch_sizes=Counter(self._stats.batch_sizes))

    @property
    def last_heartbeat(self) -> float:
        """``clock()`` time the worker last showed progress (idle wake-up or batch boundary)."""
        return self._heartbeat

    def service_rate(self) -> float:
        """Items/s over recent batches (EWMA), including time spent waiting for the executor."""
        return self._rate if self._rate is not None else DEFAULT_SERVICE_RATE

    def retry_after_s(self) -> int:
        """Seconds until the current queue should have drained, clamped to [1, 60]."""
        return min(60, max(1, math.ceil(len(self._queue) / self.service_rate())))

    def stalled(self, *, threshold_s: float) -> bool:
        """True if the worker died (not by ``close``) or one batch has run over ``threshold_s``."""
        if self._task is None:
            return False
        if self._task.done():
            return not self._closing
        started = self._batch_started
        return started is not None and self._clock() - started > threshold_s

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the worker on the running loop; a no-op if it already runs."""
        if self._closing:
            raise ShuttingDown(f"model {self.name} is shutting down")
        if not self.running:
            self._heartbeat = self._clock()
            self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def close(self, *, grace_s: float = 30.0) -> None:
        """Refuse new work, let queued and running items finish within ``grace_s``, then stop.

        Whatever is still pending after the grace period gets ``ShuttingDown``. A predict()
        call that is stuck in its thread cannot be interrupted; its result is discarded.
        """
        self._closing = True
        self._wakeup.set()
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait((task,), timeout=grace_s)
            if not task.done():
                log.warning(
                    "batcher %s: still busy after %.1fs grace, cancelling", self.name, grace_s
                )
                task.cancel()
                await asyncio.wait((task,))
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # --- requests ---------------------------------------------------------------------------
    async def submit(self, item: T, *, deadline: float | None = None) -> Completed[R]:
        """Queue ``item`` and wait for its result; ``deadline`` is an absolute ``clock()`` time.

        Raises Overloaded (queue full), DeadlineExceeded (deadline passed before its batch
        started), InferenceFailed, ShuttingDown, or NotReady (worker not started or dead).
        """
        if self._closing:
            raise ShuttingDown(f"model {self.name} is shutting down and takes no new requests")
        if not self.running:
            raise NotReady(f"the batch worker of model {self.name} is not running")
        self._stats.submitted += 1
        if len(self._queue) >= self._queue_limit:
            self._stats.rejected += 1
            self._notify("on_reject")
            retry = self.retry_after_s()
            raise Overloaded(
                f"model {self.name} has {self._queue_limit} requests queued, the most it takes;"
                f" retry in {retry}s",
                retry_after=retry,
            )
        now = self._clock()
        entry: _Entry[T, R] = _Entry(
            item, asyncio.get_running_loop().create_future(), now, deadline
        )
        fut = entry.future
        if deadline is not None and deadline <= now:
            self._expire(entry)
            return fut.result()
        self._queue.append(entry)
        self._wakeup.set()
        try:
            if deadline is not None:
                # Answer at the deadline rather than when the worker next looks at the queue.
                await asyncio.wait((fut,), timeout=deadline - now)
                if not fut.done() and not entry.taken:
                    self._unqueue(entry)
                    self._expire(entry)
            return await fut
        except asyncio.CancelledError:
            # The client went away. Unless the worker already settled it, drop the item so
            # no compute is spent on it (if its batch runs already, the result is discarded).
            if not fut.done():
                fut.cancel()
            if fut.cancelled():
                self._unqueue(entry)
                self._stats.cancelled += 1
            else:
                fut.exception()  # answered just before the cancel: mark any error as seen
            raise

    async def submit_many(
        self, items: Sequence[T], *, deadline: float | None = None
    ) -> list[Completed[R]]:
        """Queue ``items`` together as one request and wait for all their results, in order.

        Why not N ``submit`` calls: a client that sends a batch (an OIP v2 tensor of N
        images) is one request. Its items enter the queue back to back in one step, so
        they ride in the same batch (or consecutive ones past ``max_batch_size``), and
        they are refused, expired or cancelled as a unit: one Overloaded if they do not
        all fit, one DeadlineExceeded if any of them has not started by ``deadline``.
        """
        if not items:
            return []
        if self._closing:
            raise ShuttingDown(f"model {self.name} is shutting down and takes no new requests")
        if not self.running:
            raise NotReady(f"the batch worker of model {self.name} is not running")
        n = len(items)
        self._stats.submitted += n
        if len(self._queue) + n > self._queue_limit:
            self._stats.rejected += n
            self._notify("on_reject")
            retry = self.retry_after_s()
            raise Overloaded(
                f"model {self.name} has {len(self._queue)} requests queued and takes at most"
                f" {self._queue_limit}; {n} more do not fit; retry in {retry}s",
                retry_after=retry,
            )
        now = self._clock()
        loop = asyncio.get_running_loop()
        entries = [_Entry(item, loop.create_future(), now, deadline) for item in items]
        if deadline is not None and deadline <= now:
            for entry in entries:
                self._expire(entry)
            return [entries[0].future.result()]  # raises DeadlineExceeded
        self._queue.extend(entries)
        self._wakeup.set()
        self._notify("on_submit_many", n)
        futures = [e.future for e in entries]
        try:
            timeout = None if deadline is None else deadline - now
            await asyncio.wait(futures, timeout=timeout)
            if deadline is not None and not all(f.done() for f in futures):
                for entry in entries:  # not started by the deadline: no compute spent on it
                    if not entry.future.done() and not entry.taken:
                        self._unqueue(entry)
                        self._expire(entry)
            results = await asyncio.gather(*futures, return_exceptions=True)
        except asyncio.CancelledError:
            for entry in entries:
                if not entry.future.done():
                    entry.future.cancel()
                if entry.future.cancelled():
                    self._unqueue(entry)
                    self._stats.cancelled += 1
                else:
                    entry.future.exception()  # settled before the cancel: mark as seen
            raise
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return list(results)

    # --- worker -----------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._work()
        except Exception:
            log.exception("batcher %s: worker crashed", self.name)
        finally:
            leftover = [e for e in (*self._inflight, *self._queue) if not e.future.done()]
            self._inflight, self._batch_started = [], None
            self._queue.clear()
            for e in leftover:
                e.future.set_exception(
                    ShuttingDown(f"model {self.name} shut down before this request ran")
                    if self._closing
                    else InferenceFailed(f"the batch worker of model {self.name} stopped")
                )
                self._stats.abandoned += 1

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        fresh = True  # just woke from idle: nobody else is queued, so do not wait for company
        while True:
            self._heartbeat = self._clock()
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), IDLE_WAKE_S)
                fresh = True
                continue
            if not fresh:
                await self._fill()
            fresh = False
            batch = self._take()
            if batch:
                self._inflight, self._batch_started = batch, self._clock()
                await self._execute(loop, batch)
                self._inflight, self._batch_started = [], None

    async def _fill(self) -> None:
        """Wait until a full batch is queued or the oldest item has waited ``max_wait``."""
        while self._queue and len(self._queue) < self._max_batch and not self._closing:
            remaining = self._queue[0].enqueued_at + self._max_wait_s - self._clock()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _take(self) -> list[_Entry[T, R]]:
        now = self._clock()
        batch: list[_Entry[T, R]] = []
        while self._queue and len(batch) < self._max_batch:
            entry = self._queue.popleft()
            if entry.future.done():  # cancelled; its submitter counts it
                continue
            if entry.deadline is not None and entry.deadline <= now:
                self._expire(entry)
                continue
            entry.taken = True
            batch.append(entry)
        return batch

    async def _execute(self, loop: asyncio.AbstractEventLoop, entries: list[_Entry[T, R]]) -> None:
        live = [e for e in entries if not e.future.done()]  # split halves: skip the cancelled
        if not live:
            return
        self._stats.batches += 1
        self._stats.batch_sizes[len(live)] += 1
        dispatched = self._clock()
        try:
            results, t0, t1 = await loop.run_in_executor(
                self._executor, self._timed_predict, [e.item for e in live]
            )
            if len(results) != len(live):
                raise ValueError(f"predict returned {len(results)} results for {len(live)} inputs")
        except Exception as exc:
            if len(live) > 1 and self._should_split(exc):
                self._stats.splits += 1
                log.warning("batcher %s: %r on a batch of %d, splitting", self.name, exc, len(live))
                mid = len(live) // 2
                await self._execute(loop, live[:mid])
                await self._execute(loop, live[mid:])
            else:
                self._fail(live, exc)
            return
        inference_ms = (t1 - t0) * 1000
        self._record_rate(len(live), self._clock() - dispatched)
        queue_ms = [(t0 - e.enqueued_at) * 1000 for e in live]
        for entry, result, waited in zip(live, results, queue_ms, strict=True):
            if not entry.future.done():  # else cancelled while its batch ran
                entry.future.set_result(Completed(result, waited, inference_ms, len(live)))
                self._stats.items_done += 1
        self._notify("on_batch", len(live), queue_ms, inference_ms)

    def _timed_predict(self, items: list[T]) -> tuple[Sequence[R], float, float]:
        """Runs in the executor: timing here excludes the wait for a shared executor's thread."""
        t0 = self._clock()
        results = self._predict(items)
        return results, t0, self._clock()

    def account(self, queue_ms: float, inference_ms: float) -> None:
        """Count one item its caller ran to completion outside the queue (a lone image
        forwarded on the thread that decoded it): the stats, the service rate and the
        observer see it as a batch of one, so metrics and Retry-After stay whole."""
        self._stats.submitted += 1
        self._stats.batches += 1
        self._stats.batch_sizes[1] += 1
        self._stats.items_done += 1
        self._heartbeat = self._clock()
        self._record_rate(1, max(inference_ms, 1e-3) / 1000)
        self._notify("on_batch", 1, [queue_ms], inference_ms)

    def count_client_batch(self, n: int) -> None:
        """A client batch of ``n`` run outside ``submit_many`` (one image run to
        completion): the client-batch metric still counts it."""
        self._notify("on_submit_many", n)

    # --- helpers ----------------------------------------------------------------------------
    def _fail(self, entries: list[_Entry[T, R]], exc: Exception) -> None:
        log.error(
            "batcher %s: predict failed on a batch of %d", self.name, len(entries), exc_info=exc
        )
        for entry in entries:
            if not entry.future.done():
                err = InferenceFailed(
                    f"model {self.name} failed on a batch of {len(entries)}:"
                    f" {type(exc).__name__}: {exc}"
                )
                err.__cause__ = exc
                entry.future.set_exception(err)
                self._stats.failed += 1
        self._notify("on_failure", exc)

    def _expire(self, entry: _Entry[T, R]) -> None:
        waited_ms = (self._clock() - entry.enqueued_at) * 1000
        entry.future.set_exception(
            DeadlineExceeded(
                f"the deadline passed after {waited_ms:.0f} ms in the queue of model {self.name}"
            )
        )
        self._stats.expired += 1
        self._notify("on_expire")

    def _unqueue(self, entry: _Entry[T, R]) -> None:
        with contextlib.suppress(ValueError):  # the worker may have popped it already
            self._queue.remove(entry)

    def _record_rate(self, size: int, seconds: float) -> None:
        sample = size / max(seconds, 1e-6)
        prev = self._rate
        self._rate = sample if prev is None else _RATE_ALPHA * sample + (1 - _RATE_ALPHA) * prev

    def _should_split(self, exc: Exception) -> bool:
        if self._split_on is None:
            return False
        try:
            return bool(self._split_on(exc))
        except Exception:
            log.exception("batcher %s: split_on raised", self.name)
            return False

    def _notify(self, event: str, *args: Any) -> None:
        hook = getattr(self._observer, event, None)
        if hook is None:
            return
        try:
            hook(self.name, *args)
        except Exception:
            log.exception("batcher %s: observer %s failed", self.name, event)
