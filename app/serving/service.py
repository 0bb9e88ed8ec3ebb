"""The classification service: load variants, decode off the event loop, batch, answer.

Life cycle (driven by the FastAPI lifespan): ``start()`` loads every variant whose
weights are present, verifies and warms each one, checks the golden image, then marks
the service ready; ``close()`` drains the batchers within the grace period.

Per request: resolve the variant (cheap, so a bad model name never costs a decode) ->
decode + preprocess on the decode thread pool -> the variant's batcher -> top-k.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.batching import Batcher
from app.batching.fair import FairExecutor, LaneActivity
from app.errors import (
    DeadlineExceeded,
    NotReady,
    Overloaded,
    ServiceError,
    ShuttingDown,
    WeightsError,
)
from app.imaging import prepare, probe_jpeg
from app.imaging.cost import decode_cost
from app.inference import create_backend
from app.inference.select import check_torch_needs
from app.observability.metrics import BatcherMetrics, Metrics, multiproc_dir, worker_problems
from app.serving.admission import Admission
from app.serving.client_batches import ClientBatches
from app.serving.execution import (
    Completed1,
    JpegItem,
    batch_buckets,
    decode_and_forward,
    golden_image,
    is_oom,
    lower_thread_priority,
    make_predict_fn,
    top_k,
)
from app.serving.registry import LoadedVariant, Registry
from app.settings import Settings
from app.weights import SPECS_BY_NAME, imagenet_labels, present_variants
from app.weights.store import read_manifest

log = logging.getLogger(__name__)

CAT_CLASSES = frozenset(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
HEARTBEAT_STALL_S = 30.0
WORKER_STALE_S = 10.0  # a sibling worker silent this long is wedged (it beats every 1 s)


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    variant: LoadedVariant
    predictions: list[Prediction]
    decode_ms: float
    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass
class Readiness:
    loaded: bool = False
    draining: bool = False
    failed: str | None = None
    problems: list[str] = field(default_factory=list)


class ClassifierService(ClientBatches):
    """Everything a request needs, created once per app in the lifespan."""

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.labels = imagenet_labels()
        self.registry = Registry([])
        self.admission: dict[str, Admission] = {}
        self.readiness = Readiness()
        nice = settings.worker_nice
        # Both shared stages serve the variants fairly (one lane each, weighed by cost),
        # so a variant flooded with heavy work cannot make the others wait behind it.
        waits: dict[str, object] = {}  # lane -> its histogram child, looked up once

        def decode_wait(lane: str, seconds: float) -> None:
            child = waits.get(lane)
            if child is None:
                child = waits[lane] = self.metrics.latency.labels("decode_wait", lane)
            child.observe(seconds)

        activity = LaneActivity()  # a variant busy in either pool counts in both
        self.decode_pool = FairExecutor(
            settings.decode_threads,
            name="decode",
            initializer=lower_thread_priority,
            initargs=(nice,),
            on_wait=decode_wait,
            activity=activity,
        )
        # One inference thread for all variants: models never compete for the cores.
        self.inference_pool = FairExecutor(
            1,
            name="inference",
            initializer=lower_thread_priority,
            initargs=(nice,),
            activity=activity,
        )

    # ---------------------------------------------------------------- life cycle
    def variant_names(self) -> list[str]:
        weights_dir = Path(self.settings.weights_dir)
        present = present_variants(weights_dir) if weights_dir.exists() else []
        wanted = self.settings.variants or [n for n in SPECS_BY_NAME if n in present]
        unknown = [n for n in wanted if n not in SPECS_BY_NAME]
        if unknown:
            raise WeightsError(
                f"unknown variant(s) {', '.join(unknown)} in MOBILENET_VARIANTS; "
                f"known: {', '.join(SPECS_BY_NAME)}"
            )
        # Asked-for torch paths fail start-up now, naming the extra, not variant by variant.
        check_torch_needs(
            requested=self.settings.backend,
            device=self.settings.device,
            variants=[SPECS_BY_NAME[n] for n in self.settings.variants or []],
        )
        return wanted

    async def start(self) -> None:
        """Load, warm and check every available variant; fail if none can serve.

        torch is imported only by the backends that run on it (see app.inference.select):
        TF-origin variants on LiteRT never load it."""
        weights_dir = Path(self.settings.weights_dir)
        names = self.variant_names()
        loaded: list[LoadedVariant] = []
        observer = BatcherMetrics(self.metrics)
        for name in names:
            spec = SPECS_BY_NAME[name]
            try:
                backend = await asyncio.get_running_loop().run_in_executor(
                    self.inference_pool,
                    lambda s=spec: create_backend(
                        s,
                        weights_dir=weights_dir,
                        requested=self.settings.backend,
                        device=self.settings.device,
                        threads=self.settings.threads,
                        exact_hard_swish=self.settings.litert_exact_hard_swish,
                    ),
                )
            except (WeightsError, ValueError, RuntimeError, OSError) as exc:
                log.warning("variant %s not offered: %s", name, exc)
                continue
            if hasattr(backend, "contended"):
                backend.contended = self._contended
            batcher = Batcher(
                make_predict_fn(backend, spec.preprocessing, self.settings.max_pixels),
                name=name,
                max_batch_size=min(
                    self.settings.max_batch_size,
                    getattr(backend, "max_batch", None) or self.settings.max_batch_size,
                ),
                max_wait_ms=self.settings.max_wait_ms,
                queue_limit=self.settings.queue_limit,
                executor=self.inference_pool.lane(name),
                observer=observer,
                split_on=is_oom,
            )
            loaded.append(LoadedVariant(spec=spec, backend=backend, batcher=batcher))
            self.metrics.loaded.labels(name, backend.name, backend.device).set(1)
            log.info(
                "loaded %s on %s (%s, %s)", name, backend.device, backend.name, backend.precision
            )
        if not loaded:
            manifest = read_manifest(weights_dir) if weights_dir.exists() else {"variants": {}}
            raise WeightsError(
                f"no model weights could be loaded from {weights_dir.resolve()} "
                f"(manifest lists {len(manifest['variants'])} variants). Fetch them first: "
                "`mobilenet-serve weights fetch` (set MOBILENET_WEIGHTS_MIRROR=DIR to copy "
                "from a local mirror), or `make weights`."
            )
        self.registry = Registry(loaded)
        self.admission = {
            v.name: Admission(
                name=v.name,
                hard_limit=self.settings.queue_limit,
                # Until answers are measured: half the hard cap, so an idle server takes
                # a burst; the first windows of a flood then bring it to its level.
                cold_limit=max(self.settings.max_batch_size, self.settings.queue_limit // 2),
                # Never shed below half a batch: light concurrency always gets through.
                min_limit=max(1, self.settings.max_batch_size // 2),
                target_s=self.settings.admission_target_ms / 1000,
            )
            for v in loaded
        }
        for v in loaded:
            self.metrics.admission_limit.labels(v.name).set(self.admission[v.name].limit())
            await v.batcher.start()
        if self.settings.warmup:
            await self._warm_up_and_check()
        self.readiness.loaded = True
        self.metrics.ready.set(1)

    async def _warm_up_and_check(self) -> None:
        loop = asyncio.get_running_loop()
        golden = golden_image()
        buckets = batch_buckets(self.settings.max_batch_size)
        for v in list(self.registry):
            await loop.run_in_executor(self.inference_pool, v.backend.warmup, buckets)
            result = await self.classify(golden, v, topk=5)
            top = {p.index for p in result.predictions}
            if not top & CAT_CLASSES:
                # Corrupt or mismatched weights: never serve them.
                del self.registry.variants[v.name]
                await v.batcher.close(grace_s=0)
                msg = (
                    f"{v.name} failed the golden-image check (top-5 "
                    f"{[p.label for p in result.predictions]} has no cat)"
                )
                self.readiness.problems.append(msg)
                log.error(msg)
        if not len(self.registry):
            raise WeightsError(
                "every variant failed the golden-image check: " + "; ".join(self.readiness.problems)
            )

    def begin_draining(self) -> None:
        """SIGTERM: report not-ready at once and take no new work."""
        self.readiness.draining = True
        self.metrics.ready.set(0)

    async def close(self) -> None:
        self.begin_draining()
        await asyncio.gather(
            *(v.batcher.close(grace_s=self.settings.shutdown_grace_s) for v in self.registry)
        )
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.inference_pool.shutdown(wait=False, cancel_futures=True)

    def degraded(self) -> list[str]:
        """Start-up problems of variants that are not offered while others are."""
        return list(self.readiness.problems) if len(self.registry) else []

    def _contended(self) -> bool:
        """Other work wants the cores: uploads decoding or another variant's batch queued."""
        return self.decode_pool.load() > 0 or self.inference_pool.load() > 1

    def heartbeat(self) -> None:
        """Publish this process's readiness and queue depths (see app.api.app._heartbeat)."""
        for v in self.registry:
            self.metrics.queue_depth.labels(v.name).set(v.batcher.depth)
        self.metrics.beat(self.ready(siblings=False)[0])

    def ready(self, *, siblings: bool = True) -> tuple[bool, list[str]]:
        """Ready = loaded, not draining, and no batcher stalled; with several workers on
        the port (``siblings``), every other live worker says so too and is not wedged:
        the orchestrator probes whichever worker accepts, so one worker's view would let
        a wedged sibling keep receiving traffic."""
        # Variants dropped at start-up (failed golden check) are reported by degraded();
        # the others still serve, so they do not fail readiness unless none is left.
        problems = list(self.readiness.problems) if not len(self.registry) else []
        if self.readiness.failed:
            problems.append(self.readiness.failed)
        elif not self.readiness.loaded:
            problems.append("models are loading")
        if self.readiness.draining:
            problems.append("shutting down")
        wedged = set(self.decode_pool.running_over(HEARTBEAT_STALL_S))  # run to completion
        for v in self.registry:
            if v.batcher.stalled(threshold_s=HEARTBEAT_STALL_S) or v.name in wedged:
                problems.append(f"inference worker for {v.name} is stalled")
        directory = multiproc_dir()
        if siblings and directory is not None:
            mine = f"worker {os.getpid()} "
            problems += [
                p
                for p in worker_problems(
                    directory, expected=self.settings.workers, stale_after_s=WORKER_STALE_S
                )
                if not p.startswith(mine)
            ]
        return not problems, problems

    # ---------------------------------------------------------------- requests
    def resolve(
        self,
        *,
        model: str | None = None,
        width: float | None = None,
        resolution: int | None = None,
        variant: str | None = None,
        fallback: str | None = None,
    ) -> LoadedVariant:
        """The variant a request asks for (refused while loading or draining)."""
        self._check_accepting()
        return self.registry.resolve(
            model=model, width=width, resolution=resolution, variant=variant, fallback=fallback
        )

    def resolve_name(self, name: str, *, fallback: str | None = None) -> LoadedVariant:
        """The variant one name means (model spelling, variant or release name), for
        protocol routes with the model in the path (refused while loading or draining)."""
        self._check_accepting()
        return self.registry.resolve_name(name, fallback=fallback)

    async def decode(
        self, data: bytes, target: LoadedVariant, *, cost: float = 1.0
    ) -> tuple[np.ndarray | JpegItem, float]:
        """Decode + preprocess on the pool (in ``target``'s lane, weighed by ``cost``), or
        (CUDA) only check the header here and let the device decode the JPEG inside the
        batch. Returns the item and the wall time (waiting included) in ms."""
        t0 = time.perf_counter()
        pre, limit = target.spec.preprocessing, self.settings.max_pixels
        if (
            self.settings.gpu_decode
            and getattr(target.backend, "cuda", False)
            and probe_jpeg(data, max_pixels=limit)
        ):
            return JpegItem(data), (time.perf_counter() - t0) * 1000
        array = await asyncio.wrap_future(
            self.decode_pool.submit_to(target.name, cost, prepare, data, pre, max_pixels=limit)
        )
        return array, (time.perf_counter() - t0) * 1000

    async def classify(
        self,
        data: bytes,
        target: LoadedVariant,
        *,
        topk: int = 5,
        deadline: float | None = None,
        admit: bool = True,
    ) -> Classification:
        """Classify ``data`` with ``target`` (from ``resolve``: readiness already checked)."""
        cost = decode_cost(data)
        with self.admit(target, cost=cost) if admit else contextlib.nullcontext():
            if self._runs_to_completion(target):
                one = await self._run_to_completion(
                    data, target, cost=cost, deadline=deadline, topk=topk
                )
                return Classification(
                    variant=target,
                    predictions=self.labelled(one.top),
                    decode_ms=one.wait_ms + one.decode_ms,
                    queue_ms=0.0,
                    inference_ms=one.inference_ms,
                    batch_size=1,
                )
            array, decode_ms = await self.decode(data, target, cost=cost)
            done = await target.batcher.submit(array, deadline=deadline)
            if isinstance(done.result, ServiceError):
                raise done.result
        return Classification(
            variant=target,
            predictions=self.top_k(done.result, topk),
            decode_ms=decode_ms,
            queue_ms=done.queue_ms,
            inference_ms=done.inference_ms,
            batch_size=done.batch_size,
        )

    def _runs_to_completion(self, target: LoadedVariant) -> bool:
        return self.settings.run_to_completion and hasattr(target.backend, "predict_one")

    async def _run_to_completion(
        self,
        data: bytes,
        target: LoadedVariant,
        *,
        cost: float,
        deadline: float | None,
        topk: int | None,
    ) -> Completed1:
        """Decode and forward ``data`` as one task in ``target``'s decode lane (no batch, no
        hand-off between threads). Answers at the deadline if the task has not started."""
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded(f"the deadline passed before model {target.name} was reached")
        future = self.decode_pool.submit_to(
            target.name,
            cost,
            decode_and_forward,
            data,
            target.backend,
            target.spec.preprocessing,
            self.settings.max_pixels,
            name=target.name,
            topk=topk,
            enqueued=now,
            deadline=deadline,
            alone=self._alone,
        )
        waiter = asyncio.wrap_future(future)
        try:
            if deadline is not None:
                await asyncio.wait((waiter,), timeout=deadline - now)
                if not waiter.done() and future.cancel():  # still queued: no compute spent
                    raise DeadlineExceeded(
                        f"the deadline passed after {(time.monotonic() - now) * 1000:.0f} ms "
                        f"waiting for a decode thread for model {target.name}"
                    )
            one = await waiter
        except BaseException:
            # Cancelled (the client went away) or past the deadline: a task still queued
            # is dropped (asyncio.wait leaves what it waits on running).
            future.cancel()
            waiter.cancel()
            raise
        target.batcher.account(one.wait_ms, one.inference_ms)
        return one

    def _alone(self) -> bool:
        """Called on a decode thread running one request to completion: is it the only
        work (then the all-threads interpreter runs it)?"""
        return self.decode_pool.load() <= 1 and self.inference_pool.load() == 0

    @contextlib.contextmanager
    def admit(
        self, target: LoadedVariant, *, cost: float = 1.0, heavy: bool = False
    ) -> Iterator[None]:
        """Hold ``cost`` units of ``target``'s in-flight limit (an ordinary request is 1;
        ``app.imaging.cost`` weighs an upload), or raise ``Overloaded`` at once.

        Taken once the upload has arrived: reading a body must not hold what computing
        on it needs (a trickling upload would hold the slot for as long as its sender
        likes). A slot that ends in an answer reports its whole wall time to the limiter:
        under load the waits between stages (the event loop's backlog, the decode pool's
        queue) are as real as the stages themselves. A ``heavy`` request (an explain,
        ``cost`` forwards) holds at most half the limit, heavy ones together at most half
        (``Admission.charge``), and its own long latency is not fed to the limiter, which
        steers by predicts' latency."""
        admission = self.admission.get(target.name)
        if admission is None:
            yield
            return
        charge = admission.charge(cost, heavy=heavy)
        try:
            epoch = admission.enter(charge, heavy=heavy)
        except Overloaded:
            self.metrics.rejected.labels(target.name).inc()
            self.metrics.shed_cost.labels(target.name).inc(charge)
            raise
        start, answered = time.monotonic(), False
        self.metrics.in_flight.labels(target.name).inc()
        self.metrics.admitted_cost.labels(target.name).inc(charge)
        try:
            yield
            answered = True
        finally:
            admission.leave(charge, heavy=heavy)
            self.metrics.in_flight.labels(target.name).dec()
            if answered and not heavy:
                admission.record(latency_s=time.monotonic() - start, epoch=epoch)
                self.metrics.admission_limit.labels(target.name).set(admission.limit())

    def _check_accepting(self) -> None:
        if self.readiness.draining:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        if not self.readiness.loaded:
            raise NotReady("models are still loading; retry shortly")

    def top_k(self, probs: np.ndarray, k: int) -> list[Prediction]:
        return self.labelled(top_k(probs, k))

    def labelled(self, top: list[tuple[int, float]]) -> list[Prediction]:
        """(class, score) pairs, best first, with their labels."""
        return [Prediction(i, self.labels[i], score) for i, score in top]
