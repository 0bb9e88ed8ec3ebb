"""Dependencies handlers reach the app's state through (``Annotated`` aliases).

All are ``async def`` although none awaits: FastAPI runs a plain ``def`` dependency in
its thread pool, a thread hop per dependency per request that cost ~15 % of the event
loop under load (py-spy, bench/). These only read state, so they never block.
"""

from __future__ import annotations

import hmac
import re
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


# What the schema documents is exactly what is accepted: 1-600000, digits only.
TIMEOUT_HEADER_PATTERN = r"^(?:[1-9][0-9]{0,4}|[1-5][0-9]{5}|600000)$"
_TIMEOUT_HEADER_RE = re.compile(TIMEOUT_HEADER_PATTERN)


def _header_timeout_ms(value: str) -> int:
    try:
        ms = float(value)
        int(ms)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            "X-Request-Timeout must be a number of milliseconds (1-600000)"
        ) from None
    if not 1 <= ms <= 600_000:
        raise InvalidRequest("X-Request-Timeout must be between 1 and 600000 ms")
    if not _TIMEOUT_HEADER_RE.match(value):
        raise InvalidRequest("X-Request-Timeout must be whole milliseconds (1-600000), digits only")
    return int(value)


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
        str | None,
        Header(
            description="Same as timeout_ms: whole milliseconds, 1-600000.",
            # documented, not enforced by FastAPI: _header_timeout_ms says what is wrong
            json_schema_extra={"pattern": TIMEOUT_HEADER_PATTERN},
        ),
    ] = None,
) -> float:
    """Absolute ``time.monotonic()`` deadline of this request."""
    header_ms = None if x_request_timeout is None else _header_timeout_ms(x_request_timeout)
    ms = timeout_ms if timeout_ms is not None else header_ms
    return time.monotonic() + (ms if ms is not None else settings.request_timeout_ms) / 1000


AuthDep = Depends(require_api_key)
DeadlineDep = Annotated[float, Depends(deadline)]
