"""Occlusion saliency: which regions of the image the class score depends on.

Why occlusion: it needs forward passes only, so it works on every backend (LiteRT int8
has no gradients) and costs a known number of them. The variant's preprocessed input
(``S`` x ``S`` uint8) is divided into a 14 x 14 grid of cells. A square patch of 4 x 4
cells (64 px at 224) filled with the preprocessing's neutral value (the pixel the
normalisation maps to 0: 128 for TF Lite releases, the ImageNet mean for torchvision)
slides with a stride of 2 cells over 7 x 7 positions, centred so that the patches hang
one cell over each border and every cell is hidden by the same patches in its row and
column (2 x 2, 1 at a border). Each occluded copy goes through the variant's own batcher
(so batches keep their size cap and mix with predicts); with the unoccluded input that is
``7 * 7 + 1 = 50`` forwards per explain. A cell's saliency is the mean drop of the class
probability over the patches that hid it; the map is the positive part, divided by its
maximum (so 1 = the most important cell; all 0 if no patch lowers the score).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.batching import Completed
from app.errors import DeadlineExceeded, InvalidRequest, ServiceError
from app.imaging import Preprocessing, decode_image, draft_size, preprocess_image, source_box
from app.serving.registry import LoadedVariant
from app.serving.service import ClassifierService, Prediction


@dataclass(frozen=True)
class OcclusionPlan:
    """Where the patches go: ``grid`` cells per side, a patch of ``patch`` x ``patch``
    cells moved by ``stride`` cells, ``(grid / stride) ** 2`` positions."""

    grid: int = 14
    patch: int = 4
    stride: int = 2

    def __post_init__(self) -> None:
        if self.grid % self.stride or (self.patch - self.stride) % 2 or self.patch < self.stride:
            raise ValueError("need grid % stride == 0 and an even patch - stride >= 0")

    @property
    def positions(self) -> int:
        """Patch positions per side."""
        return self.grid // self.stride

    @property
    def forwards(self) -> int:
        """Forward passes per explain: every position, plus the unoccluded input."""
        return self.positions**2 + 1

    def cell_spans(self) -> list[tuple[int, int]]:
        """Per position along one side, the cells [start, stop) its patch hides."""
        overhang = (self.patch - self.stride) // 2
        spans = []
        for i in range(self.positions):
            start = i * self.stride - overhang
            spans.append((max(0, start), min(self.grid, start + self.patch)))
        return spans

    def edges(self, size: int) -> np.ndarray:
        """Pixel edges of the cells of a ``size``-pixel side (``grid + 1`` of them)."""
        return np.rint(np.linspace(0, size, self.grid + 1)).astype(int)


PLAN = OcclusionPlan()
"""The plan every explain uses: 14 x 14 cells, 7 x 7 patches of 4 x 4 cells, 50 forwards."""


@dataclass(frozen=True)
class Explanation:
    variant: LoadedVariant
    predictions: list[Prediction]  # top-k of the unoccluded input
    class_index: int  # the class explained
    label: str
    score: float  # its probability on the unoccluded input
    saliency: np.ndarray  # (grid, grid) in [0, 1], row-major from the top-left
    drops: np.ndarray  # (grid, grid): mean drop of ``score`` when the cell is hidden
    region: tuple[float, float, float, float]  # the grid's box, fractions of the image
    image_size: tuple[int, int]  # (width, height) of the decoded image
    forwards: int
    decode_ms: float
    inference_ms: float  # forward time, summed over this explain's share of its batches
    total_ms: float


def neutral_pixel(pre: Preprocessing) -> np.ndarray:
    """The uint8 RGB value the normalisation maps to 0: hiding, not painting."""
    return np.clip(np.rint(np.asarray(pre.mean) * 255), 0, 255).astype(np.uint8)


def occluded_copies(array: np.ndarray, plan: OcclusionPlan, fill: np.ndarray) -> np.ndarray:
    """``plan.positions ** 2`` copies of the ``(S, S, 3)`` input, each with one patch
    hidden, in row-major order of the patch positions."""
    edges = plan.edges(array.shape[0])
    spans = plan.cell_spans()
    out = np.repeat(array[None], len(spans) ** 2, axis=0)
    k = 0
    for r0, r1 in spans:
        for c0, c1 in spans:
            out[k, edges[r0] : edges[r1], edges[c0] : edges[c1]] = fill
            k += 1
    return out


def saliency_from_drops(drops: np.ndarray, plan: OcclusionPlan) -> tuple[np.ndarray, np.ndarray]:
    """Per-position score drops ``(P, P)`` -> per-cell mean drop and its normalised
    positive part, both ``(grid, grid)``."""
    total = np.zeros((plan.grid, plan.grid))
    count = np.zeros((plan.grid, plan.grid))
    spans = plan.cell_spans()
    for i, (r0, r1) in enumerate(spans):
        for j, (c0, c1) in enumerate(spans):
            total[r0:r1, c0:c1] += drops[i, j]
            count[r0:r1, c0:c1] += 1
    mean = total / count
    positive = np.maximum(mean, 0.0)
    peak = positive.max()
    return (positive / peak if peak > 0 else positive), mean


async def _forward_all(
    target: LoadedVariant, items: np.ndarray, *, window: int, deadline: float | None
) -> tuple[list[np.ndarray], float]:
    """Every item through the variant's batcher, at most ``window`` queued at a time (one
    batch's worth: the batcher's queue stays free for others); the first error wins and
    the rest are withdrawn. Returns the probabilities in order and this request's share
    of the forward time."""
    gate = asyncio.Semaphore(window)

    async def one(x: np.ndarray) -> Completed:
        async with gate:
            done = await target.batcher.submit(x, deadline=deadline)
        if isinstance(done.result, ServiceError):
            raise done.result
        return done

    tasks = [asyncio.ensure_future(one(x)) for x in items]
    try:
        results = await asyncio.gather(*tasks)
    finally:  # an error or our own cancellation: withdraw the rest before giving back
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    share = sum(d.inference_ms / d.batch_size for d in results)
    return [d.result for d in results], share


def _inputs(
    data: bytes, pre: Preprocessing, max_pixels: int, plan: OcclusionPlan
) -> tuple[np.ndarray, tuple[int, int]]:
    """On the decode pool: the input as ``prepare`` makes it (same pixels as /predict)
    followed by its occluded copies, and the decoded image's size."""
    img = decode_image(data, max_pixels=max_pixels, draft_to=draft_size(pre))
    array = preprocess_image(img, pre)
    return np.concatenate([array[None], occluded_copies(array, plan, neutral_pixel(pre))]), img.size


async def explain(
    service: ClassifierService,
    data: bytes,
    target: LoadedVariant,
    class_index: int | None = None,
    deadline: float | None = None,
    *,
    topk: int = 5,
    plan: OcclusionPlan = PLAN,
    admit: bool = True,
) -> Explanation:
    """Top-k of ``data`` with ``target`` plus the occlusion saliency of ``class_index``
    (default: the top class). Takes ``plan.forwards`` predicts' worth of the variant's
    admission unless the caller already holds it (``admit=False``)."""
    num_classes = target.spec.num_classes
    if class_index is not None and not 0 <= class_index < num_classes:
        raise InvalidRequest(
            f"class_index {class_index} is out of range; allowed: 0-{num_classes - 1}",
            class_index=class_index,
        )
    start = time.perf_counter()
    guard = (
        service.admit(target, cost=plan.forwards, heavy=True) if admit else contextlib.nullcontext()
    )
    with guard:
        pre = target.spec.preprocessing
        loop = asyncio.get_running_loop()
        items, (width, height) = await loop.run_in_executor(
            service.decode_pool, _inputs, data, pre, service.settings.max_pixels, plan
        )
        decode_ms = (time.perf_counter() - start) * 1000
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(f"the deadline passed while decoding for {target.name}")
        probs, inference_ms = await _forward_all(
            target, items, window=service.settings.max_batch_size, deadline=deadline
        )
    base = probs[0]
    cls = int(np.argmax(base)) if class_index is None else class_index
    occluded = np.array([p[cls] for p in probs[1:]], dtype=np.float64)
    drops = (float(base[cls]) - occluded).reshape(plan.positions, plan.positions)
    saliency, mean_drops = saliency_from_drops(drops, plan)
    left, top, right, bottom = source_box(pre, width, height)
    return Explanation(
        variant=target,
        predictions=service.top_k(base, topk),
        class_index=cls,
        label=service.labels[cls],
        score=float(base[cls]),
        saliency=saliency,
        drops=mean_drops,
        region=(left / width, top / height, right / width, bottom / height),
        image_size=(width, height),
        forwards=plan.forwards,
        decode_ms=decode_ms,
        inference_ms=inference_ms,
        total_ms=(time.perf_counter() - start) * 1000,
    )


# ---------------------------------------------------------------- the PNG overlay
# A perceptual ramp (dark purple -> red -> yellow), as in matplotlib's "inferno".
_RAMP = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
     [250, 193, 39], [252, 255, 164]],
    dtype=np.float64,
)  # fmt: skip


def _colours(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 along the ramp."""
    x = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    i = np.minimum(x.astype(int), len(_RAMP) - 2)
    t = (x - i)[..., None]
    return np.rint(_RAMP[i] * (1 - t) + _RAMP[i + 1] * t).astype(np.uint8)


def overlay_png(image: Image.Image, e: Explanation, *, max_side: int = 1024) -> bytes:
    """The heatmap over the region the model saw, on ``image`` (scaled down to at most
    ``max_side`` pixels a side); what the model did not see is dimmed."""
    img = image.convert("RGB")
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    w, h = img.size
    x0, y0, x1, y1 = (round(f * s) for f, s in zip(e.region, (w, h, w, h), strict=True))
    sal = e.saliency
    heat = np.dstack([_colours(sal), np.rint(15 + 190 * sal**0.75).astype(np.uint8)])
    layer = Image.fromarray(heat, "RGBA").resize(
        (max(1, x1 - x0), max(1, y1 - y0)), Image.Resampling.BICUBIC
    )
    out = Image.new("RGBA", (w, h), (0, 0, 0, 110))  # dims what lies outside the region
    out.paste(layer, (x0, y0))
    composed = Image.alpha_composite(img.convert("RGBA"), out).convert("RGB")
    buf = io.BytesIO()
    composed.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
