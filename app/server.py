"""Run the app under uvicorn with graceful, observable shutdown.

On SIGTERM/SIGINT the service flips to draining first (``/readyz`` answers 503 and new
predictions are refused with 503 + Retry-After, which nginx and Kubernetes route
elsewhere), then uvicorn stops accepting connections, lets in-flight requests finish
within ``shutdown_grace_s``, and the lifespan drains every batcher before exiting 0.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import uvicorn

from app.observability.logging import configure_logging
from app.settings import Settings


class _DrainingServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the captured SIGTERM after a graceful shutdown, which makes
        # the process die by signal (143); a drained shutdown is a success: exit 0.
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    def handle_exit(self, sig: int, frame: Any) -> None:
        app = getattr(self, "_mobilenet_app", None)
        service = getattr(getattr(app, "state", None), "service", None)
        if service is not None:
            service.begin_draining()
        super().handle_exit(sig, frame)


def _fast_loops() -> dict[str, str]:
    have = importlib.util.find_spec
    return {
        "loop": "uvloop" if have("uvloop") else "asyncio",
        "http": "httptools" if have("httptools") else "h11",
    }


@contextlib.contextmanager
def _shared_metrics_dir() -> Iterator[None]:
    """A fresh ``PROMETHEUS_MULTIPROC_DIR`` for the workers (an operator's own is emptied
    of a previous run's files instead), removed afterwards if we made it."""
    from app.observability.metrics import MULTIPROC_ENV

    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.remove(os.path.join(given, name))
        yield
        return
    made = tempfile.mkdtemp(prefix="mobilenet-metrics-")
    os.environ[MULTIPROC_ENV] = made
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(made, ignore_errors=True)


def run(settings: Settings) -> None:
    """Serve until signalled. ``settings.workers > 1`` runs that many processes on one port."""
    configure_logging(json_logs=settings.log_json, level=settings.log_level)
    common: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        server_header=False,
        **_fast_loops(),
    )
    if settings.workers > 1:
        # Each worker builds its own app from the same environment, which must say how
        # many processes share the CPUs (the thread defaults divide by it) and where they
        # all write their metrics (any worker's /metrics then renders the whole server).
        os.environ["MOBILENET_WORKERS"] = str(settings.workers)
        with _shared_metrics_dir():
            uvicorn.run("app.api.app:create_app", factory=True, workers=settings.workers, **common)
        return
    from app.api import create_app

    app = create_app(settings)
    server = _DrainingServer(uvicorn.Config(app, **common))
    server._mobilenet_app = app
    server.run()
