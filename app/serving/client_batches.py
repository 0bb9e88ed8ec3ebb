"""Client batches: one request carrying N images (the protocols' batch inputs,
``/predict/batch``), as one admission and one ``submit_many`` so they share a batch. A
batch of one encoded image on LiteRT runs to completion instead, as ``/predict`` does.

A mixin of ``ClassifierService`` (``app.serving.service``), kept apart because it is the
protocols' entry and the single-image path is the service's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.errors import DeadlineExceeded, InferenceFailed, InvalidRequest, ServiceError
from app.imaging.cost import decode_cost
from app.serving.execution import JpegItem
from app.serving.registry import LoadedVariant

if TYPE_CHECKING:
    from app.serving.service import ClassifierService


@dataclass(frozen=True)
class BatchInference:
    """A client batch's answer: every class's probability for each of its N images."""

    variant: LoadedVariant
    probabilities: np.ndarray  # (N, classes) float32, in request order
    decode_ms: float  # wall time decoding all N (in parallel on the decode pool)
    queue_ms: float  # the longest any of them waited for its batch
    inference_ms: float  # the longest forward pass any of them rode in
    batch_sizes: list[int]  # size of the batch each image ran in


class ClientBatches:
    """``admit_batch``, ``infer_many``: the service's methods for client batches."""

    def admit_batch(
        self: ClassifierService, target: LoadedVariant, count: int, images: Sequence[bytes] = ()
    ) -> contextlib.AbstractContextManager:
        """Admission for ONE request carrying ``count`` images (``images``: their encoded
        bytes, empty for decoded pixels). The one place a client batch's size meets
        admission: with cost-aware admission (``admit(target, cost=...)``) its cost is
        the sum of its images' decode costs (``count`` for pixels, 1 each)."""
        cost = sum(decode_cost(x) for x in images) if images else float(count)
        return self.admit(target, cost=cost)

    async def infer_many(
        self: ClassifierService,
        target: LoadedVariant,
        *,
        images: Sequence[bytes] | None = None,
        pixels: np.ndarray | None = None,
        deadline: float | None = None,
    ) -> BatchInference:
        """N encoded ``images``, or ``pixels`` (uint8 ``(N, size, size, 3)``, already at the
        variant's input size: only its normalisation is left to do), as ONE request: one
        admission, all decoded in parallel, one ``submit_many`` so they share a batch."""
        if (images is None) == (pixels is None):
            raise ValueError("pass images or pixels")
        n = len(images) if images is not None else int(pixels.shape[0])
        if images is not None and n == 1 and self._runs_to_completion(target):
            return await self._infer_one(target, images[0], deadline)
        with self.admit_batch(target, n, images or ()):
            t0 = time.perf_counter()
            if images is not None:
                items = await self._decode_all(images, target)
            else:
                items = list(check_pixels(pixels, target))
            decode_ms = (time.perf_counter() - t0) * 1000
            done = await target.batcher.submit_many(items, deadline=deadline)
        for i, d in enumerate(done):
            if isinstance(d.result, ServiceError):
                d.result.prefix(f"image {i}")
                raise d.result
        return BatchInference(
            variant=target,
            probabilities=np.stack([d.result for d in done]).astype(np.float32, copy=False),
            decode_ms=decode_ms,
            queue_ms=max(d.queue_ms for d in done),
            inference_ms=max(d.inference_ms for d in done),
            batch_sizes=[d.batch_size for d in done],
        )

    async def _infer_one(
        self: ClassifierService, target: LoadedVariant, data: bytes, deadline: float | None
    ) -> BatchInference:
        """A client batch of one image (most protocol requests) runs to completion like a
        ``/predict`` upload: same admission cost, same task, errors worded as a batch's."""
        cost = decode_cost(data)
        with self.admit(target, cost=cost):
            target.batcher.count_client_batch(1)
            try:
                one = await self._run_to_completion(
                    data, target, cost=cost, deadline=deadline, topk=None
                )
            except (DeadlineExceeded, InferenceFailed) as exc:
                exc.prefix("image 0")  # as the batcher's are worded
                raise
            except ServiceError as exc:  # the file itself
                exc.prefix("image 0 of 1")
                raise
        return BatchInference(
            variant=target,
            probabilities=one.probs[None].astype(np.float32, copy=False),
            decode_ms=one.wait_ms + one.decode_ms,
            queue_ms=0.0,
            inference_ms=one.inference_ms,
            batch_sizes=[1],
        )

    async def _decode_all(
        self: ClassifierService, images: Sequence[bytes], target: LoadedVariant
    ) -> list[np.ndarray | JpegItem]:
        results = await asyncio.gather(
            *(self.decode(data, target, cost=decode_cost(data)) for data in images),
            return_exceptions=True,
        )
        for i, r in enumerate(results):
            if isinstance(r, ServiceError):
                r.prefix(f"image {i} of {len(images)}")
                raise r
            if isinstance(r, BaseException):
                raise r
        return [item for item, _ in results]


def check_pixels(pixels: np.ndarray, target: LoadedVariant) -> np.ndarray:
    """Decoded pixels must be uint8 ``(N, size, size, 3)`` at the variant's input size."""
    size = target.spec.preprocessing.size
    want = f"uint8 [N, {size}, {size}, 3] (RGB at {target.name}'s input size)"
    if pixels.dtype != np.uint8:
        raise InvalidRequest(f"pixels must be {want}, got {pixels.dtype}")
    if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3) or pixels.shape[0] < 1:
        raise InvalidRequest(f"pixels must be {want}, got shape {list(pixels.shape)}")
    return pixels
