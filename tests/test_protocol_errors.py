"""The one error mapping: every domain error has a status in every protocol's table."""

from __future__ import annotations

import json

import grpc
import pytest

from app import errors
from app.api.errors import STATUS_BY_CODE, grpc_status_for, protocol_status_for
from app.protocols.routing import protocol_error

ALL_ERRORS = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.ServiceError)
]


def make(cls: type[errors.ServiceError]) -> errors.ServiceError:
    if issubclass(cls, errors.Overloaded):
        return cls("full", retry_after=2.2)
    return cls("what went wrong")


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_domain_error_has_a_status_in_every_protocol(cls: type) -> None:
    exc = make(cls)
    assert cls.code in STATUS_BY_CODE
    assert 400 <= protocol_status_for(exc) < 600
    code = grpc_status_for(exc)
    assert grpc.StatusCode[code] is not grpc.StatusCode.OK  # a real gRPC status name
    if STATUS_BY_CODE[cls.code] < 500:
        assert code != "INTERNAL", cls  # a client's mistake is never "internal"


@pytest.mark.parametrize(
    ("cls", "status", "grpc_code"),
    [
        (errors.InvalidRequest, 400, "INVALID_ARGUMENT"),
        (errors.CorruptImage, 400, "INVALID_ARGUMENT"),
        (errors.UnsupportedMediaType, 400, "INVALID_ARGUMENT"),
        (errors.ImageTooLarge, 400, "RESOURCE_EXHAUSTED"),
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
    assert grpc_status_for(exc) == grpc_code
    if cls is errors.Overloaded:
        assert v2.headers["retry-after"] == "3"  # whole seconds, rounded up
    if cls is errors.Unauthorized:
        assert v2.headers["www-authenticate"] == "Bearer"


def test_a_new_kind_of_bad_request_inherits_the_protocols_400() -> None:
    class Contradiction(errors.InvalidRequest):
        code = "contradiction"

    STATUS_BY_CODE.setdefault("contradiction", 422)
    try:
        assert protocol_status_for(Contradiction("both")) == 400
        assert grpc_status_for(Contradiction("both")) == "INVALID_ARGUMENT"
    finally:
        STATUS_BY_CODE.pop("contradiction")
