"""Open Inference Protocol v2 semantics shared by its REST and gRPC transports.

What a model looks like to a v2 client (metadata), which inputs it takes, and how an
infer request becomes one ``ClassifierService.infer_many`` call: each transport only
parses its wire format into ``InputTensor``/``OutputRequest`` and writes
``OutputTensor``s back.

A model takes ONE input, either
* ``IMAGE``: ``BYTES [N]`` (or ``[N, 1]``), one encoded image per element, or
* ``PIXELS``: ``UINT8 [N, H, W, 3]``, RGB already at the variant's input size;
and has one output, ``PROBABILITIES``: ``FP32 [N, 1000]``, or with the classification
extension (``"classification": k``) ``BYTES [N, k]`` strings ``"score:index:label"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app import __version__
from app.errors import InvalidRequest, UnknownModel
from app.serving.registry import LoadedVariant
from app.serving.service import ClassifierService

SERVER_NAME = "mobilenet-serve"
EXTENSIONS = ["classification", "binary_tensor_data"]
MODEL_VERSION = "1"
INPUT_IMAGE = "IMAGE"
INPUT_PIXELS = "PIXELS"
OUTPUT = "PROBABILITIES"
NUM_CLASSES = 1000


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[bytes] | np.ndarray


@dataclass
class OutputRequest:
    name: str
    classification: int | None = None
    binary: bool | None = None  # REST only: None = the request's default


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None = None  # FP32
    items: list[bytes] | None = None  # BYTES
    binary: bool = False

    def raw(self) -> bytes:
        from app.protocols.tensors import serialize_bytes

        if self.items is not None:
            return serialize_bytes(self.items)
        assert self.array is not None
        return np.ascontiguousarray(self.array, dtype="<f4").tobytes()

    def json_data(self) -> list[Any]:
        if self.items is not None:
            return [x.decode() for x in self.items]
        assert self.array is not None
        return self.array.reshape(-1).tolist()


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def check_version(version: str | None, target: LoadedVariant) -> None:
    """Every variant has exactly one version, ``1``; empty means the latest (that one)."""
    if version not in (None, "", MODEL_VERSION):
        raise UnknownModel(
            f"model {target.name} has no version {version!r}; its only version is {MODEL_VERSION}",
            versions=[MODEL_VERSION],
        )


def resolve(service: ClassifierService, name: str, version: str | None = None) -> LoadedVariant:
    target = service.resolve_name(name)
    check_version(version, target)
    return target


def model_metadata(target: LoadedVariant) -> dict[str, Any]:
    size = target.spec.preprocessing.size
    return {
        "name": target.name,
        "versions": [MODEL_VERSION],
        "platform": f"{target.backend.name}_{target.backend.precision}",
        "inputs": [
            {"name": INPUT_IMAGE, "datatype": "BYTES", "shape": [-1]},
            {"name": INPUT_PIXELS, "datatype": "UINT8", "shape": [-1, size, size, 3]},
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, NUM_CLASSES]}],
    }


def _allowed(target: LoadedVariant) -> str:
    size = target.spec.preprocessing.size
    return (
        f"{target.name} takes one input: {INPUT_IMAGE} (BYTES [N], encoded images) or "
        f"{INPUT_PIXELS} (UINT8 [N, {size}, {size}, 3], RGB pixels)"
    )


def check_input_header(
    name: str, datatype: str, shape: Sequence[int], target: LoadedVariant, max_images: int
) -> None:
    """Refuse a wrong input before its data is parsed, saying what the model takes."""
    if name == INPUT_IMAGE:
        ok_shape = len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)
        if datatype != "BYTES" or not ok_shape:
            raise InvalidRequest(
                f"input {name!r} must be BYTES [N] (one encoded image per element), got "
                f"{datatype} {list(shape)}; {_allowed(target)}"
            )
    elif name == INPUT_PIXELS:
        size = target.spec.preprocessing.size
        if datatype != "UINT8" or list(shape[1:]) != [size, size, 3] or len(shape) != 4:
            raise InvalidRequest(
                f"input {name!r} must be UINT8 [N, {size}, {size}, 3] for {target.name}, got "
                f"{datatype} {list(shape)}"
            )
    else:
        raise InvalidRequest(f"unknown input {name!r}; {_allowed(target)}")
    if not shape or not 1 <= shape[0] <= max_images:
        raise InvalidRequest(
            f"input {name!r}: batch size must be 1-{max_images} (MOBILENET_MAX_BATCH_FILES), "
            f"got shape {list(shape)}"
        )


def check_inputs(inputs: Sequence[Any], target: LoadedVariant) -> None:
    if len(inputs) != 1:
        raise InvalidRequest(f"expected exactly 1 input, got {len(inputs)}; {_allowed(target)}")


def classification_k(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= NUM_CLASSES:
        raise InvalidRequest(
            f"parameter 'classification' must be an integer 1-{NUM_CLASSES}, got {value!r}"
        )
    return value


def check_outputs(outputs: Sequence[OutputRequest]) -> list[OutputRequest]:
    """The requested outputs (all of them when none is named)."""
    if not outputs:
        return [OutputRequest(OUTPUT)]
    for out in outputs:
        if out.name != OUTPUT:
            raise InvalidRequest(f"unknown output {out.name!r}; the only output is {OUTPUT}")
    return list(outputs)


async def infer(
    service: ClassifierService,
    target: LoadedVariant,
    tensor: InputTensor,
    outputs: Sequence[OutputRequest],
    *,
    deadline: float | None,
) -> list[OutputTensor]:
    """Run one infer request through the core pipeline (one admission, one batcher request)."""
    if tensor.name == INPUT_IMAGE:
        assert isinstance(tensor.data, list)
        for i, data in enumerate(tensor.data):
            if not data:
                raise InvalidRequest(f"input {INPUT_IMAGE!r}: image {i} is empty")
        result = await service.infer_many(target, images=tensor.data, deadline=deadline)
    else:
        assert isinstance(tensor.data, np.ndarray)
        result = await service.infer_many(target, pixels=tensor.data, deadline=deadline)
    probs = result.probabilities
    n = probs.shape[0]
    out = []
    for req in outputs:
        if req.classification is None:
            out.append(OutputTensor(req.name, "FP32", [n, probs.shape[1]], array=probs))
            continue
        k = req.classification
        items = [
            f"{p.score:f}:{p.index}:{p.label}".encode()
            for row in probs
            for p in service.top_k(row, k)
        ]
        out.append(OutputTensor(req.name, "BYTES", [n, min(k, probs.shape[1])], items=items))
    return out
