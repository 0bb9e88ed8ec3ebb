"""TorchServe's inference API: ``POST|PUT /predictions/{name}[/{version}]``, ``GET /ping``.

The image is the request body (``curl -T cat.jpg``, any content type) or a multipart
field ``data`` or ``file``; the answer is the top-5 as TorchServe's ``image_classifier``
handler gives it, ``{"label": probability, ...}`` from most to least likely.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from app.api.deps import AuthDep, DeadlineDep, ServiceDep, SettingsDep
from app.errors import InvalidRequest, UnknownModel
from app.protocols.routing import protocol_route

TOPK = 5
FIELDS = ("data", "file")
VERSIONS = ("1", "1.0")
_HOW = "send the image as the body (curl -T cat.jpg) or in a multipart field 'data' or 'file'"

router = APIRouter(tags=["TorchServe"], route_class=protocol_route("torchserve"))


class TorchServeError(BaseModel):
    code: int = Field(examples=[404])
    type: str = Field(examples=["ModelNotFoundException"])
    message: str


class Health(BaseModel):
    status: str = Field(examples=["Healthy"])


def _err(description: str) -> dict[str, Any]:
    return {"model": TorchServeError, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _err("No image, corrupt or unsupported image, malformed form."),
    401: _err("API key required (only when MOBILENET_API_KEY is set)."),
    404: _err("Unknown model or version."),
    413: _err("Body over MOBILENET_MAX_UPLOAD_BYTES."),
    500: _err("Inference failed for this request's batch."),
    503: _err("Overloaded (Retry-After), loading or shutting down."),
    504: _err("The deadline passed before its batch ran."),
}
# Documented: the raw image body. Also accepted, as TorchServe does: any Content-Type
# (curl -T sends none) and a multipart field 'data' or 'file' (see the description).
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image as the body (curl -T cat.jpg; any Content-Type is read as "
        "the image), or multipart/form-data with the image in a field 'data' or 'file'.",
        "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
    }
}
TOP5 = {
    "description": "The top-5 classes and their probabilities.",
    "content": {
        "application/json": {
            "schema": {"type": "object", "additionalProperties": {"type": "number"}},
            "example": {"Egyptian cat": 0.53, "tabby": 0.33, "tiger cat": 0.1},
        }
    },
}


async def _read(request: Request, limit: int) -> bytes:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=limit)
        except Exception as exc:
            if isinstance(exc, InvalidRequest):
                raise
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            if getattr(exc, "status_code", 400) == 413:
                raise
            raise InvalidRequest(f"malformed multipart body: {detail}; {_HOW}") from exc
        for field in FIELDS:
            value = form.get(field)
            if isinstance(value, UploadFile):
                data = await value.read()
                break
            if isinstance(value, str):
                data = value.encode("latin-1", "replace")
                break
        else:
            raise InvalidRequest(f"no field 'data' or 'file' in the form; {_HOW}")
    else:
        data = await request.body()
    if not data:
        raise InvalidRequest(f"the image is empty; {_HOW}")
    return data


async def _predict(
    request: Request,
    service: Any,
    settings: Any,
    deadline: float,
    name: str,
    version: str | None,
) -> Response:
    target = service.resolve_name(name)
    request.state.model = target.name
    if version is not None and version not in VERSIONS:
        raise UnknownModel(f"model {target.name} has no version {version!r}; it has 1.0")
    # As /predict: the upload is read first, then classify takes the admission slot.
    data = await _read(request, settings.max_upload_bytes)
    result = await service.classify(data, target, topk=TOPK, deadline=deadline)
    return JSONResponse({p.label: round(p.score, 6) for p in result.predictions})


PREDICT_ROUTE: dict[str, Any] = {
    "responses": {200: TOP5, **ERRORS},
    "response_class": JSONResponse,
    "openapi_extra": IMAGE_BODY,
    "dependencies": [AuthDep],
}


@router.api_route(
    "/predictions/{name}",
    methods=["POST", "PUT"],
    summary="Predict (TorchServe; PUT is curl -T)",
    **PREDICT_ROUTE,
)
async def predictions(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
    name: str,
) -> Response:
    """`curl http://127.0.0.1:8000/predictions/v3 -T cat.jpg`"""
    return await _predict(request, service, settings, deadline, name, None)


@router.api_route(
    "/predictions/{name}/{version}",
    methods=["POST", "PUT"],
    summary="Predict with a version (TorchServe)",
    **PREDICT_ROUTE,
)
async def predictions_version(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
    name: str,
    version: str,
) -> Response:
    return await _predict(request, service, settings, deadline, name, version)


@router.get(
    "/ping",
    response_model=Health,
    responses={503: {"model": Health, "description": "Unhealthy: loading or draining."}},
    summary="Health (TorchServe)",
)
async def ping(service: ServiceDep) -> Response:
    ok, _ = service.ready()
    return JSONResponse(
        {"status": "Healthy" if ok else "Unhealthy"}, status_code=200 if ok else 503
    )
