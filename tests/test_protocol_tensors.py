"""OIP v2 tensor wire formats (app/protocols/tensors.py): every malformed tensor is a 400
that says what is wrong; well-formed ones round-trip."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from app.errors import InvalidRequest
from app.protocols.tensors import (
    array_from_json,
    array_from_raw,
    bytes_from_json,
    deserialize_bytes,
    serialize_bytes,
)


def test_bytes_round_trip_including_empty_elements() -> None:
    items = [b"", b"\x00\xff" * 3, b"cat"]
    assert deserialize_bytes(serialize_bytes(items), name="IMAGE") == items
    assert deserialize_bytes(b"", name="IMAGE") == []


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"\x05\x00", "length prefix"),
        (b"\x05\x00\x00\x00abc", "claims 5 bytes but only 3 remain"),
        (serialize_bytes([b"ok"]) + b"\x01", "length prefix"),
    ],
)
def test_truncated_bytes_tensors_are_refused(raw: bytes, needle: str) -> None:
    with pytest.raises(InvalidRequest, match=needle):
        deserialize_bytes(raw, name="IMAGE")


def test_raw_numeric_tensors_are_little_endian_row_major() -> None:
    a = np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3)
    np.testing.assert_array_equal(array_from_raw(a.tobytes(), "UINT8", [1, 2, 4, 3], name="P"), a)
    f = np.array([1.5, -2.0], dtype="<f4")
    np.testing.assert_array_equal(array_from_raw(f.tobytes(), "FP32", [2], name="P"), f)
    with pytest.raises(InvalidRequest, match="needs 24 bytes of data, got 23"):
        array_from_raw(a.tobytes()[:-1], "UINT8", [1, 2, 4, 3], name="P")
    with pytest.raises(InvalidRequest, match="negative"):
        array_from_raw(b"", "UINT8", [-1], name="P")


def test_json_numeric_tensors_flat_or_nested_and_in_range() -> None:
    want = np.array([[1, 2], [3, 255]], dtype=np.uint8)
    for data in ([1, 2, 3, 255], [[1, 2], [3, 255]]):
        np.testing.assert_array_equal(array_from_json(data, "UINT8", [2, 2], name="P"), want)
    for bad, needle in (
        ([1, 2, 3], "has 4 elements but data has 3"),
        ([1, 2, 3, 256], "integers 0-255"),
        ([1, 2, 3, -1], "integers 0-255"),
        ([1, 2, 3, 1.5], "integers 0-255"),
        ([1, 2, 3, "4"], "must be numbers"),
        ([1, 2, 3, True], "must be numbers"),
    ):
        with pytest.raises(InvalidRequest, match=needle):
            array_from_json(bad, "UINT8", [2, 2], name="P")


def test_json_bytes_elements_are_base64() -> None:
    images = [b"\x89PNG...", b"BM..."]
    text = [base64.b64encode(x).decode() for x in images]
    assert bytes_from_json(text, [2], name="IMAGE") == images
    assert bytes_from_json([[t] for t in text], [2, 1], name="IMAGE") == images
    with pytest.raises(InvalidRequest, match="not valid base64"):
        bytes_from_json(["not base64!"], [1], name="IMAGE")
    with pytest.raises(InvalidRequest, match="must be a base64 string"):
        bytes_from_json([7], [1], name="IMAGE")
    with pytest.raises(InvalidRequest, match="has 2 elements but data has 1"):
        bytes_from_json(text[:1], [2], name="IMAGE")
