"""Tensor wire formats shared by OIP v2 over REST and gRPC.

OIP v2 sends a tensor either as JSON (``data``: a flat or nested list, row-major) or as
raw bytes (the REST binary extension, gRPC ``raw_*_contents``): little-endian elements,
row-major; a ``BYTES`` element is a 4-byte little-endian length and then its bytes.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from app.errors import InvalidRequest

NUMERIC_DTYPES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
DATATYPES = (*NUMERIC_DTYPES, "BYTES")
_LEN = struct.Struct("<I")


def element_count(shape: Sequence[int]) -> int:
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"tensor shape {list(shape)} has a negative dimension")
    return math.prod(shape)


def serialize_bytes(items: Iterable[bytes]) -> bytes:
    """``BYTES`` elements -> the raw form: each one length-prefixed (uint32, little-endian)."""
    return b"".join(_LEN.pack(len(x)) + x for x in items)


def deserialize_bytes(raw: bytes | memoryview, *, name: str) -> list[bytes]:
    """The raw form of a ``BYTES`` tensor -> its elements; refuses a truncated buffer."""
    out, pos, view = [], 0, memoryview(raw)
    while pos < len(view):
        if pos + 4 > len(view):
            raise InvalidRequest(
                f"input {name!r}: BYTES data ends inside an element's 4-byte length prefix"
            )
        (size,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + size > len(view):
            raise InvalidRequest(
                f"input {name!r}: BYTES element {len(out)} claims {size} bytes but only "
                f"{len(view) - pos} remain"
            )
        out.append(bytes(view[pos : pos + size]))
        pos += size
    return out


def array_from_raw(raw: bytes | memoryview, datatype: str, shape: Sequence[int], *, name: str):
    """Raw little-endian row-major bytes -> a numpy array of ``shape``."""
    dtype = np.dtype(NUMERIC_DTYPES[datatype])
    want = element_count(shape) * dtype.itemsize
    if len(raw) != want:
        raise InvalidRequest(
            f"input {name!r}: {datatype} {list(shape)} needs {want} bytes of data, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for x in data:
        out.extend(_flatten(x))
    return out


def array_from_json(data: Any, datatype: str, shape: Sequence[int], *, name: str) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) -> a numpy array of ``shape``."""
    flat = _flatten(data)
    count = element_count(shape)
    if len(flat) != count:
        raise InvalidRequest(
            f"input {name!r}: shape {list(shape)} has {count} elements but data has {len(flat)}"
        )
    dtype = np.dtype(NUMERIC_DTYPES[datatype])

    def number(x: Any) -> bool:
        if isinstance(x, bool):
            return dtype.kind == "b"
        return isinstance(x, int | float)

    if not all(number(x) for x in flat):
        raise InvalidRequest(f"input {name!r}: {datatype} data must be numbers")
    array = np.asarray(flat, dtype=np.float64)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        if array.size and (
            not np.all(array == np.floor(array)) or array.min() < info.min or array.max() > info.max
        ):
            raise InvalidRequest(
                f"input {name!r}: data does not fit {datatype} (integers {info.min}-{info.max})"
            )
    return array.astype(dtype).reshape(shape)


def bytes_from_json(data: Any, shape: Sequence[int], *, name: str) -> list[bytes]:
    """JSON ``BYTES`` data: an image cannot be a JSON string, so each element is base64."""
    flat = _flatten(data)
    count = element_count(shape)
    if len(flat) != count:
        raise InvalidRequest(
            f"input {name!r}: shape {list(shape)} has {count} elements but data has {len(flat)}"
        )
    out = []
    for i, x in enumerate(flat):
        if not isinstance(x, str):
            raise InvalidRequest(f"input {name!r}: BYTES element {i} must be a base64 string")
        try:
            out.append(base64.b64decode(x, validate=True))
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                f"input {name!r}: BYTES element {i} is not valid base64 (in JSON, send each "
                "image base64-encoded, or use the binary tensor data extension)"
            ) from None
    return out
