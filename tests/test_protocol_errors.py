"""The one error mapping: every domain error has a status in every protocol's table."""

from __future__ import annotations

import json

import grpc
import pytest

from app import errors
from app.api.errors import (
    GRPC_STATUS_BY_CODE,
    PROTOCOL_STATUS_BY_CODE,
    STATUS_BY_CODE,
    grpc_status_for,
)
from app.protocols.routing import protocol_error

ALL_ERRORS = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.ServiceError)
]


def make(cls: type[errors.ServiceError]) -> errors.ServiceError:
    if cls is errors.Overloaded:
        return errors.Overloaded("full", retry_after=2.2)
    return cls("what went wrong")


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_domain_error_has_a_status_in_every_protocol(cls: type) -> None:
    assert cls.code in STATUS_BY_CODE
    assert cls.code in PROTOCOL_STATUS_BY_CODE
    assert grpc.StatusCode[GRPC_STATUS_BY_CODE[cls.code]]  # a real gRPC status name
    assert grpc_status_for(make(cls)) == GRPC_STATUS_BY_CODE[cls.code]


@pytest.mark.parametrize(
    ("cls", "status", "grpc_code"),
    [
        (errors.InvalidRequest, 400, "INVALID_ARGUMENT"),
        (errors.CorruptImage, 400, "INVALID_ARGUMENT"),
        (errors.UnknownModel, 404, "NOT_FOUND"),
        (errors.Unauthorized, 401, "UNAUTHENTICATED"),
        (errors.PayloadTooLarge, 413, "RESOURCE_EXHAUSTED"),
        (errors.Overloaded, 503, "UNAVAILABLE"),
        (errors.DeadlineExceeded, 504, "DEADLINE_EXCEEDED"),
        (errors.InferenceFailed, 500, "INTERNAL"),
    ],
)
def test_each_protocol_shape(cls: type, status: int, grpc_code: str) -> None:
    exc = make(cls)
    v2 = protocol_error("v2", exc)
    assert v2.status_code == status
    assert json.loads(v2.body) == {"error": exc.message}
    ts = protocol_error("torchserve", exc)
    body = json.loads(ts.body)
    assert body["code"] == status and body["message"] == exc.message
    assert body["type"].endswith("Exception")
    assert GRPC_STATUS_BY_CODE[exc.code] == grpc_code
    if cls is errors.Overloaded:
        assert v2.headers["retry-after"] == "3"  # whole seconds, rounded up
    if cls is errors.Unauthorized:
        assert v2.headers["www-authenticate"] == "Bearer"
