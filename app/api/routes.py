"""HTTP routes: classify, list models, health, readiness, metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from app.api import uploads
from app.api.deps import AuthDep, DeadlineDep, ServiceDep, SettingsDep
from app.api.errors import ErrorResponse, status_for
from app.api.schemas import (
    BatchItem,
    BatchItemError,
    BatchPredictResponse,
    FallbackOut,
    HealthResponse,
    ModelOut,
    ModelsResponse,
    PredictionOut,
    PredictResponse,
    ReadyResponse,
    ServedVariantOut,
    Timings,
)
from app.errors import ServiceError
from app.serving.names import describe_names
from app.serving.registry import LoadedVariant
from app.serving.service import Classification, ClassifierService
from app.settings import Settings

router = APIRouter()


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


FALLBACK_HEADER = "X-Variant-Fallback"
PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The predictions.",
        "headers": {
            FALLBACK_HEADER: {
                "description": "Only with fallback=nearest when another variant answered: "
                'nearest; asked="..."; served="<variant>".',
                "schema": {"type": "string"},
            }
        },
    },
    401: _err("API key required (only when MOBILENET_API_KEY is set)."),
    404: _err(
        "The model/width/resolution/variant asked for is not loaded; the message lists what "
        "is and names the nearest loaded variants."
    ),
    413: _err("Upload over MOBILENET_MAX_UPLOAD_BYTES, or image over MOBILENET_MAX_PIXELS."),
    415: _err("Not an image, or a format other than JPEG, PNG, WebP, BMP, GIF, TIFF."),
    422: _err(
        "Corrupt or truncated image, empty upload, malformed form, a bad parameter, or "
        "parameters that contradict each other (code conflicting_parameters)."
    ),
    500: _err("Inference failed for this request's batch (logged with the request id)."),
    503: _err("Queue full (see Retry-After), still loading, or shutting down."),
    504: _err("The request's deadline passed before its batch ran."),
}
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "The image."}
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "format": "binary"},
                        }
                    },
                }
            }
        },
    }
}

ModelQ = Annotated[
    str | None,
    Query(
        description="v1, v2, v3 (best V3 loaded), v3-small or v3-large. "
        + describe_names()
        + " Default: the most accurate loaded model (that has the width/resolution asked).",
        examples=["v3", "mobilenet_v2", "MobileNetV3Small", "mobilenet_v1_0.5_160"],
    ),
]
WidthQ = Annotated[
    float | None,
    Query(
        gt=0,
        le=2,
        description="Width multiplier alpha (e.g. 0.25, 0.5, 0.75, 1.0); default: "
        "the widest loaded for the model. Without a model: the most accurate model that has it.",
    ),
]
ResolutionQ = Annotated[
    int | None,
    Query(
        ge=32,
        le=1024,
        description="Input resolution; default: the highest loaded for the model and width.",
    ),
]
VariantQ = Annotated[
    str | None,
    Query(
        description="A variant name from GET /models (v1-0.5-160) or a release name "
        "(mobilenet_v1_0.5_160_quant, v3-small_224_1.0_uint8), any case. With model/width/"
        "resolution too, they must agree (422 otherwise).",
    ),
]
FallbackQ = Annotated[
    Literal["none", "nearest"] | None,
    Query(
        description="nearest: when the width/resolution/variant asked is not loaded, serve "
        "the nearest loaded one (never of another model than asked; header X-Variant-Fallback and "
        "variant.fallback say so) instead of a 404. Default none.",
    ),
]
TopkQ = Annotated[int, Query(ge=1, le=20, description="How many classes to return (1-20).")]


@dataclass(frozen=True)
class VariantChoice:
    """The query parameters that pick a variant, shared by both predict routes."""

    model: str | None
    width: float | None
    resolution: int | None
    variant: str | None
    fallback: str | None = None
    response: Response | None = None  # where a fallback is announced (X-Variant-Fallback)

    def resolve(self, service: ClassifierService) -> LoadedVariant:
        target = service.resolve(
            model=self.model,
            width=self.width,
            resolution=self.resolution,
            variant=self.variant,
            fallback=self.fallback,
        )
        if target.fallback is not None and self.response is not None:
            self.response.headers[FALLBACK_HEADER] = target.fallback.header()
        return target


async def variant_choice(
    response: Response,
    model: ModelQ = None,
    width: WidthQ = None,
    resolution: ResolutionQ = None,
    variant: VariantQ = None,
    fallback: FallbackQ = None,
) -> VariantChoice:
    """``async`` so FastAPI runs it inline, not in its thread pool (see app.api.deps)."""
    return VariantChoice(model, width, resolution, variant, fallback, response)


ChoiceDep = Annotated[VariantChoice, Depends(variant_choice)]


def variant_out(v: LoadedVariant) -> ServedVariantOut:
    s = v.spec
    fallback = v.fallback
    return ServedVariantOut(
        name=s.name,
        model=s.arch,
        width=s.width,
        resolution=s.resolution,
        origin=s.origin,
        backend=v.backend.name,
        device=v.backend.device,
        precision=v.backend.precision,
        fallback=FallbackOut(**dataclasses.asdict(fallback)) if fallback else None,
    )


def _predictions(c: Classification) -> list[PredictionOut]:
    return [
        PredictionOut(index=p.index, label=p.label, score=round(p.score, 6)) for p in c.predictions
    ]


def _timings(c: Classification, start: float) -> Timings:
    return Timings(
        decode_ms=round(c.decode_ms, 3),
        queue_ms=round(c.queue_ms, 3),
        inference_ms=round(c.inference_ms, 3),
        total_ms=round((time.perf_counter() - start) * 1000, 3),
    )


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, coro):
    """Await ``coro`` in this request's task; if the client disconnects first, cancel it
    (so no compute is wasted) and return None. One watcher task per request: the work
    itself is not wrapped in a task of its own."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(request)
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await coro
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from outside (shutdown): not ours to swallow
        task.uncancel()
        return None
    finally:
        watcher.cancel()


def _record(request: Request, route: str, model: str, status: int, start: float) -> None:
    m = request.app.state.service.metrics
    m.requests.labels(route, model, str(status)).inc()
    m.latency.labels("total", model).observe(time.perf_counter() - start)


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=PREDICT_ERRORS,
    openapi_extra=IMAGE_BODY,
    dependencies=[AuthDep],
    tags=["classify"],
    summary="Classify one image",
)
async def predict(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
    choice: ChoiceDep,
    topk: TopkQ = 5,
) -> Any:
    """Classify an uploaded image (multipart field `file`, or a raw `image/*` body).

    `curl -F file=@cat.jpg 'http://127.0.0.1:8000/predict?model=v3'`
    """
    return await classify_upload(request, service, settings, deadline, choice, topk)


async def classify_upload(
    request: Request,
    service: ClassifierService,
    settings: Settings,
    deadline: float,
    choice: VariantChoice,
    topk: int,
) -> Response | PredictResponse:
    """POST /predict once its parameters are known: by FastAPI (``predict``) or by the
    fast path for plain requests (``app.api.fast_predict``)."""
    start = time.perf_counter()
    # A variant name once resolved; before that a fixed word, never the client's text
    # (random model names would make unbounded Prometheus label series).
    label = "unresolved"
    try:
        target = choice.resolve(service)
        label = target.name
        # The inference slot is taken once the upload is in (inside classify): a body
        # still arriving holds only an upload slot (app.api.intake), so slow uploads
        # cannot lock others out. A flood is still refused before its bodies are read
        # (app.api.middleware.FastRejectMiddleware) while the variant is full.
        upload = await uploads.read_one(request, limit=settings.max_upload_bytes)
        result = await unless_disconnected(
            request, service.classify(upload.data, target, topk=topk, deadline=deadline)
        )
    except ServiceError as exc:
        _record(request, "/predict", label, status_for(exc), start)
        raise
    if result is None:  # client went away; nobody will read this
        _record(request, "/predict", label, 499, start)
        return Response(status_code=499)
    service.metrics.latency.labels("decode", label).observe(result.decode_ms / 1000)
    _record(request, "/predict", label, 200, start)
    return PredictResponse(
        request_id=request.scope["state"]["request_id"],
        variant=variant_out(result.variant),
        predictions=_predictions(result),
        batch_size=result.batch_size,
        timings=_timings(result, start),
    )


@router.post(
    "/predict/batch",
    response_model=BatchPredictResponse,
    responses=PREDICT_ERRORS,
    openapi_extra=BATCH_BODY,
    dependencies=[AuthDep],
    tags=["classify"],
    summary="Classify several images",
)
async def predict_batch(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
    choice: ChoiceDep,
    topk: TopkQ = 5,
) -> Any:
    """Classify several files (multipart fields `files`) in one request; one result each, in
    order. A bad file fails only its own item."""
    start = time.perf_counter()
    target = choice.resolve(service)
    files = await uploads.read_many(
        request, limit=settings.max_upload_bytes, max_files=settings.max_batch_files
    )

    async def one(i: int, up: uploads.Upload) -> BatchItem:
        try:
            c = await service.classify(up.data, target, topk=topk, deadline=deadline)
        except ServiceError as exc:
            return BatchItem(
                index=i,
                filename=up.filename,
                ok=False,
                error=BatchItemError(code=exc.code, message=exc.message),
            )
        return BatchItem(
            index=i,
            filename=up.filename,
            ok=True,
            predictions=_predictions(c),
            batch_size=c.batch_size,
            timings=_timings(c, start),
        )

    items = await unless_disconnected(
        request, asyncio.gather(*(one(i, f) for i, f in enumerate(files)))
    )
    if items is None:
        return Response(status_code=499)
    _record(request, "/predict/batch", target.name, 200, start)
    return BatchPredictResponse(
        request_id=request.scope["state"]["request_id"],
        variant=variant_out(target),
        results=list(items),
    )


@router.get(
    "/models", response_model=ModelsResponse, tags=["models"], summary="List the loaded variants"
)
async def models(service: ServiceDep) -> ModelsResponse:
    """Every loaded variant with its metadata, and which variant each model name means."""
    aliases = service.registry.aliases() if len(service.registry) else {}
    out = []
    for v in service.registry:
        s = v.spec
        p = s.preprocessing
        out.append(
            ModelOut(
                **variant_out(v).model_dump(),
                params=s.params,
                macs=s.macs,
                num_classes=s.num_classes,
                quantized_source=s.quantized,
                license=s.license,
                accuracy=s.accuracy.__dict__ if s.accuracy else None,
                preprocessing={
                    "size": p.size,
                    "crop": p.crop,
                    "crop_fraction": p.crop_fraction,
                    "resize_size": p.resize_size,
                    "interpolation": p.interpolation,
                    "mean": p.mean,
                    "std": p.std,
                },
                sources=[
                    {"filename": f.filename, "url": f.url, "sha256": f.sha256} for f in s.sources
                ],
                default_for=[m for m, name in aliases.items() if name == s.name],
                release_names=service.registry.release_names(v),
            )
        )
    default = service.registry.default().name if len(service.registry) else ""
    spellings = service.registry.spellings()
    return ModelsResponse(default=default, aliases=aliases, spellings=spellings, models=out)


@router.get("/healthz", response_model=HealthResponse, tags=["operations"], summary="Liveness")
async def healthz() -> HealthResponse:
    """The process is up and its event loop answers. Says nothing about the models."""
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    tags=["operations"],
    summary="Readiness",
    responses={503: {"model": ReadyResponse, "description": "Not ready; see problems."}},
)
async def readyz(service: ServiceDep) -> Any:
    """200 once every variant is loaded, warmed up and passed the golden-image check; 503
    while loading, while draining on SIGTERM, or when an inference worker is stalled."""
    ok, problems = service.ready()
    body = ReadyResponse(
        status="ready" if ok else "not_ready",
        variants=sorted(service.registry.variants),
        problems=problems,
        degraded=service.degraded(),
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text."}},
)
async def metrics(service: ServiceDep) -> Response:
    for v in service.registry:
        service.metrics.queue_depth.labels(v.name).set(v.batcher.depth)
    return Response(service.metrics.render(), media_type=service.metrics.content_type)
