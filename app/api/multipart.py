"""multipart/form-data straight into memory, with python-multipart's parser.

Starlette's form parser spools every file part through a ``SpooledTemporaryFile`` behind
an ``UploadFile`` (an awaited write per chunk, a seek, an awaited read): on the predict
routes, whose uploads are already capped in size by the body limit
(``MOBILENET_MAX_UPLOAD_BYTES``), that bookkeeping was ~10 % of the event loop's time
per request (py-spy under wrk, issue 17). Here each part is a ``bytearray`` filled by the
same python-multipart state machine, with Starlette's limits (files, fields, text field
size) and its error wording.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


class MultipartError(ValueError):
    """A malformed form, or one over a limit (the message says which)."""


@dataclass(slots=True)
class Part:
    name: str
    filename: str | None  # None: a text field (no ``filename`` in its Content-Disposition)
    data: bytearray = field(default_factory=bytearray)

    @property
    def is_file(self) -> bool:
        return self.filename is not None


def _decode(value: bytes, charset: str) -> str:
    try:
        return value.decode(charset)
    except UnicodeDecodeError:
        return value.decode("latin-1")


class _Collector:
    """python-multipart callbacks building ``Part``s."""

    def __init__(self, charset: str, *, max_files: int, max_fields: int, max_field_size: int):
        self.parts: list[Part] = []
        self._charset = charset
        self._max_files, self._max_fields = max_files, max_fields
        self._max_field_size = max_field_size
        self._files = self._fields = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._part: Part | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self._disposition, self._part = b"", None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise MultipartError('The Content-Disposition header field "name" must be provided.')
        name = _decode(options[b"name"], self._charset)
        if b"filename" in options:
            self._files += 1
            if self._files > self._max_files:
                raise MultipartError(
                    f"Too many files. Maximum number of files is {self._max_files}."
                )
            self._part = Part(name, _decode(options[b"filename"], self._charset))
        else:
            self._fields += 1
            if self._fields > self._max_fields:
                raise MultipartError(
                    f"Too many fields. Maximum number of fields is {self._max_fields}."
                )
            self._part = Part(name, None)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None:  # data before any headers: the parser reports it as malformed
            return
        if not part.is_file and len(part.data) + (end - start) > self._max_field_size:
            raise MultipartError(
                f"Part exceeded maximum size of {int(self._max_field_size / 1024)}KB."
            )
        part.data += memoryview(data)[start:end]

    def on_part_end(self) -> None:
        if self._part is not None:
            self.parts.append(self._part)
        self._part = None


async def parse(
    content_type: str,
    chunks: AsyncIterator[bytes],
    *,
    max_files: int,
    max_fields: int = 16,
    max_field_size: int = 1024 * 1024,
) -> list[Part]:
    """The parts of a multipart body arriving as ``chunks``, in order.

    Raises ``MultipartError`` for a malformed body or one over a limit; whatever reading
    ``chunks`` raises (a body over the upload limit, a client gone) passes through."""
    _, params = parse_options_header(content_type)
    charset = params.get(b"charset", b"utf-8")
    try:
        charset_name = codecs.lookup(charset.decode("latin-1")).name
    except LookupError:
        charset_name = "latin-1"
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultipartError("Missing boundary in multipart.")
    collector = _Collector(
        charset_name, max_files=max_files, max_fields=max_fields, max_field_size=max_field_size
    )
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise MultipartError("Invalid multipart data.") from exc
    return collector.parts
