"""The one place where domain errors become HTTP responses.

Every error body has the same shape, ``{"error": {"code", "message", "request_id",
...details}}``, whether it comes from our code, from request validation or from
Starlette itself (unknown route, wrong method, malformed multipart).
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Scope, Send

from app import errors
from app.observability.logging import request_id_var

log = logging.getLogger(__name__)

STATUS_BY_CODE: dict[str, int] = {
    errors.InvalidRequest.code: 422,
    errors.ConflictingParameters.code: 422,
    errors.UnknownModel.code: 404,
    errors.Unauthorized.code: 401,
    errors.UnsupportedMediaType.code: 415,
    errors.CorruptImage.code: 422,
    errors.PayloadTooLarge.code: 413,
    errors.ImageTooLarge.code: 413,
    errors.Overloaded.code: 503,
    errors.TooManyUploads.code: 429,
    errors.UploadTooSlow.code: 408,
    errors.DeadlineExceeded.code: 504,
    errors.ShuttingDown.code: 503,
    errors.NotReady.code: 503,
    errors.InferenceFailed.code: 500,
    errors.WeightsError.code: 500,
    errors.ServiceError.code: 500,
}
# --- the other protocols' shapes (app/protocols): same domain errors, their conventions.
# OIP v2 (KServe v2 / Triton), KServe v1 / TF Serving and TorchServe answer a bad request
# with 400 (the image is one tensor element of the request, not the request's media
# type); an error class inherits its parent's override (a new kind of InvalidRequest too).
PROTOCOL_STATUS_OVERRIDES: dict[str, int] = {
    errors.InvalidRequest.code: 400,
    errors.UnsupportedMediaType.code: 400,
    errors.CorruptImage.code: 400,
    errors.ImageTooLarge.code: 400,
}
# TorchServe's ``{"code", "type", "message"}``: the exception type it names per status.
TORCHSERVE_TYPE_BY_STATUS: dict[int, str] = {
    400: "BadRequestException",
    401: "InvalidKeyException",
    404: "ModelNotFoundException",
    405: "MethodNotAllowedException",
    408: "RequestTimeoutException",
    413: "RequestEntityTooLargeException",
    429: "ServiceUnavailableException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
    504: "RequestTimeoutException",
}
# gRPC status code names (grpc.StatusCode members, so this module never imports grpc),
# from the HTTP status as the gRPC spec pairs them: every domain error has one.
GRPC_STATUS_BY_HTTP: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def protocol_status_for(exc: errors.ServiceError) -> int:
    """HTTP status of a domain error on the OIP v2, KServe v1 and TorchServe routes."""
    for cls in type(exc).__mro__:
        code = getattr(cls, "code", None)
        if code in PROTOCOL_STATUS_OVERRIDES:
            return PROTOCOL_STATUS_OVERRIDES[code]
    return status_for(exc)


def grpc_status_for(exc: errors.ServiceError) -> str:
    """gRPC status code name of a domain error (``INTERNAL`` for anything unmapped)."""
    return GRPC_STATUS_BY_HTTP.get(status_for(exc), "INTERNAL")


def protocol_headers(exc: errors.ServiceError) -> dict[str, str]:
    """Retry-After / WWW-Authenticate, as on our own routes."""
    if isinstance(exc, errors.Overloaded):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if isinstance(exc, errors.ShuttingDown | errors.NotReady):
        return {"Retry-After": "1"}
    if isinstance(exc, errors.Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    return {}


def protocol_error_body(protocol: str, status: int, message: str) -> dict[str, object]:
    """The error body each protocol's clients parse: ``{"error": msg}`` (OIP v2, KServe v1,
    TF Serving) or ``{"code", "type", "message"}`` (TorchServe)."""
    if protocol == "torchserve":
        kind = TORCHSERVE_TYPE_BY_STATUS.get(status, "InternalServerException")
        return {"code": status, "type": kind, "message": message}
    return {"error": message}


_CODE_BY_HTTP = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


class ErrorDetail(BaseModel):
    code: str = Field(examples=["unknown_model"])
    message: str = Field(examples=["width 0.3 is not loaded for v1; loaded widths: 0.25, 0.5"])
    request_id: str | None = Field(None, examples=["9f1c2e4b7a0d4c3e"])
    model_config = {"extra": "allow"}


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx response."""

    error: ErrorDetail


def status_for(exc: errors.ServiceError) -> int:
    return STATUS_BY_CODE.get(exc.code, 500)


def error_response(
    status: int, code: str, message: str, *, headers: dict | None = None, **details: object
) -> JSONResponse:
    body = {
        "error": {"code": code, "message": message, "request_id": request_id_var.get(), **details}
    }
    return JSONResponse(body, status_code=status, headers=headers)


def response_for(exc: errors.ServiceError) -> JSONResponse:
    status = status_for(exc)
    headers = {}
    if isinstance(exc, errors.Overloaded):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        if isinstance(exc, errors.TooManyUploads):
            headers["Connection"] = "close"  # a slow body is not worth waiting for
    elif isinstance(exc, errors.ShuttingDown | errors.NotReady):
        headers["Retry-After"] = "1"
    elif isinstance(exc, errors.Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(exc, errors.UploadTooSlow):
        headers["Connection"] = "close"  # the rest of its body is not worth waiting for
    if status >= 500 and not isinstance(
        exc, errors.Overloaded | errors.ShuttingDown | errors.NotReady | errors.DeadlineExceeded
    ):
        log.error("%s: %s", exc.code, exc.message, exc_info=exc.__cause__ or exc)
    details = {k: v for k, v in exc.details.items() if k not in ("code", "message")}
    return error_response(status, exc.code, exc.message, headers=headers or None, **details)


async def send_error(scope: Scope, send: Send, exc: errors.ServiceError) -> None:
    """Answer ``exc`` from ASGI middleware, in the same shape as the routes' errors."""

    async def no_body() -> Message:
        return {"type": "http.disconnect"}

    await response_for(exc)(scope, no_body, send)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.ServiceError)
    async def _service_error(_: Request, exc: errors.ServiceError) -> JSONResponse:
        return response_for(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "body"))
            problems.append(f"{where}: {e.get('msg')}")
        return error_response(
            422,
            "invalid_request",
            "; ".join(problems) or "invalid request",
            errors=[{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()],
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_BY_HTTP.get(exc.status_code, "http_error")
        return error_response(
            exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(
            500, "internal_error", "internal error; the request id identifies it in the logs"
        )
