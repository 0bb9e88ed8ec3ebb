"""HTTP routes that answer "why?" and "which width?": ``POST /explain`` (occlusion saliency,
JSON or a PNG overlay) and ``POST /predict/compare`` (one image, every loaded variant).

Thin adapters: the work is in ``app.serving.explain`` and ``app.serving.compare``; uploads,
variant choice, deadlines, auth and errors are the predict routes' own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response

from app.api import uploads
from app.api.deps import AuthDep, DeadlineDep, ServiceDep, SettingsDep
from app.api.errors import status_for
from app.api.routes import (
    IMAGE_BODY,
    PREDICT_ERRORS,
    ChoiceDep,
    TopkQ,
    unless_disconnected,
    variant_out,
)
from app.api.schemas import (
    AccuracyOut,
    BatchItemError,
    CompareItem,
    CompareResponse,
    ExplainResponse,
    ExplainTimings,
    PredictionOut,
    RegionOut,
    SaliencyOut,
    Timings,
)
from app.errors import ServiceError
from app.imaging import decode_image
from app.imaging.cost import decode_cost
from app.serving.compare import CompareRow, admit_each, compare
from app.serving.explain import PLAN, Explanation, explain, overlay_png
from app.serving.service import Prediction

router = APIRouter()

OVERLAY_MAX_SIDE = 1024

ClassQ = Annotated[
    int | None,
    Query(
        ge=0,
        le=999,
        description="ImageNet class to explain (0-999, as in predictions[].index); "
        "default: the top class.",
    ),
]
FormatQ = Annotated[
    Literal["json", "png"],
    Query(
        description="json: top-k and the saliency grid; png: the image with the heatmap "
        f"over it (at most {OVERLAY_MAX_SIDE} px a side)."
    ),
]
EXPLAIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    **PREDICT_ERRORS,
    200: {
        "description": "format=json: the explanation; format=png: the overlay "
        "(headers X-Explain-Class, X-Explain-Score).",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    },
}


def _record(request: Request, route: str, model: str, status: int, start: float) -> None:
    m = request.app.state.service.metrics
    m.requests.labels(route, model, str(status)).inc()
    m.latency.labels("total", model).observe(time.perf_counter() - start)


def _predictions(predictions: list[Prediction]) -> list[PredictionOut]:
    return [
        PredictionOut(index=p.index, label=p.label, score=round(p.score, 6)) for p in predictions
    ]


def explanation_out(request_id: str, e: Explanation, start: float) -> ExplainResponse:
    """The JSON answer of an explanation (``start``: the request's ``perf_counter``); the
    KServe v1 ``:explain`` adapter can return ``.model_dump()`` of it as is."""
    left, top, right, bottom = (round(x, 6) for x in e.region)
    return ExplainResponse(
        request_id=request_id,
        variant=variant_out(e.variant),
        predictions=_predictions(e.predictions),
        saliency=SaliencyOut(
            class_index=e.class_index,
            label=e.label,
            score=round(e.score, 6),
            grid=PLAN.grid,
            patch=PLAN.patch,
            stride=PLAN.stride,
            forwards=e.forwards,
            values=e.saliency.round(4).tolist(),
            drops=e.drops.round(5).tolist(),
            region=RegionOut(left=left, top=top, right=right, bottom=bottom),
            image_width=e.image_size[0],
            image_height=e.image_size[1],
        ),
        timings=ExplainTimings(
            decode_ms=round(e.decode_ms, 3),
            inference_ms=round(e.inference_ms, 3),
            total_ms=round((time.perf_counter() - start) * 1000, 3),
        ),
    )


def _render(data: bytes, e: Explanation, max_pixels: int) -> bytes:
    """Decode again at display size (the explain's own decode may be a reduced JPEG)."""
    image = decode_image(data, max_pixels=max_pixels, draft_to=(OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
    return overlay_png(image, e, max_side=OVERLAY_MAX_SIDE)


@router.post(
    "/explain",
    response_model=ExplainResponse,
    responses=EXPLAIN_RESPONSES,
    openapi_extra=IMAGE_BODY,
    dependencies=[AuthDep],
    tags=["explain"],
    summary="Explain a classification: the regions it rests on",
)
async def explain_route(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
    choice: ChoiceDep,
    topk: TopkQ = 5,
    class_index: ClassQ = None,
    format: FormatQ = "json",
) -> Any:
    """Top-k plus an occlusion saliency map of the top class (or `class_index`): a 14 x 14
    grid of how much the class probability drops when each region is hidden by a gray
    patch (4 x 4 cells moved 2 cells at a time: 49 occluded copies + the image itself =
    50 forward passes, batched through the variant's own backend). It holds 50 predicts'
    worth of the variant's admission (at most half its limit).

    `curl -F file=@cat.jpg 'http://127.0.0.1:8000/explain?model=v3&format=png' -o why.png`
    """
    start = time.perf_counter()
    label = "unresolved"  # never the client's text: label series must stay bounded
    try:
        target = choice.resolve(service)
        label = target.name
        # The upload first: a body still arriving holds no inference slot (issue 20).
        upload = await uploads.read_one(request, limit=settings.max_upload_bytes)
        with service.admit(target, cost=PLAN.forwards, heavy=True):
            result = await unless_disconnected(
                request,
                explain(
                    service, upload.data, target, class_index, deadline, topk=topk, admit=False
                ),
            )
            png = None
            if result is not None and format == "png":
                png = await asyncio.get_running_loop().run_in_executor(
                    service.decode_pool, _render, upload.data, result, settings.max_pixels
                )
    except ServiceError as exc:
        _record(request, "/explain", label, status_for(exc), start)
        raise
    if result is None:  # client went away
        _record(request, "/explain", label, 499, start)
        return Response(status_code=499)
    _record(request, "/explain", label, 200, start)
    if png is not None:
        headers = {
            "X-Explain-Class": str(result.class_index),
            "X-Explain-Score": f"{result.score:.6f}",
            "Cache-Control": "no-store",
        }
        return Response(png, media_type="image/png", headers=headers)
    return explanation_out(request.scope["state"]["request_id"], result, start)


def _compare_item(row: CompareRow) -> CompareItem:
    s = row.variant.spec
    common = {
        "variant": variant_out(row.variant),
        "params": s.params,
        "macs": s.macs,
        "accuracy": AccuracyOut(**s.accuracy.__dict__) if s.accuracy else None,
    }
    if row.result is None:
        err = row.error
        code, message = (err.code, err.message) if err else ("internal_error", "no answer")
        return CompareItem(**common, ok=False, error=BatchItemError(code=code, message=message))
    c = row.result
    return CompareItem(
        **common,
        ok=True,
        predictions=_predictions(c.predictions),
        batch_size=c.batch_size,
        timings=Timings(
            decode_ms=round(c.decode_ms, 3),
            queue_ms=round(c.queue_ms, 3),
            inference_ms=round(c.inference_ms, 3),
            total_ms=round(row.total_ms, 3),
        ),
    )


@router.post(
    "/predict/compare",
    response_model=CompareResponse,
    responses=PREDICT_ERRORS,
    openapi_extra=IMAGE_BODY,
    dependencies=[AuthDep],
    tags=["classify"],
    summary="Compare every loaded variant on one image",
)
async def predict_compare(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
    topk: TopkQ = 5,
) -> Any:
    """One upload, every loaded variant: each one's top-k and latency next to its
    parameters, multiply-adds and reported ImageNet top-1, to see the accuracy/cost
    trade-off of the width multiplier on your own image. Decodes once per distinct
    preprocessing. A variant at capacity answers with its error (`ok: false`).

    `curl -F file=@cat.jpg http://127.0.0.1:8000/predict/compare`
    """
    start = time.perf_counter()
    try:
        service.resolve()  # refused while loading or draining
        targets = list(service.registry)
        upload = await uploads.read_one(request, limit=settings.max_upload_bytes)
        with admit_each(service, targets, cost=decode_cost(upload.data)) as refused:
            result = await unless_disconnected(
                request,
                compare(
                    service, upload.data, targets, topk=topk, deadline=deadline, refused=refused
                ),
            )
    except ServiceError as exc:
        _record(request, "/predict/compare", "all", status_for(exc), start)
        raise
    if result is None:
        _record(request, "/predict/compare", "all", 499, start)
        return Response(status_code=499)
    _record(request, "/predict/compare", "all", 200, start)
    return CompareResponse(
        request_id=request.scope["state"]["request_id"],
        decodes=result.decodes,
        total_ms=round((time.perf_counter() - start) * 1000, 3),
        results=[_compare_item(r) for r in result.rows],
    )
