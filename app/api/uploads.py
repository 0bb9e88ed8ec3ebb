"""Reading images out of a request: multipart field(s) or a raw ``image/*`` body.

Filenames are only echoed back, never used as paths. Any misuse of the form gets a 4xx
that says what is expected.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request

from app.api import multipart
from app.errors import InvalidRequest, ServiceError, UnsupportedMediaType

FIELD = "file"
BATCH_FIELDS = ("files", "file")
_HOW = (
    "send multipart/form-data with the image in a field named 'file' "
    "(curl -F file=@cat.jpg) or the raw image bytes with an image/* Content-Type"
)


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str | None


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _form(request: Request, *, max_files: int, limit: int) -> list[multipart.Part]:
    try:
        return await multipart.parse(
            request.headers.get("content-type", ""),
            request.stream(),
            max_files=max_files,
            max_fields=16,
            max_field_size=limit,
        )
    except (asyncio.CancelledError, ServiceError):
        raise  # e.g. the body limit's PayloadTooLarge raised while the form streams in
    except multipart.MultipartError as exc:
        detail = str(exc)
        if "too many files" in detail.lower():
            where = (
                "per request (MOBILENET_MAX_BATCH_FILES)"
                if max_files > 1
                else "on /predict; send several to /predict/batch"
            )
            raise InvalidRequest(
                f"too many files: at most {max_files} {where}", max_files=max_files
            ) from exc
        raise InvalidRequest(f"malformed multipart body: {detail}; {_HOW}") from exc


def _file(part: multipart.Part, field: str) -> Upload:
    if not part.is_file:
        raise InvalidRequest(f"field '{field}' must be a file upload, not a text value; {_HOW}")
    return Upload(data=bytes(part.data), filename=part.filename)


def _names(parts: list[multipart.Part]) -> str:
    return ", ".join(repr(n) for n in dict.fromkeys(p.name for p in parts)) or "none"


async def read_one(request: Request, *, limit: int) -> Upload:
    ctype = _content_type(request)
    if ctype == "multipart/form-data":
        parts = await _form(request, max_files=1, limit=limit)
        mine = [p for p in parts if p.name == FIELD]
        if not mine:
            raise InvalidRequest(
                f"multipart field 'file' is missing (fields sent: {_names(parts)}); {_HOW}",
                expected_field=FIELD,
            )
        upload = _file(mine[-1], FIELD)
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        upload = Upload(data=await request.body(), filename=None)
    else:
        raise UnsupportedMediaType(
            f"Content-Type {ctype or '(none)'!r} is not accepted; {_HOW}",
            content_type=ctype or None,
        )
    if not upload.data:
        raise InvalidRequest(f"the uploaded image is empty; {_HOW}")
    return upload


async def read_many(request: Request, *, limit: int, max_files: int) -> list[Upload]:
    if _content_type(request) != "multipart/form-data":
        raise UnsupportedMediaType(
            "/predict/batch takes multipart/form-data with one or more "
            "'files' fields (curl -F files=@a.jpg -F files=@b.jpg)"
        )
    parts = await _form(request, max_files=max_files, limit=limit)
    values = [p for name in BATCH_FIELDS for p in parts if p.name == name]
    if not values:
        raise InvalidRequest(
            f"no 'files' fields in the form (fields sent: {_names(parts)}); send "
            "-F files=@a.jpg -F files=@b.jpg"
        )
    if len(values) > max_files:
        raise InvalidRequest(f"{len(values)} files sent; at most {max_files} per request")
    return [_file(v, "files") for v in values]
