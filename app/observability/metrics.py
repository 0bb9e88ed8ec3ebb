"""Prometheus metrics (prometheus-client), one registry per app instance.

Per-app registries keep tests independent and let several apps live in one process.
The batcher reports through ``BatcherMetrics`` (its observer protocol), so the batching
module never imports prometheus.

With several server processes on one port (``MOBILENET_WORKERS`` > 1) each scrape lands
on one of them, so every process writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``
(prometheus-client's multiprocess mode, set up by ``app.server`` before the workers start)
and any of them renders the sum: counters and histograms add up over every process that
ever ran (a replaced worker's counts stay, so no counter goes backwards), gauges combine
as their ``multiprocess_mode`` says. Each process also reports a heartbeat, which lets
any worker's ``/readyz`` see a wedged sibling.
"""

from __future__ import annotations

import contextlib
import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """All of the service's metrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mobilenet_requests",
            "HTTP requests by route, model and status",
            ["route", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "mobilenet_stage_seconds",
            "Latency by stage",
            ["stage", "model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge(
            "mobilenet_queue_depth",
            "Requests waiting per variant (all workers)",
            ["variant"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "mobilenet_in_flight",
            "Admitted requests not yet answered, per variant (all workers)",
            ["variant"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.admission_limit = Gauge(
            "mobilenet_admission_limit",
            "Current concurrency limit per variant, summed over the workers (503 past it)",
            ["variant"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.uploads_in_progress = Gauge(
            "mobilenet_uploads_in_progress",
            "Request bodies being received (all workers)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.upload_events = Counter(
            "mobilenet_upload_events",
            "Uploads refused (refused: server bound, refused_client: per-address bound) "
            "or cut off as too slow (too_slow: 408)",
            ["event"],
            registry=r,
        )
        self.batch_size = Histogram(
            "mobilenet_batch_size",
            "Images per executed batch",
            ["variant"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.admitted_cost = Counter(
            "mobilenet_admitted_cost",
            "Work admitted per variant, in ordinary requests' worth of decoding (app.imaging.cost)",
            ["variant"],
            registry=r,
        )
        self.shed_cost = Counter(
            "mobilenet_shed_cost",
            "Work refused by admission per variant, in the same units (a request refused "
            "before its body was read counts 1: its weight is not known yet)",
            ["variant"],
            registry=r,
        )
        self.client_batch = Histogram(
            "mobilenet_client_batch_images",
            "Images per multi-image request (OIP v2 tensor, KServe v1 instances), queued "
            "together as ONE batcher request",
            ["variant"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "mobilenet_rejected",
            "Requests refused because the queue was full",
            ["variant"],
            registry=r,
        )
        self.timed_out = Counter(
            "mobilenet_timed_out",
            "Requests whose deadline passed in queue",
            ["variant"],
            registry=r,
        )
        self.failures = Counter(
            "mobilenet_inference_failures",
            "Batches whose inference raised",
            ["variant"],
            registry=r,
        )
        self.loaded = Gauge(
            "mobilenet_variant_loaded",
            "1 for each loaded variant (with several workers: loaded in every live one)",
            ["variant", "backend", "device"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.ready = Gauge(
            "mobilenet_ready",
            "1 when the service is ready (with several workers: every live one is)",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.heartbeat = Gauge(
            "mobilenet_worker_heartbeat_seconds",
            "Unix time each server process last reported itself alive, with its readiness "
            "in mobilenet_worker_ready",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.worker_ready = Gauge(
            "mobilenet_worker_ready",
            "1 when this server process is ready",
            registry=r,
            multiprocess_mode="liveall",
        )

    def observe_upload(self, event: str, delta: int) -> None:
        """``app.api.intake.UploadCounter``'s observer."""
        if event == "in_progress":
            self.uploads_in_progress.inc(delta)
        else:
            self.upload_events.labels(event).inc(delta)

    def beat(self, ready: bool) -> None:
        """This process is alive (and ready or not); called about once a second."""
        self.worker_ready.set(1 if ready else 0)
        self.heartbeat.set(time.time())

    def render(self) -> bytes:
        directory = multiproc_dir()
        if directory is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        reap_dead_workers(directory)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry)


def multiproc_dir() -> str | None:
    """The shared metrics directory when several server processes share the port."""
    return os.environ.get(MULTIPROC_ENV) or None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the number: not ours, gone
        return False
    return True


def reap_dead_workers(directory: str) -> list[int]:
    """Drop the live gauges of server processes that have exited (killed ones included:
    they never got to say so). Counters and histograms stay, so sums never go back."""
    from prometheus_client import multiprocess

    dead = set()
    for name in os.listdir(directory):
        if name.startswith("gauge_live") and name.endswith(".db"):
            pid = name[:-3].rsplit("_", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                dead.add(int(pid))
    for pid in dead:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, directory)
    return sorted(dead)


def _worker_states(directory: str) -> tuple[dict[str, float], dict[str, float]]:
    """Each live worker's last heartbeat (Unix time) and readiness, by pid."""
    from prometheus_client import multiprocess

    reap_dead_workers(directory)
    beats: dict[str, float] = {}
    ready: dict[str, float] = {}
    for family in multiprocess.MultiProcessCollector(None, path=directory).collect():
        target = {
            "mobilenet_worker_heartbeat_seconds": beats,
            "mobilenet_worker_ready": ready,
        }.get(family.name)
        if target is None:
            continue
        for sample in family.samples:
            target[sample.labels.get("pid", "?")] = sample.value
    return beats, ready


def ready_workers(directory: str) -> int:
    """Live workers, other than this one, that say they are ready."""
    _, ready = _worker_states(directory)
    me = str(os.getpid())
    return sum(1 for pid, value in ready.items() if value and pid != me)


def worker_problems(directory: str, *, expected: int, stale_after_s: float) -> list[str]:
    """Why the replica is not ready, from every live worker's last heartbeat: fewer than
    ``expected`` workers have reported (still starting, or one died and its replacement
    is loading), one says it is not ready, or one has not reported for ``stale_after_s``
    (wedged)."""
    beats, ready = _worker_states(directory)
    now, problems = time.time(), []
    if len(beats) < expected:
        problems.append(f"{len(beats)} of {expected} workers have started")
    for pid, beat in sorted(beats.items()):
        if now - beat > stale_after_s:
            problems.append(f"worker {pid} has not reported for {now - beat:.0f} s (wedged?)")
        elif not ready.get(pid):
            problems.append(f"worker {pid} is not ready")
    return problems


class BatcherMetrics:
    """Adapter from the batcher's observer callbacks to Prometheus."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def on_batch(self, name: str, size: int, queue_ms: list[float], inference_ms: float) -> None:
        self.m.batch_size.labels(name).observe(size)
        hist = self.m.latency.labels("queue", name)
        for q in queue_ms:
            hist.observe(q / 1000)
        self.m.latency.labels("inference", name).observe(inference_ms / 1000)

    def on_reject(self, name: str) -> None:
        self.m.rejected.labels(name).inc()

    def on_submit_many(self, name: str, size: int) -> None:
        self.m.client_batch.labels(name).observe(size)

    def on_expire(self, name: str) -> None:
        self.m.timed_out.labels(name).inc()

    def on_failure(self, name: str, exc: BaseException) -> None:
        self.m.failures.labels(name).inc()
