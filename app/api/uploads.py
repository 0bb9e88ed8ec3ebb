"""Reading images out of a request: multipart field(s) or a raw ``image/*`` body.

Filenames are only echoed back, never used as paths. Any misuse of the form gets a 4xx
that says what is expected.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile

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


async def _form(request: Request, *, max_files: int, limit: int):
    try:
        return await request.form(max_files=max_files, max_fields=16, max_part_size=limit)
    except (asyncio.CancelledError, ServiceError):
        raise  # e.g. the body limit's PayloadTooLarge raised while the form streams in
    except Exception as exc:  # starlette raises HTTPException/MultiPartException variants
        detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
        if "too many files" in str(detail).lower():
            where = (
                "per request (MOBILENET_MAX_BATCH_FILES)"
                if max_files > 1
                else "on /predict; send several to /predict/batch"
            )
            raise InvalidRequest(
                f"too many files: at most {max_files} {where}", max_files=max_files
            ) from exc
        raise InvalidRequest(f"malformed multipart body: {detail}; {_HOW}") from exc


async def _file(value: object, field: str) -> Upload:
    if not isinstance(value, UploadFile):
        raise InvalidRequest(f"field '{field}' must be a file upload, not a text value; {_HOW}")
    return Upload(data=await value.read(), filename=value.filename)


async def read_one(request: Request, *, limit: int) -> Upload:
    ctype = _content_type(request)
    if ctype == "multipart/form-data":
        form = await _form(request, max_files=1, limit=limit)
        if FIELD not in form:
            names = ", ".join(repr(k) for k in form) or "none"
            raise InvalidRequest(
                f"multipart field 'file' is missing (fields sent: {names}); {_HOW}",
                expected_field=FIELD,
            )
        upload = await _file(form[FIELD], FIELD)
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
    form = await _form(request, max_files=max_files, limit=limit)
    values = [v for name in BATCH_FIELDS for v in form.getlist(name)]
    if not values:
        names = ", ".join(repr(k) for k in form) or "none"
        raise InvalidRequest(
            f"no 'files' fields in the form (fields sent: {names}); send "
            "-F files=@a.jpg -F files=@b.jpg"
        )
    if len(values) > max_files:
        raise InvalidRequest(f"{len(values)} files sent; at most {max_files} per request")
    return [await _file(v, "files") for v in values]
