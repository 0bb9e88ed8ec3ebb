"""The original int8 TF Lite model, run by Google's LiteRT interpreter (CPU, XNNPACK).

For TF-origin variants this *is* the reference model, bit for bit, and on CPU its int8
kernels are fast. Used when ``ai-edge-litert`` is installed and the verified upstream
``.tflite`` files are in the weights directory.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


def available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


class LiteRTBackend:
    """One or more chained ``.tflite`` graphs (V1 1.0/224 ships as extractor + head)."""

    name = "litert"
    device = "cpu"
    precision = "int8"

    def __init__(
        self, paths: list[Path], *, threads: int = 1, drop_background: bool = True
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreters = []
        for path in paths:
            it = Interpreter(model_path=str(path), num_threads=threads)
            it.allocate_tensors()
            self._interpreters.append(it)
        first = self._interpreters[0].get_input_details()[0]
        self.input_size = int(first["shape"][1])
        self.drop_background = drop_background
        self._batch = 1
        self._lock = threading.Lock()

    def _run_one(self, image: np.ndarray) -> np.ndarray:
        x = image[None]
        for it in self._interpreters:
            it.set_tensor(it.get_input_details()[0]["index"], x)
            it.invoke()
            out = it.get_output_details()[0]
            x = it.get_tensor(out["index"])
        scale, zero = out["quantization"]
        probs = (x.reshape(-1).astype(np.float32) - zero) * (scale or 1.0)
        return probs

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            probs = np.stack([self._run_one(np.ascontiguousarray(img)) for img in batch])
        if self.drop_background:
            probs = probs[:, 1:]
            total = probs.sum(axis=1, keepdims=True)
            probs = np.divide(probs, total, out=np.zeros_like(probs), where=total > 0)
        return probs.astype(np.float32)

    def warmup(self, batch_sizes: list[int]) -> None:
        self.predict(np.zeros((1, self.input_size, self.input_size, 3), dtype=np.uint8))
