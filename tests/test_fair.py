"""The fair thread pool shared by every variant (app.batching.fair)."""

from __future__ import annotations

import threading
import time

import pytest

from app.batching.fair import FairExecutor, LaneActivity


def _blocked_pool(threads: int) -> tuple[FairExecutor, threading.Event, list[str]]:
    """A pool whose threads are all held by a gate task, so the test can queue first."""
    pool = FairExecutor(threads)
    gate = threading.Event()
    started = threading.Barrier(threads + 1)

    def hold() -> None:
        started.wait()
        gate.wait()

    for _ in range(threads):
        pool.submit_to("gate", 1.0, hold)
    started.wait(5)
    return pool, gate, []


def test_a_lane_that_spent_a_lot_waits_for_one_that_spent_little() -> None:
    pool, gate, order = _blocked_pool(1)
    # Heavy lane first: three tasks of cost 10, then the light lane's three of cost 1.
    futs = [pool.submit_to("heavy", 10, order.append, f"H{i}") for i in range(3)]
    futs += [pool.submit_to("light", 1, order.append, f"L{i}") for i in range(3)]
    gate.set()
    for f in futs:
        f.result(5)
    # First come goes first, then the light lane's tasks all run before the heavy lane's
    # second: its finish tag moved 10 units on with one task.
    assert order == ["H0", "L0", "L1", "L2", "H1", "H2"]
    pool.shutdown()


def test_equal_lanes_alternate() -> None:
    pool, gate, order = _blocked_pool(1)
    futs = [pool.submit_to("a", 1, order.append, f"a{i}") for i in range(4)]
    futs += [pool.submit_to("b", 1, order.append, f"b{i}") for i in range(4)]
    gate.set()
    for f in futs:
        f.result(5)
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]
    pool.shutdown()


def test_a_lone_lane_gets_every_thread() -> None:
    pool = FairExecutor(2)
    running, peak, lock = [0], [0], threading.Lock()

    def work() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    for f in [pool.submit_to("only", 5, work) for _ in range(6)]:
        f.result(5)
    assert peak[0] == 2
    pool.shutdown()


def test_while_another_lane_waits_a_lane_holds_at_most_its_share() -> None:
    # Two threads; the heavy lane fills both, a light task arrives: the next free thread
    # goes to it, and the heavy lane gets back to two only when nobody else waits.
    pool = FairExecutor(2)
    release = {name: threading.Event() for name in ("h0", "h1", "h2", "h3")}
    log: list[str] = []
    lock = threading.Lock()

    def heavy(name: str) -> None:
        with lock:
            log.append(f"start {name}")
        release[name].wait(5)

    def light() -> None:
        with lock:
            log.append("light")

    hs = [pool.submit_to("heavy", 50, heavy, n) for n in ("h0", "h1", "h2", "h3")]
    time.sleep(0.1)
    f = pool.submit_to("light", 1, light)
    release["h0"].set()
    f.result(5)
    assert log[:3] == ["start h0", "start h1", "light"]
    for e in release.values():
        e.set()
    for h in hs:
        h.result(5)
    pool.shutdown()


def test_errors_and_results_reach_the_future_and_the_pool_goes_on() -> None:
    pool = FairExecutor(1)
    with pytest.raises(ZeroDivisionError):
        pool.submit_to("a", 1, lambda: 1 / 0).result(5)
    assert pool.lane("a").submit(lambda x: x * 2, 21).result(5) == 42
    assert pool.submit(lambda: "default lane").result(5) == "default lane"
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_shutdown_cancels_what_is_queued() -> None:
    pool, gate, _ = _blocked_pool(1)
    queued = [pool.submit_to("a", 1, time.sleep, 0) for _ in range(3)]
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert all(f.cancelled() for f in queued)


def test_wait_times_are_reported_per_lane() -> None:
    waits: list[tuple[str, float]] = []
    pool = FairExecutor(1, on_wait=lambda lane, s: waits.append((lane, s)))
    pool.submit_to("a", 1, time.sleep, 0.05)
    pool.submit_to("b", 1, time.sleep, 0).result(5)
    assert [lane for lane, _ in waits] == ["a", "b"]
    assert waits[1][1] >= 0.04  # b waited for a's 50 ms
    pool.shutdown()


def test_a_recently_busy_lane_keeps_its_share_for_a_while() -> None:
    # Lane "probe" ran a moment ago in another pool sharing the activity: the flooded lane
    # gets one of the two threads, not both, until the linger is over.
    activity = LaneActivity(linger_s=0.3)
    other = FairExecutor(1, activity=activity)
    pool = FairExecutor(2, activity=activity)
    other.submit_to("probe", 1, lambda: None).result(5)
    running, peak, lock = [0], [0], threading.Lock()

    def work() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    t0 = time.monotonic()
    for f in [pool.submit_to("flood", 1, work) for _ in range(4)]:
        f.result(5)
    assert peak[0] == 1 and time.monotonic() - t0 < 0.3  # all four ran within the linger
    time.sleep(0.35)  # the probe lane is no longer recent: the flood gets both threads
    for f in [pool.submit_to("flood", 1, work) for _ in range(4)]:
        f.result(5)
    assert peak[0] == 2
    pool.shutdown()
    other.shutdown()
