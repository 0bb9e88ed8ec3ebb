"""The serving ecosystem's protocols, each a thin adapter onto ``ClassifierService``.

* ``oip_v2_rest``: Open Inference Protocol v2 over HTTP (KServe v2, Triton);
* ``oip_v2_grpc``: the same over gRPC (``inference.GRPCInferenceService``);
* ``kserve_v1``: KServe v1 / TensorFlow Serving REST (``:predict``);
* ``torchserve``: TorchServe's inference API (``/predictions``, ``/ping``).

Each module only translates requests, answers and errors; admission, deadlines and
batching are the service's. Error statuses live in ``app.api.errors``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

BODY_PREFIXES = ("/v1/", "/v2/")  # REST routes whose bodies the upload limit covers


def install_protocols(app: FastAPI) -> None:
    """Mount the REST protocols and document their request schemas."""
    from app.protocols import kserve_v1, oip_v2_rest, torchserve

    app.include_router(oip_v2_rest.router)
    app.include_router(kserve_v1.router)
    app.include_router(torchserve.router)
    extra_schemas = [oip_v2_rest.InferenceRequest, kserve_v1.PredictRequest]
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in extra_schemas:
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
