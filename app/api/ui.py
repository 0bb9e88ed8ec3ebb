"""The docs pages and the web page at ``/``, all served from the package: no CDN.

``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) load their JS/CSS from ``app/static/vendor``
(vendored from npm, see its README.md); ``/`` is a small vanilla-JS page in
``app/static``. ReDoc's bundle hard-codes one external image (the Redocly logo in its
sidebar footer, fetched from cdn.redoc.ly); ``/redoc/redoc.standalone.js`` serves the
vendored file with that URL swapped for an empty ``data:`` URL, which ReDoc's own error
handler then hides. The vendored file itself stays byte-identical to the npm package.
Each page gets a Content-Security-Policy that only allows this origin, so a browser
refuses any request elsewhere even if an asset tried to make one.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

R = TypeVar("R", bound=Response)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
VENDOR = "/static/vendor"
REDOC_JS = STATIC_DIR / "vendor" / "redoc" / "redoc.standalone.js"
REDOC_CDN_LOGO = 'src:"https://cdn.redoc.ly/redoc/logo-mini.svg"'

# Swagger UI and ReDoc start themselves from an inline <script> and set inline styles;
# ReDoc runs its search index in a blob: worker. Nothing may leave this origin.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'self'"
)
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'self'"
)

SWAGGER_PARAMETERS = {
    "validatorUrl": None,  # no badge fetched from validator.swagger.io
    "tryItOutEnabled": True,
    "displayRequestDuration": True,
    "persistAuthorization": True,
    "defaultModelsExpandDepth": 0,
}


def _with_csp(response: R, policy: str) -> R:
    response.headers["Content-Security-Policy"] = policy
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@functools.cache
def _redoc_js() -> tuple[bytes, str]:
    """The ReDoc bundle without its one external URL, and its ETag."""
    js = REDOC_JS.read_text("utf-8").replace(REDOC_CDN_LOGO, 'src:"data:,"').encode()
    return js, '"' + hashlib.sha256(js).hexdigest()[:32] + '"'


def install_ui(app: FastAPI) -> None:
    """Mount ``/static`` and add ``/``, ``/docs`` and ``/redoc`` (none are in the schema)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        response = FileResponse(STATIC_DIR / "index.html", media_type="text/html")
        response.headers["Cache-Control"] = "no-cache"
        return _with_csp(response, PAGE_CSP)

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=app.title + " - Swagger UI",
            swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{VENDOR}/swagger-ui/favicon-32x32.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters=SWAGGER_PARAMETERS,
        )
        return _with_csp(page, DOCS_CSP)

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=app.title + " - ReDoc",
            redoc_js_url="/redoc/redoc.standalone.js",
            redoc_favicon_url="/static/favicon.svg",
            with_google_fonts=False,
        )
        return _with_csp(page, DOCS_CSP)

    @app.get("/redoc/redoc.standalone.js", include_in_schema=False)
    async def redoc_js(request: Request) -> Response:
        js, etag = _redoc_js()
        headers = {"ETag": etag, "Cache-Control": "public, max-age=3600"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(js, media_type="text/javascript", headers=headers)
