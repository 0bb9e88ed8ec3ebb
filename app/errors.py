"""Domain errors: raised anywhere in the service, mapped to HTTP in one place (`app.api.errors`).

Each error carries a stable machine-readable ``code``, a human message that says what
was wrong and what is allowed, and optional ``details`` for clients. Only
``app.api.errors.STATUS_BY_CODE`` knows about HTTP status codes.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class of every error a client may see."""

    code: str = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def prefix(self, where: str) -> None:
        """Say which part of a request failed (``image 2 of 4``), in the message and in
        ``str(exc)`` alike."""
        self.message = f"{where}: {self.message}"
        self.args = (self.message,)


# --- the request ------------------------------------------------------------------------
class InvalidRequest(ServiceError):
    """Malformed request: missing field, wrong content type, bad parameter value."""

    code = "invalid_request"


class ConflictingParameters(InvalidRequest):
    """Two parameters ask for different variants (``variant=v1-0.5-160&model=v3``):
    serving either would silently ignore the other. ``details["parameters"]`` names both."""

    code = "conflicting_parameters"


class UnknownModel(ServiceError):
    """The requested model/width/resolution is not among the loaded variants."""

    code = "unknown_model"


class Unauthorized(ServiceError):
    """Missing or wrong API key."""

    code = "unauthorized"


# --- the image --------------------------------------------------------------------------
class UnsupportedMediaType(ServiceError):
    """The upload is not an image in one of the accepted formats."""

    code = "unsupported_media_type"


class CorruptImage(ServiceError):
    """The upload claims an accepted format but cannot be decoded (truncated, damaged)."""

    code = "corrupt_image"


class PayloadTooLarge(ServiceError):
    """The upload is larger than the byte limit."""

    code = "payload_too_large"


class ImageTooLarge(ServiceError):
    """The image has more pixels than the decompression-bomb limit."""

    code = "image_too_large"


# --- capacity and time ------------------------------------------------------------------
class Overloaded(ServiceError):
    """The variant's queue is full; ``retry_after`` (seconds) says when to come back."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class TooManyUploads(Overloaded):
    """This client address already has as many uploads in progress as it may."""

    code = "too_many_uploads"


class UploadTooSlow(ServiceError):
    """The request body arrived slower than the minimum rate, or not within the upload
    time limit; the connection is closed after the answer."""

    code = "upload_too_slow"


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before its batch ran."""

    code = "deadline_exceeded"


class ShuttingDown(ServiceError):
    """The server is draining and takes no new work."""

    code = "shutting_down"


class NotReady(ServiceError):
    """The server has not finished loading or warming up its models."""

    code = "not_ready"


class InferenceFailed(ServiceError):
    """The model raised while running this request's batch."""

    code = "inference_failed"


# --- weights ----------------------------------------------------------------------------
class WeightsError(ServiceError):
    """A weights file is missing, corrupt or fails its sha256 check."""

    code = "weights_error"
