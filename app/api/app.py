"""The FastAPI application factory.

Nothing heavy happens at import: ``create_app`` only wires things up. The lifespan
checks that weights exist (start-up fails with instructions if none do), then loads,
warms and checks the models in the background so ``/healthz`` answers at once and
``/readyz`` says 503 until they are ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.api.errors import install_error_handlers, send_error
from app.api.explain_routes import router as explain_router
from app.api.fast_predict import FastPredictRoute
from app.api.intake import UploadCounter, UploadGuardMiddleware, UploadLimits
from app.api.middleware import BodyLimitMiddleware, FastRejectMiddleware, RequestIdMiddleware
from app.api.openapi import install_openapi
from app.api.routes import router
from app.errors import WeightsError
from app.observability.metrics import Metrics, multiproc_dir, ready_workers
from app.serving.service import ClassifierService
from app.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Classify images with pretrained **MobileNet V1, V2 and V3** models.

Each request picks the model (`v1`, `v2`, `v3`, `v3-small`, `v3-large`) and the width
multiplier; the input resolution comes with the weights. Requests are batched
dynamically per variant. `GET /models` lists what this server has loaded.

    curl -F file=@cat.jpg 'http://127.0.0.1:8000/predict?model=v3'

Every error is JSON: `{"error": {"code", "message", "request_id", ...}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` defaults to the environment (``MOBILENET_*``)."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = ClassifierService(settings, metrics=app.state.metrics)
        app.state.service = service
        if not service.variant_names():
            raise WeightsError(
                f"no model weights found in {Path(settings.weights_dir).resolve()}. Fetch them "
                "with `mobilenet-serve weights fetch` (add MOBILENET_WEIGHTS_MIRROR=DIR to copy "
                "them from a local mirror) or `make weights`, then start again."
            )
        # Process-wide, so set while serving and restored after (tests build many apps).
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
        grpc_server = None
        if settings.grpc_port:  # OIP v2 over gRPC, on this loop, sharing the service
            from app.protocols.oip_v2_grpc import GrpcServer

            grpc_server = GrpcServer(service, settings)
            await grpc_server.start()
        loading = asyncio.create_task(_load(service))
        app.state.loading = loading
        heartbeat = asyncio.create_task(_heartbeat(service))
        if (directory := multiproc_dir()) is not None and ready_workers(directory):
            # A worker replacing one that died, beside ready siblings: it takes no
            # connection (uvicorn accepts only after start-up) until it can answer them,
            # so the replica keeps answering 200 instead of handing clients to a worker
            # that would say 503 while it loads.
            await asyncio.wait({loading})
        try:
            yield
        finally:
            service.begin_draining()
            heartbeat.cancel()
            if grpc_server is not None:
                await grpc_server.stop(settings.shutdown_grace_s)
            if not loading.done():
                loading.cancel()
            await service.close()
            sys.setswitchinterval(switch_interval)

    app = FastAPI(
        title="MobileNet classification service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # Our own Prometheus metrics cover this; FastAPI's native OpenTelemetry hooks cost
        # an environment lookup per request (~20% of the event loop under a flood).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        openapi_tags=[
            {"name": "classify", "description": "Upload images, get ImageNet classes."},
            {"name": "explain", "description": "Which regions of the image an answer rests on."},
            {"name": "models", "description": "What is loaded."},
            {"name": "operations", "description": "Health, readiness, metrics."},
        ],
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(explain_router)
    # Plain POST /predict requests skip FastAPI's dependency solver (same handler after).
    app.router.routes.insert(0, FastPredictRoute())
    from app.protocols import install_protocols

    # before the UI, whose mount catches every other path
    install_openapi(app, settings, install_protocols(app))
    from app.api.ui import install_ui

    install_ui(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes)
    app.add_middleware(
        UploadGuardMiddleware,
        counter=UploadCounter(
            UploadLimits(
                max_uploads=settings.max_uploads,
                max_per_client=settings.max_uploads_per_client,
                timeout_s=settings.upload_timeout_s,
                min_rate=settings.upload_min_rate_bytes,
                grace_s=settings.upload_grace_s,
            ),
            observe=app.state.metrics.observe_upload,
        ),
        respond=send_error,
    )
    app.add_middleware(
        FastRejectMiddleware,
        service=lambda: getattr(app.state, "service", None),
        hold_s=settings.retry_after_hold_s,
    )
    app.add_middleware(RequestIdMiddleware)
    return app


HEARTBEAT_S = 1.0


async def _heartbeat(service: ClassifierService) -> None:
    """Report this process alive and its readiness about once a second; with several
    workers the others read it (``/readyz`` of any of them sees a wedged sibling), and
    the shared gauges that are sampled rather than counted stay fresh."""
    while True:
        service.heartbeat()
        await asyncio.sleep(HEARTBEAT_S)


async def _load(service: ClassifierService) -> None:
    try:
        await service.start()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        service.readiness.failed = f"loading failed: {exc}"
        log.exception("loading the models failed; /readyz stays 503")
