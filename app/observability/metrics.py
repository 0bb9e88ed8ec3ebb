"""Prometheus metrics (prometheus-client), one registry per app instance.

Per-app registries keep tests independent and let several apps live in one process.
The batcher reports through ``BatcherMetrics`` (its observer protocol), so the batching
module never imports prometheus.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
            "mobilenet_queue_depth", "Requests waiting per variant", ["variant"], registry=r
        )
        self.in_flight = Gauge(
            "mobilenet_in_flight",
            "Admitted requests not yet answered, per variant",
            ["variant"],
            registry=r,
        )
        self.admission_limit = Gauge(
            "mobilenet_admission_limit",
            "Current concurrency limit per variant (503 past it)",
            ["variant"],
            registry=r,
        )
        self.batch_size = Histogram(
            "mobilenet_batch_size",
            "Images per executed batch",
            ["variant"],
            buckets=BATCH_BUCKETS,
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
            "1 for each loaded variant",
            ["variant", "backend", "device"],
            registry=r,
        )
        self.ready = Gauge("mobilenet_ready", "1 when the service is ready", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


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
