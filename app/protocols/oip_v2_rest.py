"""Open Inference Protocol v2 over HTTP/REST (KServe v2, NVIDIA Triton).

Health, server and model metadata, readiness and ``infer``, with the classification and
binary tensor data extensions. An ``infer`` body is JSON, or (binary extension) a JSON
header of ``Inference-Header-Content-Length`` bytes followed by the tensors' raw bytes,
in input order, for every input whose ``parameters.binary_data_size`` says so. Answers
are JSON, or the same layout when an output asks for ``binary_data``.
"""

from __future__ import annotations

import time
import zlib
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from app.api.deps import AuthDep, DeadlineDep, ServiceDep, SettingsDep
from app.errors import InvalidRequest, PayloadTooLarge
from app.protocols import oip_v2
from app.protocols.common import EXAMPLE_PNG, NoNulls
from app.protocols.routing import protocol_route, read_limited
from app.protocols.tensors import (
    array_from_json,
    array_from_raw,
    bytes_from_json,
    deserialize_bytes,
)
from app.serving.service import ClassifierService
from app.settings import Settings

HEADER_LENGTH = "Inference-Header-Content-Length"

router = APIRouter(
    prefix="/v2", tags=["OIP v2 (KServe v2, Triton)"], route_class=protocol_route("v2")
)


# --- the documented shapes (also what a request is validated against) ----------------------
class Parameters(NoNulls):
    """The parameters this server reads; others are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, StrictBool | StrictInt | float | str]
    classification: StrictInt | None = Field(
        None, ge=1, le=oip_v2.NUM_CLASSES, description="Output: return the top-k as strings."
    )
    binary_data: StrictBool | None = Field(None, description="Output: raw bytes, not JSON.")
    binary_data_size: StrictInt | None = Field(
        None, ge=0, description="Input: its raw bytes follow the JSON header."
    )
    binary_data_output: StrictBool | None = Field(
        None, description="Request: default of binary_data for every output."
    )
    timeout: StrictInt | None = Field(
        None, ge=1, description="Request: deadline in microseconds (only ever shortens it)."
    )


class RequestInput(NoNulls):
    model_config = ConfigDict(extra="forbid")
    name: Literal["IMAGE", "PIXELS"] = Field(examples=["IMAGE"])
    shape: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, max_length=4, examples=[[1]])
    datatype: Literal["BYTES", "UINT8"] = Field(examples=["BYTES"])
    parameters: Parameters | None = None
    data: list[Any] | None = Field(
        None, description="Row-major elements (BYTES: base64 strings); absent when binary."
    )


class RequestOutput(NoNulls):
    model_config = ConfigDict(extra="forbid")
    name: Literal["PROBABILITIES"] = Field(examples=["PROBABILITIES"])
    parameters: Parameters | None = None


class InferenceRequest(NoNulls):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "inputs": [
                        {"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": [EXAMPLE_PNG]}
                    ],
                    "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 5}}],
                }
            ]
        },
    )
    id: str | None = None
    model_name: str | None = Field(
        None, description="Sent by KServe's client; the path's model is the one used."
    )
    model_version: str | None = Field(None, description="As model_name: the path decides.")
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestOutput] | None = Field(None, max_length=1)


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, int] | None = Field(None, description="binary_data_size")
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str = Field(examples=["v3-small-1.0-224"])
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class V2Error(BaseModel):
    error: str = Field(examples=["unknown model 'v9'; use a variant name ..."])


def _err(description: str) -> dict[str, Any]:
    return {"model": V2Error, "description": description}


MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    404: _err("Unknown model or version."),
    503: _err("Still loading or shutting down."),
}
INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _err("Malformed request, wrong input, corrupt or unsupported image."),
    401: _err("API key required (only when MOBILENET_API_KEY is set)."),
    413: _err("Body over MOBILENET_MAX_UPLOAD_BYTES."),
    500: _err("Inference failed for this request's batch."),
    504: _err("The deadline (parameters.timeout, timeout_ms) passed before its batch ran."),
    **MODEL_ERRORS,
}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "JSON. With the binary tensor data extension: the JSON header of "
        f"{HEADER_LENGTH} bytes (that request header), then the inputs' raw bytes.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}
        },
    }
}
BINARY_ANSWER = {
    "application/octet-stream": {
        "schema": {"type": "string", "format": "binary"},
        "description": f"When an output is binary: a JSON InferenceResponse of {HEADER_LENGTH} "
        "bytes, then the raw output tensors.",
    }
}


# --- health and metadata ------------------------------------------------------------------
@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return oip_v2.server_metadata()


@router.get("/health/live", response_model=Live, summary="Server liveness")
async def live() -> Live:
    return Live(live=True)


@router.get(
    "/health/ready",
    response_model=Ready,
    summary="Server readiness",
    responses={503: {"model": Ready, "description": "Not ready (loading or draining)."}},
)
async def ready(service: ServiceDep) -> Response:
    ok, _ = service.ready()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get(
    "/models/{name}", response_model=ModelMetadata, responses=MODEL_ERRORS, summary="Model metadata"
)
async def model_metadata(request: Request, service: ServiceDep, name: str) -> dict[str, Any]:
    return _metadata(request, service, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    responses=MODEL_ERRORS,
    summary="Model metadata (a version)",
)
async def model_version_metadata(
    request: Request, service: ServiceDep, name: str, version: str
) -> dict[str, Any]:
    return _metadata(request, service, name, version)


def _metadata(
    request: Request, service: ClassifierService, name: str, version: str | None
) -> dict[str, Any]:
    target = oip_v2.resolve(service, name, version)
    request.state.model = target.name
    return oip_v2.model_metadata(target)


@router.get(
    "/models/{name}/ready", response_model=ModelReady, responses=MODEL_ERRORS, summary="Model ready"
)
async def model_ready(request: Request, service: ServiceDep, name: str) -> ModelReady:
    return _ready(request, service, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReady,
    responses=MODEL_ERRORS,
    summary="Model ready (a version)",
)
async def model_version_ready(
    request: Request, service: ServiceDep, name: str, version: str
) -> ModelReady:
    return _ready(request, service, name, version)


def _ready(
    request: Request, service: ClassifierService, name: str, version: str | None
) -> ModelReady:
    target = oip_v2.resolve(service, name, version)
    request.state.model = target.name
    return ModelReady(name=target.name, ready=not target.batcher.stalled(threshold_s=30.0))


# --- infer --------------------------------------------------------------------------------
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Decompress a request body, never past ``limit`` bytes (a zip bomb stops there)."""
    inflater = zlib.decompressobj(WBITS[encoding])
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"the body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(
            f"the {encoding} body inflates past the {limit} byte limit "
            "(MOBILENET_MAX_UPLOAD_BYTES)",
            limit_bytes=limit,
        )
    if not inflater.eof:
        raise InvalidRequest(f"the {encoding} body is truncated")
    return out


def _split_body(body: bytes, header_length: str | None) -> tuple[InferenceRequest, memoryview]:
    if header_length is None:
        json_part, rest = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise InvalidRequest(
                f"{HEADER_LENGTH} must be the JSON header's length in bytes (0-{len(body)}), "
                f"got {header_length!r}"
            )
        json_part, rest = body[:n], body[n:]
    try:
        request = InferenceRequest.model_validate(orjson.loads(json_part))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the inference request is not valid JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidRequest(f"invalid inference request: {problems}") from None
    return request, memoryview(rest)


def _parse_input(
    req: RequestInput, binary: memoryview, offset: int, target: Any, max_images: int
) -> tuple[oip_v2.InputTensor, int]:
    oip_v2.check_input_header(req.name, req.datatype, req.shape, target, max_images)
    size = req.parameters.binary_data_size if req.parameters else None
    if size is not None:
        if offset + size > len(binary):
            raise InvalidRequest(
                f"input {req.name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes of tensor data left)"
            )
        raw = binary[offset : offset + size]
        offset += size
        if req.datatype == "BYTES":
            data: list[bytes] | Any = deserialize_bytes(raw, name=req.name)
            if len(data) != req.shape[0]:
                raise InvalidRequest(
                    f"input {req.name!r}: shape {req.shape} but {len(data)} BYTES elements"
                )
        else:
            data = array_from_raw(raw, req.datatype, req.shape, name=req.name)
    elif req.data is None:
        raise InvalidRequest(f"input {req.name!r} has neither data nor binary_data_size")
    elif req.datatype == "BYTES":
        data = bytes_from_json(req.data, req.shape, name=req.name)
    else:
        data = array_from_json(req.data, req.datatype, req.shape, name=req.name)
    return oip_v2.InputTensor(req.name, req.datatype, list(req.shape), data), offset


def _deadline(params: Parameters | None, default: float) -> float:
    """``parameters.timeout`` (microseconds, as Triton's clients send it) can only shorten
    the request's deadline."""
    if params is None or params.timeout is None:
        return default
    return min(default, time.monotonic() + params.timeout / 1e6)


def _encode(request: InferenceRequest, target: Any, outputs: list[oip_v2.OutputTensor]) -> Response:
    body: dict[str, Any] = {"model_name": target.name, "model_version": oip_v2.MODEL_VERSION}
    if request.id is not None:
        body["id"] = request.id
    tensors, raw = [], []
    for out in outputs:
        tensor: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if out.binary:
            data = out.raw()
            tensor["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            tensor["data"] = out.json_data()
        tensors.append(tensor)
    body["outputs"] = tensors
    header = orjson.dumps(body)
    if not raw:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *raw]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


INFER_ROUTE: dict[str, Any] = {
    "response_model": InferenceResponse,
    "responses": {**INFER_ERRORS, 200: {"content": BINARY_ANSWER}},
    "openapi_extra": INFER_BODY,
    "dependencies": [AuthDep],
}
HeaderLength = Annotated[str | None, Header(include_in_schema=False)]


@router.post("/models/{name}/infer", summary="Infer", **INFER_ROUTE)
async def infer(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
    name: str,
    inference_header_content_length: HeaderLength = None,
) -> Response:
    """Classify a batch of images: `IMAGE` (BYTES [N]) or `PIXELS` (UINT8 [N, H, W, 3])."""
    return await _infer(
        request, service, settings, deadline, name, None, inference_header_content_length
    )


@router.post("/models/{name}/versions/{version}/infer", summary="Infer (a version)", **INFER_ROUTE)
async def infer_version(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
    name: str,
    version: str,
    inference_header_content_length: HeaderLength = None,
) -> Response:
    return await _infer(
        request, service, settings, deadline, name, version, inference_header_content_length
    )


async def _infer(
    request: Request,
    service: ClassifierService,
    settings: Settings,
    deadline: float,
    name: str,
    version: str | None,
    header_length: str | None,
) -> Response:
    target = oip_v2.resolve(service, name, version)
    request.state.model = target.name
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity", *WBITS):
        raise InvalidRequest(
            f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or identity"
        )
    body = await read_limited(request, settings.max_upload_bytes)
    if encoding in WBITS:  # tritonclient's request_compression_algorithm
        body = _inflate(body, encoding, settings.max_upload_bytes)
    req, binary = _split_body(body, header_length)
    oip_v2.check_inputs(req.inputs, target)
    tensor, used = _parse_input(req.inputs[0], binary, 0, target, settings.max_batch_files)
    if used != len(binary):
        raise InvalidRequest(
            f"{len(binary) - used} bytes of binary data follow the tensors the header describes"
        )
    default_binary = bool(req.parameters and req.parameters.binary_data_output)
    wanted = []
    for out in req.outputs or []:
        params = out.parameters or Parameters()
        wanted.append(
            oip_v2.OutputRequest(
                out.name, classification=params.classification, binary=params.binary_data
            )
        )
    wanted = oip_v2.check_outputs(wanted)
    outputs = await oip_v2.infer(
        service, target, tensor, wanted, deadline=_deadline(req.parameters, deadline)
    )
    for out, want in zip(outputs, wanted, strict=True):
        out.binary = default_binary if want.binary is None else want.binary
    return _encode(req, target, outputs)
