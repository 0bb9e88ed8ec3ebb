"""Several server processes on one port (MOBILENET_WORKERS=2) are one server from outside.

Each scrape of /metrics lands on one worker; it must describe them all (issue 19): the
request counter reads the number of requests sent on every scrape, histogram counts add
up, a killed worker's counts stay (no counter goes backwards) while its replacement
serves, and a wedged worker turns /readyz 503 whichever worker answers the probe.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from app.observability.metrics import worker_problems

try:
    from tests.servers import ServerProcess, start_server
except ImportError:  # tests/ itself on sys.path
    from servers import ServerProcess, start_server

pytestmark = pytest.mark.slow

VARIANT = "v1-0.25-128"
N = 20


def _workers(server: ServerProcess) -> list[psutil.Process]:
    """The live worker processes (uvicorn spawns them; the resource tracker is not one,
    nor is a killed worker not yet reaped)."""
    out = []
    for p in psutil.Process(server.pid).children():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def _counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0] if "{" in line else ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.fixture
def server(weights_dir: Path) -> Iterator[ServerProcess]:
    srv = start_server(
        weights_dir, variants=[VARIANT], env={"MOBILENET_WORKERS": "2"}, ready_timeout=180
    )
    # /readyz answered by one worker says every live worker is ready; both must be up.
    _wait(lambda: len(_workers(srv)) == 2, 30, "two workers")
    yield srv
    srv.stop()


def _predict(client: httpx.Client, cat: bytes) -> int:
    return client.post(
        "/predict", params={"model": "v1"}, files={"file": ("c.bmp", cat)}
    ).status_code


def test_every_scrape_describes_the_whole_server(server: ServerProcess, cat: bytes) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        # The golden-image check at start-up ran a batch in each worker.
        warmup_batches = _counter(client.get("/metrics").text, "mobilenet_batch_size_count")
        assert warmup_batches == 2
        # Fresh connections, so the kernel spreads them over both workers.
        statuses = []
        for _ in range(N):
            with httpx.Client(base_url=server.url, timeout=10) as fresh:
                statuses.append(_predict(fresh, cat))
        assert statuses == [200] * N
        pids = set()
        for _ in range(8):
            with httpx.Client(base_url=server.url, timeout=10) as fresh:
                text = fresh.get("/metrics").text
            labels = {"route": "/predict", "model": "v1-0.25-128", "status": "200"}
            assert _counter(text, "mobilenet_requests_total", **labels) == N, text[:2000]
            assert _counter(text, "mobilenet_stage_seconds_count", stage="total") == N
            assert _counter(text, "mobilenet_batch_size_count") == warmup_batches + N
            # Gauges combine: both workers ready and loaded.
            assert _counter(text, "mobilenet_ready") == 1
            assert _counter(text, "mobilenet_variant_loaded", variant=VARIANT) == 1
            pids |= set(re.findall(r'mobilenet_worker_ready\{pid="(\d+)"\}', text))
        assert pids == {str(p.pid) for p in _workers(server)}
        assert client.get("/readyz").status_code == 200


def test_killed_worker_counts_stay_and_the_server_answers(
    server: ServerProcess, cat: bytes
) -> None:
    seen: list[float] = []
    labels = {"route": "/predict", "model": "v1-0.25-128", "status": "200"}

    def scrape() -> float:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            value = _counter(c.get("/metrics").text, "mobilenet_requests_total", **labels)
        seen.append(value)
        return value

    sent = 0
    for _ in range(N):
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert _predict(c, cat) == 200
        sent += 1
    assert scrape() == sent
    victim = _workers(server)[0]
    os.kill(victim.pid, signal.SIGKILL)
    # Keep sending while it is replaced: every request is answered by the survivor or
    # the replacement, and no scrape ever reads less than before.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert _predict(c, cat) == 200
        sent += 1
        scrape()
        workers = _workers(server)
        if len(workers) == 2 and victim.pid not in {p.pid for p in workers}:
            with httpx.Client(base_url=server.url, timeout=10) as c:
                if c.get("/readyz").status_code == 200:
                    break
    else:
        raise AssertionError("the killed worker was not replaced within 90 s")
    for _ in range(6):
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert _predict(c, cat) == 200
        sent += 1
        assert scrape() == sent
    assert seen == sorted(seen), seen  # never backwards


def test_stopped_worker_turns_the_replica_unready(server: ServerProcess) -> None:
    victim = _workers(server)[0]
    os.kill(victim.pid, signal.SIGSTOP)  # alive, holds its socket, answers nothing
    try:
        # The other worker accepts every new connection meanwhile. Its /readyz says 503
        # while the sibling's heartbeat is stale (10 s), or, once uvicorn's supervisor
        # has killed the silent process (its 5 s ping), while the replacement starts.
        def unready() -> bool:
            with httpx.Client(base_url=server.url, timeout=3) as c:
                r = c.get("/readyz")
            return r.status_code == 503 and any(
                f"worker {victim.pid}" in p or "1 of 2 workers" in p for p in r.json()["problems"]
            )

        _wait(unready, 30, "a 503 naming the wedged worker or its replacement")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim.pid, signal.SIGCONT)

    def ready() -> bool:
        with httpx.Client(base_url=server.url, timeout=3) as c:
            return c.get("/readyz").status_code == 200

    _wait(ready, 90, "ready again")


_SILENT_WORKER = """
import sys, time
from app.observability.metrics import Metrics
m = Metrics()
m.beat(True)
m.heartbeat.set(time.time() - float(sys.argv[1]))  # as if its event loop stopped then
print("ok", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("silent_for", [0.0, 30.0])
def test_a_worker_whose_loop_stopped_beating_is_reported(tmp_path: Path, silent_for: float) -> None:
    # A wedged event loop whose process still answers uvicorn's ping (a thread of its
    # own) is what only the heartbeat sees: a live process, silent for 30 s.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen(
        [sys.executable, "-c", _SILENT_WORKER, str(silent_for)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ok"
        problems = worker_problems(str(tmp_path), expected=1, stale_after_s=10)
        if silent_for:
            assert problems == [f"worker {proc.pid} has not reported for 30 s (wedged?)"]
        else:
            assert problems == []
        assert worker_problems(str(tmp_path), expected=2, stale_after_s=10)[0] == (
            "1 of 2 workers have started"
        )
    finally:
        proc.kill()
        proc.wait()
    # Once it is gone, its live gauges are reaped: only "0 of 1" is left to say.
    assert worker_problems(str(tmp_path), expected=1, stale_after_s=10) == [
        "0 of 1 workers have started"
    ]
