"""Dependencies handlers reach the app's state through (``Annotated`` aliases).

All are ``async def`` although none awaits: FastAPI runs a plain ``def`` dependency in
its thread pool, a thread hop per dependency per request that cost ~15 % of the event
loop under load (py-spy, bench/). These only read state, so they never block.
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import InvalidRequest, Unauthorized
from app.serving.service import ClassifierService
from app.settings import Settings


async def get_service(request: Request) -> ClassifierService:
    return request.app.state.service


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


ServiceDep = Annotated[ClassifierService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


_bearer = HTTPBearer(auto_error=False, description="MOBILENET_API_KEY, when the server sets one.")


async def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> None:
    """When MOBILENET_API_KEY is set, predict routes need ``Authorization: Bearer <key>``."""
    if not settings.api_key:
        return
    token = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
        raise Unauthorized("missing or wrong API key; send 'Authorization: Bearer <key>'")


async def deadline(
    settings: SettingsDep,
    timeout_ms: Annotated[
        int | None,
        Query(
            ge=1,
            le=600_000,
            description="Give up (504) if not answered within this many "
            "ms; default MOBILENET_REQUEST_TIMEOUT_MS.",
        ),
    ] = None,
    x_request_timeout: Annotated[
        str | None, Header(description="Same as timeout_ms, in ms.")
    ] = None,
) -> float:
    """Absolute ``time.monotonic()`` deadline of this request."""
    ms = timeout_ms
    if ms is None and x_request_timeout is not None:
        try:
            ms = int(float(x_request_timeout))
        except (ValueError, OverflowError):
            raise InvalidRequest(
                "X-Request-Timeout must be a number of milliseconds (1-600000)"
            ) from None
        if not 1 <= ms <= 600_000:
            raise InvalidRequest("X-Request-Timeout must be between 1 and 600000 ms")
    return time.monotonic() + (ms if ms is not None else settings.request_timeout_ms) / 1000


AuthDep = Depends(require_api_key)
DeadlineDep = Annotated[float, Depends(deadline)]
