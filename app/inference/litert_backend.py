"""The original int8 TF Lite model, run by Google's LiteRT interpreter (CPU, XNNPACK).

For TF-origin variants this *is* the reference model, bit for bit, and on CPU its int8
kernels are fast. Used when ``ai-edge-litert`` is installed and the verified upstream
``.tflite`` files are in the weights directory.

These graphs are fixed at batch 1, so a batch is a loop over its images. ``threads``
interpreters of one thread each split that loop between them: measured on 2 cores, two
single-threaded interpreters run v3-small at 291 img/s where one interpreter with two
threads runs 192 (517 against 465 with the hard-swish rewrite below): XNNPACK's thread
pool synchronises inside every layer of a small model, and spins while it waits, taking
CPU from decoding. ``invoke`` releases the GIL.
A lone image (an idle server) can't be split, so it goes to one more interpreter that
uses all ``threads`` inside its layers: its latency is what a quiet server is judged on.

V3's uint8 hard-swish ops leave XNNPACK for a slow scalar kernel; ``exact_hard_swish``
runs them on XNNPACK as float chains proven exact on all 256 codes
(``litert_hswish``), after a bit-for-bit check of the whole graph against the stock one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
SELF_CHECK_IMAGES = 4  # random images both graphs must score identically


def available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


class _Chain:
    """One interpreter per ``.tflite`` file (V1 1.0/224 ships as extractor + head)."""

    def __init__(self, models: list[Path | bytes], *, threads: int = 1) -> None:
        self.interpreters = [interpreter(model, threads=threads) for model in models]
        self.lock = threading.Lock()
        # Tensor indices and the output's quantisation, read once (each lookup of the
        # details builds dicts for every tensor: measurable at ~400 forwards/s).
        self._io = [
            (it, it.get_input_details()[0]["index"], it.get_output_details()[0]["index"])
            for it in self.interpreters
        ]
        self._scale, self._zero = self.interpreters[-1].get_output_details()[0]["quantization"]

    def run(self, images: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 -> ``(N, classes)`` dequantised scores, one by one."""
        with self.lock:
            return np.stack([self._run_one(np.ascontiguousarray(img)) for img in images])

    def try_run_one(self, image: np.ndarray) -> np.ndarray | None:
        """One ``(H, W, 3)`` image if this chain is free at once, else None."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            return self._run_one(np.ascontiguousarray(image))[None]
        finally:
            self.lock.release()

    def _run_one(self, image: np.ndarray) -> np.ndarray:
        x = image[None]
        for it, inp, out in self._io:
            it.set_tensor(inp, x)
            it.invoke()
            x = it.get_tensor(out)
        return (x.reshape(-1).astype(np.float32) - self._zero) * (self._scale or 1.0)


def interpreter(model: Path | bytes, *, threads: int = 1, builtin: bool = False) -> Any:
    """A ready interpreter for a ``.tflite`` file or graph bytes; ``builtin`` leaves out
    the default XNNPACK delegate (TFLite's own kernels only)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin else OpResolverType.AUTO
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    it = Interpreter(**source, num_threads=threads, experimental_op_resolver_type=kind)
    it.allocate_tensors()
    return it


def faster_graph(path: Path) -> Path | bytes:
    """``path``'s graph with exact XNNPACK hard-swish, if it has any such op and the
    result scores random images bit for bit like the stock graph; else ``path``."""
    from app.inference import litert_hswish

    try:
        model, report = litert_hswish.rewrite(path)
    except Exception as exc:  # an optimisation only: an older LiteRT, an odd graph
        log.warning("%s: hard-swish rewrite skipped (%s); stock graph used", path.name, exc)
        return path
    if not report.replaced:
        return path
    stock, fast = _Chain([path]), _Chain([model])
    shape = stock.interpreters[0].get_input_details()[0]["shape"]
    images = np.random.default_rng(0).integers(
        0, 256, (SELF_CHECK_IMAGES, *shape[1:]), dtype=np.uint8
    )
    if not np.array_equal(stock.run(images), fast.run(images)):
        log.warning("%s: rewritten hard-swish differs from the stock graph; not used", path.name)
        return path
    log.info(
        "%s: %d of %d uint8 hard-swish ops run on XNNPACK (exact on all 256 codes)",
        path.name,
        report.replaced,
        report.hard_swish,
    )
    return model


class LiteRTBackend:
    """``threads`` single-threaded interpreters sharing each batch, plus one with
    ``threads`` threads for a lone image."""

    name = "litert"
    device = "cpu"
    precision = "int8"

    def __init__(
        self,
        paths: list[Path],
        *,
        threads: int = 1,
        drop_background: bool = True,
        exact_hard_swish: bool = True,
    ) -> None:
        models = [faster_graph(p) if exact_hard_swish else p for p in paths]
        self.rewritten = any(isinstance(m, bytes) for m in models)
        self._chains = [_Chain(models) for _ in range(max(1, threads))]
        self._solo = _Chain(models, threads=threads) if threads > 1 else self._chains[0]
        first = self._chains[0].interpreters[0].get_input_details()[0]
        self.input_size = int(first["shape"][1])
        self.drop_background = drop_background
        # Set by the service: True while other work keeps the cores busy. The lone-image
        # interpreter's threads then spin against it (v1-1.0 took 34 ms instead of ~8 under
        # a flood of another variant), so a single-threaded one runs the image instead.
        self.contended: Callable[[], bool] = lambda: False
        self._helpers = (
            ThreadPoolExecutor(len(self._chains) - 1, thread_name_prefix="litert")
            if len(self._chains) > 1
            else None
        )

    @property
    def max_batch(self) -> int:
        """Largest batch worth cutting: one image per interpreter. A batch is a loop over
        images at the same cost per image (3.4 ms for v3-small at 1..16), so a bigger one
        only makes other variants wait longer for the shared inference thread: a V1 probe
        under a V2 flood had p50 45 ms with batches of 4 and 23 ms with 2 (idle: 12 ms)."""
        return len(self._chains)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        n = min(len(self._chains), len(batch))
        if n <= 1 and self.contended():  # every core is busy: one thread, no spinning
            probs = self._chains[0].run(batch)
        elif n <= 1:  # a lone image, or one interpreter only (then it is also the solo one)
            probs = self._solo.run(batch)
        else:  # the calling thread takes the first share, helpers the rest
            assert self._helpers is not None  # there are n > 1 interpreters
            parts = np.array_split(batch, n)
            futures = [
                self._helpers.submit(chain.run, part)
                for chain, part in zip(self._chains[1:n], parts[1:], strict=True)
            ]
            first = self._chains[0].run(parts[0])
            probs = np.concatenate([first, *(f.result() for f in futures)])
        return self._finish(probs)

    def predict_one(self, image: np.ndarray, *, alone: bool) -> np.ndarray:
        """One preprocessed ``(H, W, 3)`` image forwarded on the calling thread (run to
        completion: the thread that decoded it, no hand-off): the all-threads interpreter
        when ``alone`` (nothing else wants the cores), else the first free single-threaded
        one. Returns ``(1, classes)`` like ``predict``."""
        if alone and self._solo is not self._chains[0]:
            probs = self._solo.try_run_one(image)
            if probs is not None:
                return self._finish(probs)
        for chain in self._chains:
            probs = chain.try_run_one(image)
            if probs is not None:
                return self._finish(probs)
        # Every interpreter busy (a client batch holds them): wait for this thread's own.
        chain = self._chains[threading.get_ident() % len(self._chains)]
        return self._finish(chain.run(image[None]))

    def _finish(self, probs: np.ndarray) -> np.ndarray:
        if self.drop_background:
            probs = probs[:, 1:]
            total = probs.sum(axis=1, keepdims=True)
            probs = np.divide(probs, total, out=np.zeros_like(probs), where=total > 0)
        return probs.astype(np.float32)

    def warmup(self, batch_sizes: list[int]) -> None:
        for n in {1, len(self._chains)}:  # the lone-image interpreter, then all the others
            self.predict(np.zeros((n, self.input_size, self.input_size, 3), dtype=np.uint8))
