"""KServe v1 / TensorFlow Serving REST: ``POST /v1/models/{name}:predict``, ``:explain``,
model status.

A request carries base64 images the way TF Serving's REST API encodes binary values:
``{"instances": [{"b64": "..."}]}`` or named, ``{"instances": [{"image_bytes": {"b64":
"..."}}]}`` (columnar ``{"inputs": ...}`` too). All the instances of a request are one
request to the batcher. Each prediction is the top-5: ``classes`` (ImageNet indices),
``labels`` and ``scores``; an instance's ``key`` is echoed back. ``:explain`` takes the
same body and answers ``{"explanations": [...]}``, one ``/explain`` JSON answer per
instance (occlusion saliency, app.serving.explain).
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.api.deps import AuthDep, DeadlineDep, ServiceDep, SettingsDep
from app.api.explain_routes import explanation_out
from app.api.schemas import ExplainResponse
from app.errors import InvalidRequest
from app.protocols.common import EXAMPLE_PNG, NoNulls
from app.protocols.routing import protocol_route, read_limited
from app.serving.explain import explain

TOPK = 5
_HOW = (
    'send {"instances": [{"b64": "<base64 image>"}]} or '
    '{"instances": [{"image_bytes": {"b64": "<base64 image>"}}]}'
)

router = APIRouter(
    prefix="/v1/models", tags=["KServe v1 / TF Serving"], route_class=protocol_route("v1")
)


class PredictRequest(NoNulls):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}]},
    )
    signature_name: str | None = Field(None, description="Accepted and ignored (one signature).")
    instances: list[Any] | None = Field(
        None,
        min_length=1,
        description='Row format: one image per instance, {"b64": ...} or {"image_bytes": '
        '{"b64": ...}}, optionally with a "key" echoed back.',
        examples=[[{"image_bytes": {"b64": EXAMPLE_PNG}}]],
    )
    inputs: dict[str, list[Any]] | list[Any] | None = Field(
        None, description='Columnar format: {"image_bytes": [{"b64": ...}]} or a list.'
    )


class V1Prediction(BaseModel):
    classes: list[int] = Field(examples=[[285, 281, 282, 287, 728]])
    labels: list[str] = Field(
        examples=[["Egyptian cat", "tabby", "tiger cat", "lynx", "plastic bag"]]
    )
    scores: list[float] = Field(examples=[[0.53, 0.33, 0.1, 0.01, 0.01]])
    key: Any | None = None


class V1PredictResponse(BaseModel):
    predictions: list[V1Prediction] | None = None
    outputs: list[V1Prediction] | None = Field(None, description="Answer to a columnar request.")


class VersionStatus(BaseModel):
    version: str
    state: str
    status: dict[str, str]


class ModelStatus(BaseModel):
    name: str
    ready: bool
    model_version_status: list[VersionStatus]


class V1Error(BaseModel):
    error: str


def _err(description: str) -> dict[str, Any]:
    return {"model": V1Error, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _err("Malformed request, bad base64, corrupt or unsupported image."),
    401: _err("API key required (only when MOBILENET_API_KEY is set)."),
    404: _err("Unknown model."),
    413: _err("Body over MOBILENET_MAX_UPLOAD_BYTES."),
    500: _err("Inference failed for this request's batch."),
    503: _err("Overloaded (Retry-After), loading or shutting down."),
    504: _err("The deadline passed before its batch ran."),
}


def _b64(value: Any, where: str) -> bytes:
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            data = base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{where}: 'b64' is not valid base64") from None
        if not data:
            raise InvalidRequest(f"{where}: the image is empty")
        return data
    raise InvalidRequest(f"{where}: expected an image as {{'b64': '<base64>'}}; {_HOW}")


def _instance(value: Any, where: str) -> tuple[bytes, Any]:
    """One row: ``{"b64": ...}`` or ``{"<input name>": {"b64": ...}, "key": ...}``."""
    if isinstance(value, dict) and "b64" in value:
        return _b64(value, where), None
    if isinstance(value, dict):
        key = value.get("key")
        named = {k: v for k, v in value.items() if k != "key"}
        if len(named) == 1:
            ((name, image),) = named.items()
            return _b64(image, f"{where}.{name}"), key
    raise InvalidRequest(f"{where}: expected one image; {_HOW}")


def _images(body: PredictRequest) -> tuple[list[bytes], list[Any], bool]:
    """The request's images, their keys, and whether it was columnar."""
    if (body.instances is None) == (body.inputs is None):
        raise InvalidRequest(f"send exactly one of 'instances' and 'inputs'; {_HOW}")
    if body.instances is not None:
        pairs = [_instance(v, f"instances[{i}]") for i, v in enumerate(body.instances)]
        return [p[0] for p in pairs], [p[1] for p in pairs], False
    inputs = body.inputs
    if isinstance(inputs, dict) and len(inputs) == 1 and "b64" not in inputs:
        ((name, inputs),) = inputs.items()
    else:
        name = "inputs"
    rows = inputs if isinstance(inputs, list) else [inputs]
    return [_b64(v, f"{name}[{i}]") for i, v in enumerate(rows)], [None] * len(rows), True


def _parse(raw: bytes) -> PredictRequest:
    try:
        return PredictRequest.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request is not valid JSON: {exc}; {_HOW}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidRequest(f"invalid request: {problems}; {_HOW}") from None


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}
        },
    }
}


@router.post(
    "/{name}:predict",
    openapi_extra=PREDICT_BODY,
    response_model=V1PredictResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    dependencies=[AuthDep],
    summary="Predict (TF Serving / KServe v1)",
)
async def predict(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
    name: str,
) -> dict[str, Any]:
    """Classify base64 images, TF Serving style (any Content-Type is read as JSON, as
    TF Serving does: `curl -d` sends a form type)."""
    target = service.resolve_name(name)
    request.state.model = target.name
    body = _parse(await read_limited(request, settings.max_upload_bytes))
    images, keys, columnar = _images(body)
    if not 1 <= len(images) <= settings.max_batch_files:
        raise InvalidRequest(
            f"send 1-{settings.max_batch_files} instances (MOBILENET_MAX_BATCH_FILES), "
            f"got {len(images)}"
        )
    result = await service.infer_many(target, images=images, deadline=deadline)
    rows = []
    for probs, key in zip(result.probabilities, keys, strict=True):
        top = service.top_k(probs, TOPK)
        row: dict[str, Any] = {
            "classes": [p.index for p in top],
            "labels": [p.label for p in top],
            "scores": [round(p.score, 6) for p in top],
        }
        if key is not None:
            row["key"] = key
        rows.append(row)
    return {"outputs": rows} if columnar else {"predictions": rows}


class V1ExplainResponse(BaseModel):
    explanations: list[ExplainResponse]


@router.post(
    "/{name}:explain",
    openapi_extra=PREDICT_BODY,
    response_model=V1ExplainResponse,
    responses=ERRORS,
    dependencies=[AuthDep],
    summary="Explain (KServe v1): occlusion saliency per instance",
)
async def explain_instances(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
    name: str,
) -> V1ExplainResponse:
    """KServe's explain verb: the same body as `:predict`; each instance gets what `POST
    /explain` answers (top-5 and a 14 x 14 saliency map of its top class, 50 forwards).
    Instances run one after another: an explain holds half its variant's admission, so
    running them side by side would only refuse the second."""
    start = time.perf_counter()
    target = service.resolve_name(name)
    request.state.model = target.name
    images, _, _ = _images(_parse(await read_limited(request, settings.max_upload_bytes)))
    if not 1 <= len(images) <= settings.max_batch_files:
        raise InvalidRequest(
            f"send 1-{settings.max_batch_files} instances (MOBILENET_MAX_BATCH_FILES), "
            f"got {len(images)}"
        )
    rid = request.scope.get("state", {}).get("request_id") or ""
    out = []
    for data in images:
        e = await explain(service, data, target, None, deadline)
        out.append(explanation_out(rid, e, start))
    return V1ExplainResponse(explanations=out)


@router.get(
    "/{name}",
    response_model=ModelStatus,
    responses={404: ERRORS[404], 503: ERRORS[503]},
    summary="Model status (TF Serving / KServe v1)",
)
async def status(request: Request, service: ServiceDep, name: str) -> ModelStatus:
    target = service.resolve_name(name)
    request.state.model = target.name
    stalled = target.batcher.stalled(threshold_s=30.0)
    return ModelStatus(
        name=target.name,
        ready=not stalled,
        model_version_status=[
            VersionStatus(
                version="1",
                state="UNAVAILABLE" if stalled else "AVAILABLE",
                status={"error_code": "OK", "error_message": ""},
            )
        ],
    )
