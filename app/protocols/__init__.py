"""The serving ecosystem's protocols, each a thin adapter onto ``ClassifierService``.

* ``oip_v2_rest``: Open Inference Protocol v2 over HTTP (KServe v2, Triton);
* ``oip_v2_grpc``: the same over gRPC (``inference.GRPCInferenceService``);
* ``kserve_v1``: KServe v1 / TensorFlow Serving REST (``:predict``);
* ``torchserve``: TorchServe's inference API (``/predictions``, ``/ping``).

Each module only translates requests, answers and errors; admission, deadlines and
batching are the service's. Error statuses live in ``app.api.errors``.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel


def install_protocols(app: FastAPI) -> list[type[BaseModel]]:
    """Mount the REST protocols; returns the request models their docs refer to."""
    from app.protocols import kserve_v1, oip_v2_rest, torchserve

    app.include_router(oip_v2_rest.router)
    app.include_router(kserve_v1.router)
    app.include_router(torchserve.router)
    return [oip_v2_rest.InferenceRequest, kserve_v1.PredictRequest]
