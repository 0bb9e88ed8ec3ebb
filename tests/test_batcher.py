"""Dynamic batcher: batching policy, back-pressure, deadlines, faults, shutdown, heartbeat.

No HTTP and no torch: predict functions are fakes that sleep to simulate compute.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from app.batching import Batcher, BatchObserver, Completed
from app.errors import (
    DeadlineExceeded,
    InferenceFailed,
    NotReady,
    Overloaded,
    ShuttingDown,
)


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), timeout=15))


class Recorder(BatchObserver):
    """Overrides some hooks only: the others must fall back to the Protocol's no-ops."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, list[float], float]] = []
        self.rejects = 0
        self.failures: list[BaseException] = []

    def on_batch(self, name: str, size: int, queue_ms: list[float], inference_ms: float) -> None:
        self.batches.append((size, queue_ms, inference_ms))

    def on_reject(self, name: str) -> None:
        self.rejects += 1

    def on_failure(self, name: str, exc: BaseException) -> None:
        self.failures.append(exc)


class Gate:
    """A predict that records its batches and blocks while the gate is shut."""

    def __init__(self, fn: Callable[[int], Any] = lambda x: x * 10, delay_s: float = 0.0) -> None:
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.batches: list[list[int]] = []
        self.fn = fn
        self.delay_s = delay_s

    def __call__(self, items: list[int]) -> list[Any]:
        self.batches.append(list(items))
        self.entered.set()
        self.open.wait(10)
        time.sleep(self.delay_s)
        return [self.fn(x) for x in items]

    async def wait_entered(self) -> None:
        await asyncio.to_thread(self.entered.wait, 5)
        self.entered.clear()


async def settle(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0.01)


# --- 1. batching policy ------------------------------------------------------------------
def test_idle_batcher_runs_a_lone_request_without_waiting_for_max_wait() -> None:
    async def main() -> None:
        b = Batcher(Gate(), name="v", max_wait_ms=200)
        await b.start()
        for _ in range(2):  # first call, and again after the worker went idle
            t0 = time.monotonic()
            done = await b.submit(3)
            assert (time.monotonic() - t0) < 0.1
            assert done.result == 30 and done.batch_size == 1
            await asyncio.sleep(0.05)
        await b.close()

    run(main)


def test_batch_is_cut_when_full_without_waiting_for_max_wait() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, name="v", max_batch_size=4, max_wait_ms=10_000)
        await b.start()
        gate.open.clear()
        first = asyncio.create_task(b.submit(0))
        await gate.wait_entered()
        rest = [asyncio.create_task(b.submit(i)) for i in range(1, 9)]
        await settle()
        assert b.depth == 8
        t0 = time.monotonic()
        gate.open.set()
        out = await asyncio.gather(first, *rest)
        assert time.monotonic() - t0 < 1.0  # nowhere near the 10 s max_wait
        assert [c.result for c in out] == [i * 10 for i in range(9)]
        assert gate.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
        assert b.stats.batch_sizes == {1: 1, 4: 2}
        await b.close()

    run(main)


def test_after_a_batch_the_worker_waits_only_the_rest_of_max_wait_of_the_oldest() -> None:
    async def main() -> None:
        gate = Gate(delay_s=0.15)
        b = Batcher(gate, name="v", max_batch_size=16, max_wait_ms=200)
        await b.start()
        a = asyncio.create_task(b.submit(0))  # idle: runs alone at once, takes 150 ms
        await asyncio.sleep(0.10)
        old = asyncio.create_task(b.submit(1))  # t=0.10: its max_wait ends at t=0.30
        await asyncio.sleep(0.10)
        late = asyncio.create_task(b.submit(2))  # t=0.20: after the first batch ended
        done_a, done_old, done_late = await asyncio.gather(a, old, late)
        # The worker freed up at ~0.15, waited until ~0.30 for company, and batched 1 with 2.
        assert gate.batches == [[0], [1, 2]]
        assert done_a.queue_ms < 50
        assert 160 <= done_old.queue_ms < 300  # ~200 ms: its own max_wait, not 200 more
        assert done_late.queue_ms < done_old.queue_ms
        # Busy for 300 ms: the queued item is past its max_wait when the worker frees up,
        # so it runs at once instead of waiting another max_wait.
        gate.delay_s = 0.3
        busy = asyncio.create_task(b.submit(3))
        await asyncio.sleep(0.02)
        queued = asyncio.create_task(b.submit(4))
        await busy
        done_queued = await queued
        assert done_queued.queue_ms < 400  # ~280 ms; a fresh max_wait would make it ~480
        await b.close()

    run(main)


# --- 2. executor ---------------------------------------------------------------------------
def test_predict_runs_in_executor_thread_and_never_blocks_the_loop() -> None:
    threads: list[str] = []

    def slow(items: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        time.sleep(0.3)
        return items

    async def main() -> None:
        b = Batcher(slow, name="v")
        await b.start()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        await b.submit(1)
        t.cancel()
        assert ticks >= 10  # 300 ms of predict, the loop kept ticking
        assert threads == ["batcher-v_0"]
        await b.close()

    run(main)


def test_shared_executor_runs_one_model_at_a_time() -> None:
    lock = threading.Lock()
    active = 0
    peak = 0

    def predict(items: list[int]) -> list[int]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.01)
        with lock:
            active -= 1
        return items

    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            bs = [Batcher(predict, name=f"v{i}", max_batch_size=2, executor=pool) for i in range(3)]
            for b in bs:
                await b.start()
            out = await asyncio.gather(*(b.submit(i) for b in bs for i in range(6)))
            assert [c.result for c in out] == list(range(6)) * 3
            for b in bs:
                await b.close()
                assert b.stats.batches >= 3

    run(main)
    assert peak == 1


# --- 3. back-pressure ----------------------------------------------------------------------
def test_full_queue_rejects_at_once_with_retry_after() -> None:
    async def main() -> None:
        gate = Gate()
        obs = Recorder()
        b = Batcher(gate, name="v", queue_limit=4, observer=obs)
        await b.start()
        assert b.retry_after_s() == 1
        gate.open.clear()
        tasks = [asyncio.create_task(b.submit(0))]
        await gate.wait_entered()
        tasks += [asyncio.create_task(b.submit(i)) for i in range(1, 5)]
        await settle()
        assert b.depth == 4
        t0 = time.monotonic()
        with pytest.raises(Overloaded) as exc:
            await b.submit(99)
        assert time.monotonic() - t0 < 0.05
        assert exc.value.retry_after == 1  # 4 queued at the default rate
        assert exc.value.code == "overloaded"
        assert obs.rejects == 1 and b.stats.rejected == 1
        gate.open.set()
        assert [c.result for c in await asyncio.gather(*tasks)] == [0, 10, 20, 30, 40]
        await b.close()

    run(main)


def test_retry_after_follows_the_measured_service_rate() -> None:
    async def main() -> None:
        gate = Gate(delay_s=0.1)  # batches of one: ~10 items/s
        b = Batcher(gate, name="v", max_batch_size=1, queue_limit=20)
        await b.start()
        await b.submit(0)
        await b.submit(1)
        assert 7 < b.service_rate() < 11
        gate.entered.clear()
        tasks = [asyncio.create_task(b.submit(0))]
        await gate.wait_entered()
        tasks += [asyncio.create_task(b.submit(i)) for i in range(1, 21)]  # 20 queued
        await settle(1)
        assert b.depth == 20
        with pytest.raises(Overloaded) as exc:
            await b.submit(99)
        assert exc.value.retry_after in (2, 3)  # 20 queued / ~10 per s
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert b.depth == 0
        assert b.stats.cancelled == 21
        await b.close()
        # The 20 that were still queued never reached predict.
        assert len(gate.batches) <= 4

    run(main)


# --- 4. deadlines and cancellation -------------------------------------------------------
def test_past_deadline_is_refused_without_compute() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, name="v")
        await b.start()
        with pytest.raises(DeadlineExceeded):
            await b.submit(1, deadline=time.monotonic() - 0.001)
        assert gate.batches == [] and b.stats.expired == 1
        await b.close()

    run(main)


def test_queued_item_expires_at_its_deadline_and_is_never_batched() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, name="v")
        await b.start()
        gate.open.clear()
        first = asyncio.create_task(b.submit(0))
        await gate.wait_entered()
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await b.submit(1, deadline=t0 + 0.05)
        assert time.monotonic() - t0 < 0.5  # answered at the deadline, not when the gate opens
        assert b.depth == 0
        gate.open.set()
        await first
        await b.close()
        assert gate.batches == [[0]]
        assert b.stats.expired == 1 and b.stats.items_done == 1

    run(main)


def test_item_expired_by_batch_formation_time_is_dropped() -> None:
    offset = 0.0

    def clock() -> float:
        return time.monotonic() + offset

    async def main() -> None:
        nonlocal offset
        gate = Gate()
        b = Batcher(gate, name="v", clock=clock)
        await b.start()
        gate.open.clear()
        first = asyncio.create_task(b.submit(0))
        await gate.wait_entered()
        late = asyncio.create_task(b.submit(1, deadline=clock() + 5))
        ok = asyncio.create_task(b.submit(2))
        await settle()
        offset = 10.0  # the clock jumps past the deadline while the item is queued
        gate.open.set()
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(late, 2)  # dropped by the worker, not by the 5 s timer
        assert (await ok).result == 20
        await first
        assert gate.batches == [[0], [2]]
        await b.close()

    run(main)


def test_cancelled_submitter_is_removed_and_its_item_never_computed() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, name="v")
        await b.start()
        gate.open.clear()
        tasks = [asyncio.create_task(b.submit(i)) for i in range(1)]
        await gate.wait_entered()
        tasks += [asyncio.create_task(b.submit(i)) for i in range(1, 4)]
        await settle()
        assert b.depth == 3
        tasks[2].cancel()
        await settle(1)
        assert b.depth == 2
        gate.open.set()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(out[2], asyncio.CancelledError)
        assert [c.result for c in out if isinstance(c, Completed)] == [0, 10, 30]
        assert gate.batches == [[0], [1, 3]]
        stats = b.stats
        assert stats.cancelled == 1 and stats.items_done == 3
        assert stats.submitted == stats.settled
        await b.close()

    run(main)


# --- 5. faults -------------------------------------------------------------------------
def test_predict_error_fails_only_its_batch_and_the_worker_carries_on() -> None:
    boom = RuntimeError("boom")

    def predict(items: list[int]) -> list[int]:
        if -1 in items:
            raise boom
        return items

    async def main() -> None:
        obs = Recorder()
        b = Batcher(predict, name="v", observer=obs)
        await b.start()
        out = await asyncio.gather(*(b.submit(i) for i in (5, -1, 6)), return_exceptions=True)
        assert all(isinstance(e, InferenceFailed) for e in out)
        err = out[0]
        assert isinstance(err, InferenceFailed)
        assert "RuntimeError" in str(err) and "boom" in str(err)
        assert err.__cause__ is boom
        assert obs.failures == [boom]
        assert (await b.submit(7)).result == 7
        assert b.stats.failed == 3 and b.stats.items_done == 1
        await b.close()

    run(main)


def test_wrong_number_of_results_fails_the_batch() -> None:
    def predict(items: list[int]) -> list[int]:
        return items[:-1] if len(items) > 1 else items

    async def main() -> None:
        obs = Recorder()
        b = Batcher(predict, name="v", observer=obs)
        await b.start()
        out = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        assert all(isinstance(e, InferenceFailed) and "1 results for 2" in str(e) for e in out)
        assert len(obs.failures) == 1
        assert (await b.submit(3)).result == 3
        await b.close()

    run(main)


def test_split_on_halves_the_batch_until_it_fits_and_fails_only_the_poison_item() -> None:
    class FakeOOM(Exception):
        pass

    def predict(items: list[int]) -> list[int]:
        if len(items) > 2 or -1 in items:
            raise FakeOOM(f"{len(items)} items")
        return [x * 2 for x in items]

    async def main() -> None:
        obs = Recorder()
        b = Batcher(
            predict,
            name="v",
            max_batch_size=8,
            observer=obs,
            split_on=lambda e: isinstance(e, FakeOOM),
        )
        await b.start()
        values = [1, 2, 3, -1, 5, 6, 7, 8]
        out = await asyncio.gather(*(b.submit(v) for v in values), return_exceptions=True)
        for v, o in zip(values, out, strict=True):
            if v == -1:
                assert isinstance(o, InferenceFailed) and isinstance(o.__cause__, FakeOOM)
            else:
                assert isinstance(o, Completed) and o.result == v * 2
        stats = b.stats
        # 8 -> 4+4 -> (2+2)+(2+2); the 2 holding -1 -> 1+1
        assert stats.batch_sizes == {8: 1, 4: 2, 2: 4, 1: 2}
        assert stats.splits == 4 and stats.failed == 1 and stats.items_done == 7
        assert len(obs.failures) == 1
        await b.close()

    run(main)


def test_without_split_on_an_oom_fails_the_whole_batch() -> None:
    def predict(items: list[int]) -> list[int]:
        raise MemoryError("out of memory")

    async def main() -> None:
        b = Batcher(predict, name="v", split_on=lambda e: False)
        await b.start()
        out = await asyncio.gather(*(b.submit(i) for i in range(4)), return_exceptions=True)
        assert all(isinstance(o, InferenceFailed) for o in out)
        assert b.stats.batches == 1 and b.stats.splits == 0
        await b.close()

    run(main)


# --- 6. shutdown -------------------------------------------------------------------------
def test_close_drains_queued_and_running_items_and_refuses_new_ones() -> None:
    async def main() -> None:
        gate = Gate(delay_s=0.05)
        b = Batcher(gate, name="v", max_batch_size=2)
        await b.start()
        tasks = [asyncio.create_task(b.submit(i)) for i in range(6)]
        await settle(1)
        closing = asyncio.create_task(b.close(grace_s=5))
        await settle(1)
        with pytest.raises(ShuttingDown):
            await b.submit(99)
        await closing
        assert [c.result for c in await asyncio.gather(*tasks)] == [i * 10 for i in range(6)]
        assert not b.running and not b.stalled(threshold_s=0.1)
        await b.close()  # twice is fine
        with pytest.raises(ShuttingDown):
            await b.submit(1)

    run(main)


def test_close_after_grace_answers_everything_left_with_shutting_down() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, name="v")
        await b.start()
        gate.open.clear()
        tasks = [asyncio.create_task(b.submit(0))]
        await gate.wait_entered()
        tasks += [asyncio.create_task(b.submit(i)) for i in (1, 2)]
        await settle()
        t0 = time.monotonic()
        await b.close(grace_s=0.2)
        assert 0.15 < time.monotonic() - t0 < 1.0
        out = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(o, ShuttingDown) for o in out)
        stats = b.stats
        assert stats.abandoned == 3 and stats.submitted == stats.settled
        gate.open.set()  # release the stuck thread

    run(main)


def test_submit_before_start_is_not_ready() -> None:
    async def main() -> None:
        b = Batcher(Gate(), name="v")
        with pytest.raises(NotReady):
            await b.submit(1)
        await b.close()

    run(main)


# --- 7. heartbeat ------------------------------------------------------------------------
def test_idle_worker_refreshes_its_heartbeat() -> None:
    async def main() -> None:
        b = Batcher(Gate(), name="v")
        await b.start()
        await asyncio.sleep(0.05)
        first = b.last_heartbeat
        await asyncio.sleep(0.7)
        assert b.last_heartbeat - first > 0.3
        assert not b.stalled(threshold_s=1.0)
        await b.close()

    run(main)


def test_stuck_batch_is_reported_stalled_and_recovers() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, name="v")
        await b.start()
        gate.open.clear()
        task = asyncio.create_task(b.submit(1))
        await gate.wait_entered()
        await asyncio.sleep(0.3)
        assert b.stalled(threshold_s=0.2)
        assert not b.stalled(threshold_s=5)
        before = b.last_heartbeat
        gate.open.set()
        await task
        await settle(1)
        assert not b.stalled(threshold_s=0.2)
        assert b.last_heartbeat > before + 0.25  # refreshed after the batch
        await b.close()

    run(main)


def test_dead_worker_is_stalled_and_its_waiters_are_answered() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, name="v")
        await b.start()
        assert not b.stalled(threshold_s=1)
        gate.open.clear()
        task = asyncio.create_task(b.submit(1))
        await gate.wait_entered()
        assert b._task is not None
        b._task.cancel()  # simulate the worker task dying
        with pytest.raises(InferenceFailed):
            await task
        assert b.stalled(threshold_s=1000)
        with pytest.raises(NotReady):
            await b.submit(2)
        gate.open.set()
        await b.close()

    run(main)


# --- 8. results map back -----------------------------------------------------------------
def test_many_concurrent_submits_each_get_their_own_result() -> None:
    def predict(items: list[int]) -> list[int]:
        time.sleep(0.002)
        return [x * x + 1 for x in items]

    async def main() -> None:
        b = Batcher(predict, name="v", max_batch_size=16, max_wait_ms=5)
        await b.start()
        xs = list(range(200))
        random.Random(1).shuffle(xs)

        async def one(x: int) -> tuple[int, Completed[int]]:
            await asyncio.sleep(random.random() * 0.05)
            return x, await b.submit(x)

        for x, c in await asyncio.gather(*(one(x) for x in xs)):
            assert c.result == x * x + 1
            assert 1 <= c.batch_size <= 16
        stats = b.stats
        assert stats.items_done == 200 and max(stats.batch_sizes) > 1
        assert sum(k * v for k, v in stats.batch_sizes.items()) == 200
        await b.close()

    run(main)


# --- 9. stress -----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_randomized_stress_every_submit_is_answered_and_stats_add_up(seed: int) -> None:
    rng = random.Random(seed)

    calls = 0

    def predict(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        time.sleep(0.001 + 0.004 * rng.random())
        if calls % 5 == 0:
            raise RuntimeError("flaky model")
        return [x + 1000 for x in items]

    async def main() -> None:
        b = Batcher(predict, name="v", max_batch_size=8, max_wait_ms=2, queue_limit=24)
        await b.start()

        async def client(i: int) -> str:
            await asyncio.sleep(0.1 * (i % 3) + rng.random() * 0.02)  # three waves
            if rng.random() < 0.15:
                me = asyncio.current_task()
                assert me is not None
                asyncio.get_running_loop().call_later(rng.random() * 0.02, me.cancel)
            deadline = time.monotonic() + rng.random() * 0.02 if rng.random() < 0.3 else None
            try:
                done = await b.submit(i, deadline=deadline)
            except asyncio.CancelledError:
                return "cancelled"
            except (Overloaded, DeadlineExceeded, InferenceFailed) as e:
                return type(e).__name__
            assert done.result == i + 1000
            return "ok"

        outcomes = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(300))), 10)
        await b.close()
        seen = {k: outcomes.count(k) for k in set(outcomes)}
        s = b.stats
        assert s.submitted == 300 == s.settled and s.abandoned == 0
        assert seen.get("Overloaded", 0) == s.rejected
        # A cancel that lands after the worker answered still reads as cancelled by the client.
        assert seen.get("ok", 0) <= s.items_done
        assert seen.get("DeadlineExceeded", 0) <= s.expired
        assert seen.get("InferenceFailed", 0) <= s.failed
        assert seen.get("cancelled", 0) >= s.cancelled
        assert s.items_done > 0 and s.rejected > 0 and s.failed > 0 and s.cancelled > 0
        assert s.expired > 0

    run(main)
