"""Open Inference Protocol v2 over gRPC: ``inference.GRPCInferenceService`` on grpcio.

Served from the same process and event loop as the HTTP API (started and stopped by the
app's lifespan), on ``MOBILENET_GRPC_PORT``, sharing the service: same variants, same
admission control, same batchers. ServerLive, ServerReady, ModelReady, ServerMetadata,
ModelMetadata and ModelInfer; inputs in ``raw_input_contents`` or typed ``contents``,
outputs always in ``raw_output_contents`` (as Triton answers). The deadline is the
call's gRPC deadline; the API key comes as ``authorization: Bearer <key>`` metadata.

The messages come from ``inference.pb``, the descriptor set compiled from
``inference.proto`` (the command is in that file), loaded into a private descriptor
pool: no generated code, and no clash with a client library's copy of the same proto.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import cache
from importlib import resources
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from app.api.errors import grpc_status_for
from app.errors import InvalidRequest, ServiceError, Unauthorized, UnknownModel
from app.observability.logging import request_id_var
from app.protocols import oip_v2
from app.protocols.tensors import (
    array_from_raw,
    deserialize_bytes,
)
from app.serving.service import ClassifierService
from app.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
)
_model: contextvars.ContextVar[str | None] = contextvars.ContextVar("grpc_model", default=None)
_ID_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


@cache
def messages() -> dict[str, Any]:
    """``{"ModelInferRequest": class, ...}`` from the committed descriptor set."""
    data = resources.files("app.protocols").joinpath("inference.pb").read_bytes()
    pool = descriptor_pool.DescriptorPool()
    for proto in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(proto)
    service = pool.FindServiceByName(SERVICE)
    out = {}
    for method in service.methods:
        for desc in (method.input_type, method.output_type):
            out[desc.name] = message_factory.GetMessageClass(desc)
    return out


def _param(params: Any, key: str) -> Any:
    if key not in params:
        return None
    p = params[key]
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class InferenceServicer:
    """The six RPCs, each a translation onto ``ClassifierService``."""

    def __init__(self, service: ClassifierService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.msg = messages()

    # --- health and metadata ----------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return self.msg["ServerLiveResponse"](live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return self.msg["ServerReadyResponse"](ready=self.service.ready()[0])

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            oip_v2.resolve(self.service, request.name, request.version)
        except UnknownModel:
            return self.msg["ModelReadyResponse"](ready=False)
        return self.msg["ModelReadyResponse"](ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return self.msg["ServerMetadataResponse"](**oip_v2.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        target = oip_v2.resolve(self.service, request.name, request.version)
        _model.set(target.name)
        meta = oip_v2.model_metadata(target)
        cls = self.msg["ModelMetadataResponse"]
        return cls(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[cls.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[cls.TensorMetadata(**t) for t in meta["outputs"]],
        )

    # --- infer ------------------------------------------------------------------------
    def _check_key(self, context: Any) -> None:
        if not self.settings.api_key:
            return
        auth = _metadata(context).get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), self.settings.api_key.encode()):
            raise Unauthorized(
                "missing or wrong API key; send metadata 'authorization: Bearer <key>'"
            )

    def _deadline(self, request: Any, context: Any) -> float:
        deadline = time.monotonic() + self.settings.request_timeout_ms / 1000
        remaining = context.time_remaining()
        if remaining is not None:
            deadline = min(deadline, time.monotonic() + remaining)
        timeout = _param(request.parameters, "timeout")
        if timeout is not None:
            if isinstance(timeout, bool | str | float) or timeout <= 0:
                raise InvalidRequest(
                    f"parameter 'timeout' must be microseconds (> 0), got {timeout!r}"
                )
            deadline = min(deadline, time.monotonic() + timeout / 1e6)
        return deadline

    def _input(self, request: Any, target: Any) -> oip_v2.InputTensor:
        oip_v2.check_inputs(request.inputs, target)
        inp = request.inputs[0]
        shape = list(inp.shape)
        oip_v2.check_input_header(
            inp.name, inp.datatype, shape, target, self.settings.max_batch_files
        )
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            raise InvalidRequest(
                f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
            )
        if inp.datatype == "BYTES":
            data: Any = (
                deserialize_bytes(raw[0], name=inp.name)
                if raw
                else list(inp.contents.bytes_contents)
            )
            if len(data) != shape[0]:
                raise InvalidRequest(f"input {inp.name!r}: shape {shape} but {len(data)} elements")
        elif raw:
            data = array_from_raw(raw[0], inp.datatype, shape, name=inp.name)
        else:
            values = np.asarray(inp.contents.uint_contents, dtype=np.int64)
            if values.size != int(np.prod(shape)) or (values.size and values.max() > 255):
                raise InvalidRequest(
                    f"input {inp.name!r}: uint_contents must hold {int(np.prod(shape))} "
                    "values 0-255 (or send raw_input_contents)"
                )
            data = values.astype(np.uint8).reshape(shape)
        return oip_v2.InputTensor(inp.name, inp.datatype, shape, data)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self._check_key(context)
        target = oip_v2.resolve(self.service, request.model_name, request.model_version)
        _model.set(target.name)
        tensor = self._input(request, target)
        wanted = []
        for out in request.outputs:
            k = _param(out.parameters, "classification")
            wanted.append(
                oip_v2.OutputRequest(
                    out.name, classification=None if k is None else oip_v2.classification_k(k)
                )
            )
        wanted = oip_v2.check_outputs(wanted)
        deadline = self._deadline(request, context)
        outputs = await oip_v2.infer(self.service, target, tensor, wanted, deadline=deadline)
        cls = self.msg["ModelInferResponse"]
        return cls(
            model_name=target.name,
            model_version=oip_v2.MODEL_VERSION,
            id=request.id,
            outputs=[
                cls.InferOutputTensor(name=o.name, datatype=o.datatype, shape=o.shape)
                for o in outputs
            ],
            raw_output_contents=[o.raw() for o in outputs],
        )


def _wrap(
    name: str, fn: Callable[[Any, Any], Awaitable[Any]], service: ClassifierService
) -> Callable[[Any, Any], Awaitable[Any]]:
    """Request id, error mapping (app.api.errors) and metrics around one RPC."""
    route = f"/{SERVICE}/{name}"

    async def rpc(request: Any, context: Any) -> Any:
        incoming = _metadata(context).get("x-request-id", "")
        ok_id = 0 < len(incoming) <= 128 and set(incoming) <= _ID_OK
        rid = incoming if ok_id else uuid.uuid4().hex
        token = request_id_var.set(rid)
        start, status = time.perf_counter(), "OK"
        model_token = _model.set(None)
        try:
            await context.send_initial_metadata((("x-request-id", rid),))
            return await fn(request, context)
        except ServiceError as exc:
            status = grpc_status_for(exc)
            if status == "INTERNAL":
                log.error("%s: %s", exc.code, exc.message, exc_info=exc.__cause__ or exc)
            await context.abort(grpc.StatusCode[status], exc.message)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            status = "INTERNAL"
            log.exception("unhandled error in %s", route)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        finally:
            metrics = service.metrics
            model = _model.get() or "none"
            _model.reset(model_token)
            metrics.requests.labels(route, model, status).inc()
            if name == "ModelInfer":
                metrics.latency.labels("total", model).observe(time.perf_counter() - start)
            request_id_var.reset(token)

    return rpc


class GrpcServer:
    """grpc.aio server on the app's event loop, sharing its ``ClassifierService``."""

    def __init__(self, service: ClassifierService, settings: Settings) -> None:
        self.settings = settings
        servicer = InferenceServicer(service, settings)
        msg = servicer.msg
        handlers = {}
        for name in METHODS:
            method = getattr(servicer, name)
            req_cls = msg[f"{name}Request"]
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                _wrap(name, method, service),
                request_deserializer=req_cls.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )
        limit = settings.max_upload_bytes + 64 * 1024  # the images plus the request's fields
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ]
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = 0

    async def start(self) -> int:
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            self.port = 0
            cause = exc
        else:
            cause = None
        if not self.port:
            raise OSError(
                f"cannot listen for gRPC on {address} (in use?); set MOBILENET_GRPC_PORT to "
                "a free port, or 0 to turn gRPC off"
            ) from cause
        await self.server.start()
        log.info("OIP v2 gRPC listening on %s:%d", self.settings.host, self.port)
        return self.port

    async def stop(self, grace_s: float) -> None:
        await self.server.stop(grace_s)
