"""What every REST protocol route shares: its error shape, metrics and the API key.

``protocol_route(name)`` is a FastAPI route class: any error of a route (a domain error,
a validation error, an HTTP error) leaves in that protocol's shape, from the one mapping
in ``app.api.errors``; every answer is counted in ``mobilenet_requests`` under the
route's template (``/v2/models/{name}/infer``), so metrics tell the protocols apart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import errors
from app.api.errors import protocol_error_body, protocol_headers, protocol_status_for

log = logging.getLogger(__name__)


def protocol_error(protocol: str, exc: errors.ServiceError) -> JSONResponse:
    status = protocol_status_for(exc)
    if status >= 500 and not isinstance(
        exc, errors.Overloaded | errors.ShuttingDown | errors.NotReady | errors.DeadlineExceeded
    ):
        log.error("%s: %s", exc.code, exc.message, exc_info=exc.__cause__ or exc)
    return JSONResponse(
        protocol_error_body(protocol, status, exc.message),
        status_code=status,
        headers=protocol_headers(exc) or None,
    )


def _as_service_error(exc: Exception) -> errors.ServiceError:
    if isinstance(exc, errors.ServiceError):
        return exc
    if isinstance(exc, RequestValidationError):
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "body"))
            problems.append(f"{where}: {e.get('msg')}")
        return errors.InvalidRequest("; ".join(problems) or "invalid request")
    if isinstance(exc, StarletteHTTPException):
        err = errors.ServiceError(str(exc.detail))
        err.code = {404: "unknown_model", 413: "payload_too_large"}.get(
            exc.status_code, "invalid_request"
        )
        return err
    log.exception("unhandled error", exc_info=exc)
    return errors.ServiceError("internal error; the request id identifies it in the logs")


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused with PayloadTooLarge (in the protocol's shape, by the
    route class) from its Content-Length or as soon as it streams past ``limit``."""
    message = (
        f"request body exceeds the {limit} byte limit ({limit / 1048576:.1f} MiB, "
        "MOBILENET_MAX_UPLOAD_BYTES)"
    )
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise errors.PayloadTooLarge(message, limit_bytes=limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.PayloadTooLarge(message, limit_bytes=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def protocol_route(protocol: str) -> type[APIRoute]:
    """A route class answering errors in ``protocol``'s shape and recording metrics."""

    class ProtocolRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            template = self.path

            async def route(request: Request) -> Response:
                start = time.perf_counter()
                try:
                    response = await handler(request)
                except Exception as exc:
                    response = protocol_error(protocol, _as_service_error(exc))
                model = getattr(request.state, "model", None) or "none"
                metrics = request.app.state.metrics
                metrics.requests.labels(template, model, str(response.status_code)).inc()
                if request.method == "POST":
                    metrics.latency.labels("total", model).observe(time.perf_counter() - start)
                return response

            return route

    ProtocolRoute.__name__ = f"{protocol.title()}Route"
    return ProtocolRoute
