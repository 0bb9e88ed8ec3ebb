"""What runs on the worker threads, and what start-up needs besides the service itself.

The batch predict function a variant's batcher calls (preprocessed arrays, or JPEGs a
device decoder takes, with a CPU fallback per file), the thread priority of the decode
and inference threads, warm-up batch sizes, the golden image, and CUDA out-of-memory
detection (the batcher splits such a batch).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import numpy as np

from app.errors import DeadlineExceeded, InferenceFailed, ServiceError
from app.imaging import Preprocessing, prepare

GOLDEN_IMAGE = "golden_cat.jpg"


@dataclass(frozen=True)
class JpegItem:
    """A JPEG whose header passed the checks, to be decoded on the inference device."""

    data: bytes


@dataclass(frozen=True)
class Completed1:
    """One image run to completion on a decode thread, with where its time went (ms)."""

    top: list[tuple[int, float]]  # the k best (class, score), best first; empty if k is None
    probs: np.ndarray | None  # every class's probability, only when k is None
    wait_ms: float  # queued for a decode thread
    decode_ms: float
    inference_ms: float


def decode_and_forward(
    data: bytes,
    backend,
    pre: Preprocessing,
    max_pixels: int,
    *,
    name: str,
    topk: int | None,
    enqueued: float,
    deadline: float | None,
    alone: Callable[[], bool],
) -> Completed1:
    """Run on a decode thread: decode, then forward on the same thread (run to completion).

    Returns the ``topk`` best classes (every class's probability when ``topk`` is None: the
    protocols answer with the whole vector). The deadline is checked between the two, as the
    batcher checks it before a batch: an image decoded too late costs no forward. A model
    failure is the request's ``InferenceFailed``; a bad file is its own error from
    ``prepare``."""
    t0 = time.monotonic()
    array = prepare(data, pre, max_pixels=max_pixels)
    t1 = time.monotonic()
    if deadline is not None and t1 >= deadline:
        raise DeadlineExceeded(
            f"the deadline passed after {(t1 - enqueued) * 1000:.0f} ms waiting for and "
            f"decoding the image, before model {name} ran"
        )
    try:
        probs = backend.predict_one(array, alone=alone())
    except Exception as exc:
        raise InferenceFailed(f"model {name} failed: {type(exc).__name__}: {exc}") from exc
    t2 = time.monotonic()
    # The top k here, not on the event loop: the loop is the gate every answer waits at.
    top, whole = ([], probs[0]) if topk is None else (top_k(probs[0], topk), None)
    return Completed1(top, whole, (t0 - enqueued) * 1000, (t1 - t0) * 1000, (t2 - t1) * 1000)


def top_k(probs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` best (class, score) of one image's probabilities, best first (ties in
    class order)."""
    k = min(k, probs.shape[0])
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    return [(int(i), float(probs[i])) for i in idx.tolist()]


def batch_buckets(max_batch_size: int) -> list[int]:
    """Powers of two up to the max batch size (warm-up sizes)."""
    sizes, n = [], 1
    while n < max_batch_size:
        sizes.append(n)
        n *= 2
    return [*sizes, max_batch_size]


def golden_image() -> bytes:
    return resources.files("app.serving").joinpath(GOLDEN_IMAGE).read_bytes()


def lower_thread_priority(nice: int) -> None:
    """Make the calling worker thread yield the CPU to the event loop (Linux: per thread).

    The event loop is the gate of every request (accepting, parsing, refusing, answering);
    when decode and inference threads take the cores from it, every answer waits in the
    loop's backlog. Work is conserved: the workers still get every cycle the loop leaves.
    """
    if nice > 0 and hasattr(os, "setpriority"):
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):  # not allowed here: run at normal priority
            os.setpriority(
                os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice)
            )


def make_predict_fn(backend, pre: Preprocessing, max_pixels: int):
    """Batch items are preprocessed arrays, or raw JPEGs for a device decoder (which
    fall back to the CPU decoder one by one if the device refuses them)."""

    def predict(items: list[np.ndarray | JpegItem]) -> list[np.ndarray | ServiceError]:
        out: list = [None] * len(items)
        arrays = [i for i, x in enumerate(items) if isinstance(x, np.ndarray)]
        jpegs = [i for i, x in enumerate(items) if isinstance(x, JpegItem)]
        if arrays:
            probs = backend.predict(np.stack([items[i] for i in arrays]))
            for i, p in zip(arrays, probs, strict=True):
                out[i] = p
        if jpegs:
            try:
                probs = backend.predict_jpegs([items[i].data for i in jpegs])
                for i, p in zip(jpegs, probs, strict=True):
                    out[i] = p
            except RuntimeError:  # one bad file must not fail its neighbours
                for i in jpegs:
                    try:
                        out[i] = backend.predict_jpegs([items[i].data])[0]
                    except RuntimeError:
                        out[i] = cpu_fallback(backend, items[i].data, pre, max_pixels)
        return out

    return predict


def cpu_fallback(
    backend, data: bytes, pre: Preprocessing, max_pixels: int
) -> np.ndarray | ServiceError:
    """Decode one JPEG the device refused on the CPU; a truly bad file becomes its error."""
    try:
        return backend.predict(prepare(data, pre, max_pixels=max_pixels)[None])[0]
    except ServiceError as exc:
        return exc


def is_oom(exc: BaseException) -> bool:
    """CUDA out-of-memory: the batcher splits the batch and retries the halves."""
    torch = sys.modules.get("torch")  # never imported here: only torch backends raise it
    if torch is None:
        return False
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()
