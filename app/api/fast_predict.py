"""POST /predict without FastAPI's dependency solver, for plain requests.

FastAPI resolves the predict route's parameters through its dependency graph (the
service, settings, deadline, variant choice, API key: five dependencies, seven query and
header parameters) on every request: ~15 % of the event loop's time under wrk, on the
loop that gates every answer (issue 17). This route sits first in the router and matches
only a request whose query is plain: known keys, each once, with values of an obvious
form inside the route's bounds, and no API key to check. It then runs the very same
``routes.classify_upload`` as the FastAPI route. Anything else (an unknown key, ``topk=0``,
``width=abc``, a repeated key, a server with ``MOBILENET_API_KEY``) does not match here
and falls through to the FastAPI route, whose validation answers exactly as documented.
The OpenAPI schema is the FastAPI route's: this one is not an ``APIRoute``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request, Response
from starlette.routing import BaseRoute, Match, NoMatchFound, request_response
from starlette.types import Receive, Scope, Send

from app.api.deps import _header_timeout_ms
from app.api.routes import VariantChoice, classify_upload

PATH = "/predict"
_NUMBER = re.compile(r"\d{1,3}(?:\.\d{1,6})?")
_INT = re.compile(r"\d{1,6}")

# key -> parse(value) returning the typed value, or None when the full route must judge it
# (the same bounds as the FastAPI route's Query declarations in app.api.routes/deps).
_PARSERS: dict[str, Callable[[str], Any]] = {
    "model": lambda v: v or None,
    "variant": lambda v: v or None,
    "fallback": lambda v: v if v in ("none", "nearest") else None,
    "width": lambda v: float(v) if _NUMBER.fullmatch(v) and 0 < float(v) <= 2 else None,
    "resolution": lambda v: int(v) if _INT.fullmatch(v) and 32 <= int(v) <= 1024 else None,
    "topk": lambda v: int(v) if _INT.fullmatch(v) and 1 <= int(v) <= 20 else None,
    "timeout_ms": lambda v: int(v) if _INT.fullmatch(v) and 1 <= int(v) <= 600_000 else None,
}


def plain_query(query_string: bytes) -> dict[str, Any] | None:
    """The typed parameters of a plain query, or None (the FastAPI route decides)."""
    if not query_string:
        return {}
    params: dict[str, Any] = {}
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        parse = _PARSERS.get(key)
        if parse is None or key in params:
            return None
        parsed = parse(value)
        if parsed is None:
            return None
        params[key] = parsed
    return params


async def _endpoint(request: Request) -> Response:
    params: dict[str, Any] = request.scope["fast_predict.params"]
    settings = request.app.state.settings
    service = request.app.state.service
    header = request.headers.get("x-request-timeout")
    ms = params.get("timeout_ms")
    if ms is None and header is not None:
        ms = _header_timeout_ms(header)
    elif header is not None:
        _header_timeout_ms(header)  # still checked, as the FastAPI route does
    deadline = (
        request.scope["fast_predict.t0"]
        + (ms if ms is not None else settings.request_timeout_ms) / 1000
    )
    # Collects X-Variant-Fallback, as the FastAPI route's sub-response does.
    headers = SimpleNamespace(headers={})
    choice = VariantChoice(
        params.get("model"),
        params.get("width"),
        params.get("resolution"),
        params.get("variant"),
        params.get("fallback"),
        headers,
    )
    result = await classify_upload(
        request, service, settings, deadline, choice, params.get("topk", 5)
    )
    if isinstance(result, Response):
        return result
    response = Response(result.model_dump_json(), media_type="application/json")
    response.headers.update(headers.headers)
    return response


class FastPredictRoute(BaseRoute):
    """Matches POST /predict with a plain query on a server without an API key."""

    def __init__(self) -> None:
        self._app = request_response(_endpoint)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            return Match.NONE, {}
        if scope["app"].state.settings.api_key:
            return Match.NONE, {}
        params = plain_query(scope.get("query_string", b""))
        if params is None:
            return Match.NONE, {}
        return Match.FULL, {"fast_predict.params": params, "fast_predict.t0": time.monotonic()}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)
