"""A thread pool that is fair between lanes: one lane per model variant.

The decode pool and the inference thread are shared by every variant. Served first come
first served, a variant flooded with heavy work (a 36 MP PNG decodes for ~1 s) makes
every other variant wait behind it (issue 21: a V1 request took 1.4-7.2 s while V3 was
flooded). Here each lane has its own queue, and the next task is the one with the
smallest *start tag* of start-time fair queueing (Goyal et al., SIGCOMM '96): a task's
tag is ``max(virtual time, its lane's last finish tag)`` and its lane's finish tag grows by
the task's ``cost``. A lane that has spent a lot (many or costly tasks) waits while a
lane that has spent little goes first, yet a lone lane is never held back: the pool is
work-conserving. While other lanes wait, a lane also never holds more than its share of
the threads (``threads / busy lanes``, at least one), so two heavy decodes cannot take
both cores from a light request that arrives after them.

Several pools can share one ``LaneActivity``: a lane busy in any of them (a variant whose
batch runs on the inference thread) then counts in every pool's share, and a lane at its
share waits even with a thread free, so the core goes to the other variant's work: with
the decode pool alone fair, a V1 request's forward still shared the cores with two V2
decodes and took 31 ms instead of ~15.

``lane(key)`` gives a ``concurrent.futures.Executor`` for one lane (what the batcher and
``loop.run_in_executor`` take); ``submit(fn)`` on the pool itself uses a default lane.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_LANE = "_default"


@dataclass(slots=True)
class _Task:
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    future: concurrent.futures.Future
    tag: float
    enqueued: float


@dataclass
class _Lane:
    queue: deque[_Task] = field(default_factory=deque)
    finish: float = 0.0  # finish tag of the lane's last queued task
    running: int = 0


class LaneActivity:
    """Tasks queued or running per lane, over every pool that shares it. A lane that went
    idle less than ``linger_s`` ago still counts as busy: a variant whose requests come
    every few tens of milliseconds keeps its share between them, instead of finding both
    decode threads taken by a flooded variant each time one arrives (a V1 probe under a
    V2 flood: p50 23 ms against 10 idle without it)."""

    def __init__(self, linger_s: float = 0.1) -> None:
        self.linger_s = linger_s
        self._lock = threading.Lock()
        self._tasks: dict[str, int] = {}
        self._idle_since: dict[str, float] = {}
        self._pools: list[FairExecutor] = []

    def busy(self) -> int:
        now = time.monotonic()
        with self._lock:
            for key in [k for k, t in self._idle_since.items() if now - t > self.linger_s]:
                del self._idle_since[key]
            return len(self._tasks) + len(self._idle_since)

    def add(self, key: str, n: int) -> bool:
        """Count ``n`` more (or fewer) tasks of ``key``; True if the lane went idle."""
        with self._lock:
            left = self._tasks.get(key, 0) + n
            if left > 0:
                self._tasks[key] = left
                self._idle_since.pop(key, None)
                return False
            self._tasks.pop(key, None)
            if self.linger_s > 0:
                self._idle_since[key] = time.monotonic()
            return True

    def wake(self, source: FairExecutor) -> None:
        """A lane went idle: the other pools may now give its share to the rest."""
        for pool in self._pools:
            if pool is not source:
                with pool._cond:
                    pool._cond.notify_all()


class FairExecutor(concurrent.futures.Executor):
    """``threads`` worker threads serving per-key lanes by start-time fair queueing."""

    def __init__(
        self,
        threads: int,
        *,
        name: str = "fair",
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
        on_wait: Callable[[str, float], None] | None = None,
        activity: LaneActivity | None = None,
    ) -> None:
        self._threads_n = max(1, threads)
        self._activity = activity
        if activity is not None:
            activity._pools.append(self)
        self._cond = threading.Condition()
        self._lanes: dict[str, _Lane] = {}
        self._vtime = 0.0
        self._shutdown = False
        self._started: dict[int, tuple[str, float]] = {}  # thread -> (lane, task start)
        self._on_wait = on_wait  # (lane, seconds queued): the metrics' view of the wait
        self._threads = [
            threading.Thread(
                target=self._worker, args=(initializer, initargs), name=f"{name}_{i}", daemon=True
            )
            for i in range(self._threads_n)
        ]
        for t in self._threads:
            t.start()

    # --- submitting -------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any):
        return self.submit_to(DEFAULT_LANE, 1.0, fn, *args, **kwargs)

    def submit_to(
        self, key: str, cost: float, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
        """Queue ``fn(*args, **kwargs)`` in lane ``key``, weighing ``cost`` (> 0)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane()
            tag = max(self._vtime, lane.finish)
            lane.finish = tag + max(cost, 1e-9)
            lane.queue.append(_Task(fn, args, kwargs, future, tag, time.monotonic()))
            if self._activity is not None:
                self._activity.add(key, 1)
            self._cond.notify()
        return future

    def lane(self, key: str, cost: float = 1.0) -> concurrent.futures.Executor:
        """An executor whose every task goes to lane ``key`` at ``cost``."""
        return _LaneExecutor(self, key, cost)

    def load(self) -> int:
        """Tasks running or queued, all lanes together (a lock-free glance)."""
        return sum(len(lane.queue) + lane.running for lane in list(self._lanes.values()))

    def running_over(self, seconds: float) -> list[str]:
        """Lanes with a task running for more than ``seconds`` (a wedged task: readiness
        reports it, as the batcher reports a batch that never ends)."""
        now = time.monotonic()
        return sorted({key for key, t0 in list(self._started.values()) if now - t0 > seconds})

    def waiting(self) -> dict[str, int]:
        """Tasks queued per lane (not yet running)."""
        with self._cond:
            return {k: len(v.queue) for k, v in self._lanes.items() if v.queue}

    # --- scheduling -------------------------------------------------------------------------
    def _pick(self) -> tuple[str, _Task] | None:
        """The queued task with the smallest start tag among lanes under their share."""
        queued = [(k, lane) for k, lane in self._lanes.items() if lane.queue]
        if not queued:
            return None
        if self._activity is not None:
            busy = self._activity.busy()
        else:
            busy = sum(1 for lane in self._lanes.values() if lane.queue or lane.running)
        share = max(1, math.floor(self._threads_n / max(1, busy)))
        eligible = [(k, lane) for k, lane in queued if lane.running < share]
        if not eligible:
            if self._activity is not None:
                return None  # other lanes are busy elsewhere: leave them this core
            eligible = queued  # only lanes at their share wait: nobody else is kept waiting
        key, lane = min(eligible, key=lambda kv: kv[1].queue[0].tag)
        task = lane.queue.popleft()
        lane.running += 1
        self._vtime = max(self._vtime, task.tag)
        return key, task

    def _worker(self, initializer: Callable[..., None] | None, initargs: tuple) -> None:
        if initializer is not None:
            initializer(*initargs)
        while True:
            with self._cond:
                while True:
                    picked = self._pick()
                    if picked is not None or self._shutdown:
                        break
                    # A lingering lane's share frees itself with no event: look again then.
                    self._cond.wait(self._activity.linger_s if self._activity else None)
                if picked is None:
                    return
            key, task = picked
            try:
                if self._on_wait is not None:
                    self._on_wait(key, time.monotonic() - task.enqueued)
                if task.future.set_running_or_notify_cancel():
                    tid = threading.get_ident()
                    self._started[tid] = (key, time.monotonic())
                    try:
                        result = task.fn(*task.args, **task.kwargs)
                    except BaseException as exc:
                        del self._started[tid]  # before the waiter can look again
                        task.future.set_exception(exc)
                    else:
                        del self._started[tid]
                        task.future.set_result(result)
            finally:
                went_idle = False
                with self._cond:
                    lane = self._lanes[key]
                    lane.running -= 1
                    if not lane.queue and not lane.running and lane.finish <= self._vtime:
                        del self._lanes[key]  # idle: a new lane starts at virtual time
                    if self._activity is not None:
                        went_idle = self._activity.add(key, -1)
                    self._cond.notify_all()
                if went_idle:
                    self._activity.wake(self)

    # --- shutting down ----------------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                for key, lane in self._lanes.items():
                    while lane.queue:
                        lane.queue.popleft().future.cancel()
                        if self._activity is not None:
                            self._activity.add(key, -1)
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()


class _LaneExecutor(concurrent.futures.Executor):
    """One lane of a ``FairExecutor``, as a plain executor."""

    def __init__(self, pool: FairExecutor, key: str, cost: float) -> None:
        self._pool, self._key, self._cost = pool, key, cost

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any):
        return self._pool.submit_to(self._key, self._cost, fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """The pool is shared: shutting one lane down is the pool owner's business."""
