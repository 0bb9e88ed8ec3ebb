"""What the hardware allows without HTTP: the ceilings the served numbers are judged against.

Four measurements, on the same machine in the same run as the HTTP benchmark:

* ``forward``: the model alone on a ready uint8 batch, per backend and batch size (torch
  with BN folded + channels_last via ``TorchBackend``, and the int8 LiteRT model), all cores.
* ``decode``: ``app.imaging.prepare`` (decode with JPEG draft + crop/resize) on one thread.
* ``pipeline``: decode on a pool of all cores feeding batched forward on the backend the
  service picks by default; the most a server could answer with HTTP costing nothing.
* ``rtc`` (run to completion, the headline's limit): the project's fastest forward (LiteRT
  with the exact hard-swish rewrite, one single-threaded interpreter per core) and each
  core's thread decoding (``prepare``: JPEG draft decode, central crop, bilinear resize)
  then running its own interpreter on that image, no batching, no hand-offs. Reported in
  img/s and in CPU ms per image (this process's user + system CPU over the window): the
  CPU per image is what a server's CPU per request is held against, and unlike img/s a
  busy neighbour on the machine moves it little.

Every loop is bounded by time, so the whole module costs a known few seconds per item.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.imaging import prepare
from app.imaging.preprocess import Preprocessing
from app.weights import SPECS_BY_NAME

BATCH_SIZES = (1, 2, 4, 8, 16, 32)
MAX_PIXELS = 40_000_000
PIPELINE_BATCH = 16  # the service's default MOBILENET_MAX_BATCH_SIZE


@dataclass(frozen=True)
class ForwardPoint:
    variant: str
    backend: str
    precision: str
    batch: int
    img_s: float
    ms_per_batch: float


@dataclass(frozen=True)
class DecodePoint:
    variant: str
    input: str
    ms: float
    img_s: float


@dataclass(frozen=True)
class PipelinePoint:
    variant: str
    input: str
    backend: str
    threads: int
    batch: int
    img_s: float


@dataclass(frozen=True)
class RtcPoint:
    variant: str
    input: str
    backend: str
    threads: int
    exact_hard_swish: bool  # the rewrite took (V3); V1/V2 have no hard-swish to rewrite
    img_s: float
    cpu_ms: float  # process CPU (user + system) per image over the window
    images: int
    seconds: float
    forward_ms: float  # one interpreter alone on one thread, a ready image (no decode)


def cores() -> int:
    """CPUs this process may use (what the service's thread defaults use too)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def timed_rate(step: Callable[[], int], *, seconds: float, min_calls: int = 3) -> tuple[float, int]:
    """Call ``step`` (returns items done) for ~``seconds``; returns (items/s, calls)."""
    step()  # first call pays lazy init (allocations, kernel selection), not measured
    done, calls = 0, 0
    start = time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        done += step()
        calls += 1
    return done / (time.perf_counter() - start), calls


def make_backend(variant: str, weights_dir: Path, backend: str, threads: int) -> Any:
    """A backend as the service builds it (``auto`` resolves exactly as the service does)."""
    import torch

    from app.inference import create_backend

    torch.set_num_threads(threads)
    spec = SPECS_BY_NAME[variant]
    return create_backend(
        spec, weights_dir=weights_dir, requested=backend, device="cpu", threads=threads
    )


def forward_sweep(
    variant: str,
    weights_dir: Path,
    *,
    backends: tuple[str, ...] = ("torch", "litert"),
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    seconds: float = 1.0,
) -> list[ForwardPoint]:
    """Model forward alone, img/s per backend and batch size; a missing backend is skipped."""
    size = SPECS_BY_NAME[variant].resolution
    rng = np.random.default_rng(0)
    points = []
    for name in backends:
        try:
            backend = make_backend(variant, weights_dir, name, cores())
        except (ValueError, RuntimeError, OSError, ImportError) as exc:
            print(f"  forward {variant} {name}: skipped ({exc})")
            continue
        for n in batch_sizes:
            batch = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
            rate, _ = timed_rate(lambda b=batch, m=backend: len(m.predict(b)), seconds=seconds)
            points.append(
                ForwardPoint(variant, backend.name, backend.precision, n, rate, n / rate * 1000)
            )
    return points


def _prepare_one(data: bytes, pre: Preprocessing) -> int:
    prepare(data, pre, max_pixels=MAX_PIXELS)
    return 1


def decode_single(
    variant: str, inputs: dict[str, bytes], *, seconds: float = 0.5
) -> list[DecodePoint]:
    """``prepare`` per image on this one thread: the per-request CPU cost before the model."""
    pre = SPECS_BY_NAME[variant].preprocessing
    points = []
    for name, data in inputs.items():
        rate, _ = timed_rate(lambda d=data: _prepare_one(d, pre), seconds=seconds)
        points.append(DecodePoint(variant, name, 1000 / rate, rate))
    return points


def _run_pipeline(
    backend: Any, data: bytes, pre: Preprocessing, *, threads: int, batch: int, seconds: float
) -> float:
    """Decode on ``threads`` workers while this thread runs full batches; returns img/s.

    Up to two batches are decoded ahead, so decode and forward overlap as in the service
    (PIL and torch release the GIL while they work).
    """
    with ThreadPoolExecutor(threads, thread_name_prefix="limit-decode") as pool:
        pending: deque[Future[np.ndarray]] = deque()
        start = time.perf_counter()
        deadline = start + seconds

        def fill() -> None:
            while len(pending) < 2 * batch and time.perf_counter() < deadline:
                pending.append(pool.submit(prepare, data, pre, max_pixels=MAX_PIXELS))

        fill()
        done = 0
        while pending:
            items = [pending.popleft().result() for _ in range(min(batch, len(pending)))]
            fill()
            backend.predict(np.stack(items))
            done += len(items)
        return done / (time.perf_counter() - start)


def pipeline(
    variant: str,
    weights_dir: Path,
    inputs: dict[str, bytes],
    *,
    backend: str = "auto",
    seconds: float = 2.0,
) -> list[PipelinePoint]:
    """Decode pool of all cores + batched forward: the in-process ceiling per input."""
    threads = cores()
    model = make_backend(variant, weights_dir, backend, threads)
    model.warmup([1, PIPELINE_BATCH])
    pre = SPECS_BY_NAME[variant].preprocessing
    points = []
    for name, data in inputs.items():
        _run_pipeline(model, data, pre, threads=threads, batch=PIPELINE_BATCH, seconds=0.2)
        rate = _run_pipeline(
            model, data, pre, threads=threads, batch=PIPELINE_BATCH, seconds=seconds
        )
        points.append(PipelinePoint(variant, name, model.name, threads, PIPELINE_BATCH, rate))
    return points


def rtc_backends(variant: str, weights_dir: Path, n: int) -> list[Any]:
    """``n`` LiteRT backends of one single-threaded interpreter each, with the exact
    hard-swish rewrite (the service's fastest forward), built as the service builds them."""
    from app.inference import create_backend

    spec = SPECS_BY_NAME[variant]
    return [
        create_backend(
            spec,
            weights_dir=weights_dir,
            requested="litert",
            device="cpu",
            threads=1,
            exact_hard_swish=True,
        )
        for _ in range(n)
    ]


def _rtc_window(
    models: list[Any], data: bytes, pre: Preprocessing, *, warmup_s: float, seconds: float
) -> tuple[int, float, float]:
    """One thread per model, each decoding then forwarding one image at a time; counts the
    images finished inside the window after ``warmup_s``. Returns (images, seconds, CPU s)."""
    stop = threading.Event()
    window: list[float] = []  # [start, end] once known, perf_counter
    done = [0] * len(models)
    barrier = threading.Barrier(len(models) + 1)

    def work(k: int, model: Any) -> None:
        barrier.wait()
        while not stop.is_set():
            model.predict(prepare(data, pre, max_pixels=MAX_PIXELS)[None])
            now = time.perf_counter()
            if len(window) == 1 or (len(window) == 2 and now <= window[1]):
                done[k] += 1

    workers = [
        threading.Thread(target=work, args=(k, m), name=f"limit-rtc-{k}", daemon=True)
        for k, m in enumerate(models)
    ]
    for w in workers:
        w.start()
    barrier.wait()
    time.sleep(warmup_s)
    cpu0, start = time.process_time(), time.perf_counter()
    window.append(start)
    time.sleep(seconds)
    end = time.perf_counter()
    window.append(end)
    cpu1 = time.process_time()
    stop.set()
    for w in workers:
        w.join()
    return sum(done), end - start, cpu1 - cpu0


def run_to_completion(
    variant: str,
    weights_dir: Path,
    inputs: dict[str, bytes],
    *,
    seconds: float = 3.0,
    warmup_s: float = 0.5,
) -> list[RtcPoint]:
    """The headline's no-HTTP limit per input: every core decodes and forwards its own
    images on its own thread and interpreter (module docstring). Empty without LiteRT."""
    n = cores()
    try:
        models = rtc_backends(variant, weights_dir, n)
    except (ValueError, RuntimeError, OSError, ImportError) as exc:
        print(f"  run-to-completion {variant}: skipped ({exc})")
        return []
    rewritten = all(getattr(m, "rewritten", False) for m in models)
    size = SPECS_BY_NAME[variant].resolution
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    fwd_rate, _ = timed_rate(lambda: len(models[0].predict(image)), seconds=min(seconds, 0.5))
    pre = SPECS_BY_NAME[variant].preprocessing
    points = []
    for name, data in inputs.items():
        images, took, cpu = _rtc_window(models, data, pre, warmup_s=warmup_s, seconds=seconds)
        points.append(
            RtcPoint(
                variant=variant,
                input=name,
                backend=models[0].name,
                threads=n,
                exact_hard_swish=rewritten,
                img_s=images / took,
                cpu_ms=cpu / images * 1e3 if images else float("nan"),
                images=images,
                seconds=took,
                forward_ms=1e3 / fwd_rate,
            )
        )
    return points


def measure(
    variants: list[str],
    weights_dir: Path,
    inputs: dict[str, bytes],
    *,
    quick: bool = False,
    pipeline_backends: tuple[str, ...] = ("auto",),
) -> dict[str, list[dict[str, Any]]]:
    """All four limits for every variant; plain dicts, ready for JSON and the report."""
    fwd_s, dec_s, pipe_s, rtc_s = (0.2, 0.1, 0.4, 0.5) if quick else (1.0, 0.5, 2.0, 3.0)
    batch_sizes = (1, 16) if quick else BATCH_SIZES
    out: dict[str, list[dict[str, Any]]] = {
        "forward": [],
        "decode": [],
        "pipeline": [],
        "rtc": [],
    }
    for variant in variants:
        print(f"limits: {variant}", flush=True)
        out["forward"] += map(
            asdict, forward_sweep(variant, weights_dir, batch_sizes=batch_sizes, seconds=fwd_s)
        )
        out["decode"] += map(asdict, decode_single(variant, inputs, seconds=dec_s))
        for backend in pipeline_backends:
            out["pipeline"] += map(
                asdict, pipeline(variant, weights_dir, inputs, backend=backend, seconds=pipe_s)
            )
        out["rtc"] += map(
            asdict,
            run_to_completion(
                variant, weights_dir, inputs, seconds=rtc_s, warmup_s=0.2 if quick else 0.5
            ),
        )
    return out


def best_forward(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fastest batch size of each (variant, backend)."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for p in points:
        key = (p["variant"], p["backend"])
        if key not in best or p["img_s"] > best[key]["img_s"]:
            best[key] = p
    return list(best.values())
