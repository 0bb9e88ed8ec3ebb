"""One image through every loaded variant: the accuracy/cost curve on the user's own image.

Variants that share a preprocessing geometry (size, crop, interpolation) share one
decode: decoding ends at uint8 pixels and each backend applies its own mean/std, so the
seven TF Lite variants need four decodes (128, 160, 192 and 224 px, the last shared by
four), and every variant sees exactly the pixels ``/predict`` would give it. Each variant
takes one slot of its own admission; a variant that is at capacity (or misses the
deadline) answers with its error while the others answer normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from app.errors import ServiceError
from app.imaging import Preprocessing
from app.serving.registry import LoadedVariant
from app.serving.service import Classification, ClassifierService, JpegItem

DecodeKey = tuple[int, str, float, int | None, str]


def decode_key(pre: Preprocessing) -> DecodeKey:
    """What decides the uint8 pixels a variant gets (not its normalisation)."""
    return pre.size, pre.crop, pre.crop_fraction, pre.resize_size, pre.interpolation


@dataclass(frozen=True)
class CompareRow:
    variant: LoadedVariant
    result: Classification | None  # None: ``error`` says why
    error: ServiceError | None
    total_ms: float  # from the start of the comparison to this variant's answer


@dataclass(frozen=True)
class Comparison:
    rows: list[CompareRow]
    decodes: int  # distinct preprocessings decoded
    total_ms: float


@contextlib.contextmanager
def admit_each(
    service: ClassifierService, targets: Sequence[LoadedVariant], *, cost: float = 1.0
) -> Iterator[dict[str, ServiceError]]:
    """Hold ``cost`` units of the admission of every variant that has room (once the
    upload is in); yields the refusals by variant name. Raises the first refusal if every
    one refused."""
    refused: dict[str, ServiceError] = {}
    with contextlib.ExitStack() as stack:
        for t in targets:
            try:
                stack.enter_context(service.admit(t, cost=cost))
            except ServiceError as exc:
                refused[t.name] = exc
        if targets and len(refused) == len(targets):
            raise next(iter(refused.values()))
        yield refused


async def compare(
    service: ClassifierService,
    data: bytes,
    targets: Sequence[LoadedVariant] | None = None,
    *,
    topk: int = 5,
    deadline: float | None = None,
    refused: dict[str, ServiceError] | None = None,
) -> Comparison:
    """Classify ``data`` with every variant in ``targets`` (default: all loaded), decoding
    once per distinct preprocessing. Admission is the caller's (``admit_each``); variants
    in ``refused`` are answered with their refusal. A bad image fails the whole request
    (every variant would refuse it alike), and so does a comparison no variant answered."""
    start = time.perf_counter()
    targets = list(service.registry) if targets is None else list(targets)
    refused = refused or {}
    decodes: dict[DecodeKey, asyncio.Future[tuple[np.ndarray | JpegItem, float]]] = {}
    for t in targets:
        key = decode_key(t.spec.preprocessing)
        if t.name not in refused and key not in decodes:
            decodes[key] = asyncio.ensure_future(service.decode(data, t))

    async def one(t: LoadedVariant) -> CompareRow:
        if t.name in refused:
            return CompareRow(t, None, refused[t.name], 0.0)
        item, decode_ms = await decodes[decode_key(t.spec.preprocessing)]
        try:
            done = await t.batcher.submit(item, deadline=deadline)
            if isinstance(done.result, ServiceError):
                raise done.result
        except ServiceError as exc:
            return CompareRow(t, None, exc, (time.perf_counter() - start) * 1000)
        result = Classification(
            variant=t,
            predictions=service.top_k(done.result, topk),
            decode_ms=decode_ms,
            queue_ms=done.queue_ms,
            inference_ms=done.inference_ms,
            batch_size=done.batch_size,
        )
        return CompareRow(t, result, None, (time.perf_counter() - start) * 1000)

    try:
        await asyncio.gather(*decodes.values())  # a bad image: its error, for everyone
        rows = await asyncio.gather(*(one(t) for t in targets))
    finally:
        for task in decodes.values():
            task.cancel()
    if rows and not any(r.result for r in rows):  # none answered: say why, as /predict would
        raise next(r.error for r in rows if r.error is not None)
    return Comparison(
        rows=list(rows), decodes=len(decodes), total_ms=(time.perf_counter() - start) * 1000
    )
