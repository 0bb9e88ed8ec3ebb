"""``Batcher.submit_many``: a client batch is one request to the batcher, not N.

Fakes only (no HTTP, no model), as in test_batcher.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from app.batching import Batcher
from app.errors import DeadlineExceeded, Overloaded, ShuttingDown

try:
    from tests.test_batcher import Gate, Recorder, run, settle
except ImportError:  # tests/ itself on sys.path
    from test_batcher import Gate, Recorder, run, settle


class ManyRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.submitted: list[int] = []

    def on_submit_many(self, name: str, size: int) -> None:
        self.submitted.append(size)


def test_submit_many_rides_in_one_batch_with_results_in_order() -> None:
    async def main() -> None:
        gate, rec = Gate(), ManyRecorder()
        b = Batcher(gate, name="v", max_batch_size=16, max_wait_ms=50, observer=rec)
        await b.start()
        t0 = time.monotonic()
        done = await b.submit_many(list(range(8)))
        assert time.monotonic() - t0 < 0.04  # a lone request runs at once, no max_wait
        assert [d.result for d in done] == [x * 10 for x in range(8)]
        assert gate.batches == [list(range(8))]
        assert [d.batch_size for d in done] == [8] * 8
        assert [size for size, _, _ in rec.batches] == [8]
        assert rec.submitted == [8]  # one request of 8, as the metrics report it
        stats = b.stats
        assert stats.batches == 1 and stats.submitted == stats.items_done == 8
        await b.close()

    run(main)


def test_submit_many_past_max_batch_size_runs_in_consecutive_batches() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, name="v", max_batch_size=4, max_wait_ms=50)
        await b.start()
        done = await b.submit_many(list(range(10)))
        assert [d.result for d in done] == [x * 10 for x in range(10)]
        assert gate.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        await b.close()

    run(main)


def test_submit_many_shares_a_batch_with_a_concurrent_single_submit() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, name="v", max_batch_size=16, max_wait_ms=30)
        await b.start()
        gate.open.clear()
        first = asyncio.create_task(b.submit(100))  # occupies the worker
        await gate.wait_entered()
        many = asyncio.create_task(b.submit_many([1, 2, 3]))
        single = asyncio.create_task(b.submit(4))
        await settle()
        gate.open.set()
        await first
        assert [d.result for d in await many] == [10, 20, 30]
        assert (await single).result == 40
        assert gate.batches[1] == [1, 2, 3, 4]  # the request's items stayed together
        await b.close()

    run(main)


def test_submit_many_that_does_not_fit_is_refused_whole() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, name="v", max_batch_size=2, queue_limit=5)
        await b.start()
        gate.open.clear()
        running = asyncio.create_task(b.submit(0))
        await gate.wait_entered()
        queued = [asyncio.create_task(b.submit(i)) for i in range(3)]
        await settle()
        with pytest.raises(Overloaded) as info:
            await b.submit_many([7, 8, 9])  # 3 queued + 3 > 5: none of them enters
        assert info.value.retry_after >= 1
        assert b.depth == 3
        gate.open.set()
        await asyncio.gather(running, *queued)
        assert all(7 not in batch for batch in gate.batches)
        stats = b.stats
        assert stats.rejected == 3 and stats.submitted == stats.settled
        await b.close()

    run(main)


def test_submit_many_expires_as_a_unit_and_its_queued_items_are_never_computed() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, name="v", max_batch_size=2, max_wait_ms=0)
        await b.start()
        gate.open.clear()
        running = asyncio.create_task(b.submit(0))
        await gate.wait_entered()
        with pytest.raises(DeadlineExceeded):
            await b.submit_many([1, 2, 3], deadline=time.monotonic() + 0.05)
        assert b.depth == 0
        gate.open.set()
        await running
        await settle()
        assert gate.batches == [[0]]
        stats = b.stats
        assert stats.expired == 3 and stats.submitted == stats.settled
        with pytest.raises(DeadlineExceeded):  # already past: refused without queueing
            await b.submit_many([4], deadline=time.monotonic() - 1)
        await b.close()

    run(main)


def test_cancelled_submit_many_drops_its_queued_items() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, name="v", max_batch_size=2, max_wait_ms=0)
        await b.start()
        gate.open.clear()
        running = asyncio.create_task(b.submit(0))
        await gate.wait_entered()
        many = asyncio.create_task(b.submit_many([1, 2, 3]))
        await settle()
        many.cancel()
        with pytest.raises(asyncio.CancelledError):
            await many
        assert b.depth == 0
        gate.open.set()
        await running
        await settle()
        assert gate.batches == [[0]]
        stats = b.stats
        assert stats.cancelled == 3 and stats.submitted == stats.settled
        await b.close()

    run(main)


def test_submit_many_while_closing_is_refused() -> None:
    async def main() -> None:
        b = Batcher(Gate(), name="v")
        await b.start()
        await b.close()
        with pytest.raises(ShuttingDown):
            await b.submit_many([1])
        assert await Batcher(Gate(), name="w").submit_many([]) == []

    run(main)
