"""Small pieces the REST protocol modules share."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator

EXAMPLE_PNG = (  # a 2x2 PNG, so the documented examples are requests the server answers
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGM8UaHBwMDAxMDAwMDAAAARqgFsecZ2JgAAAABJRU5ErkJggg=="
)


class NoNulls(BaseModel):
    """A JSON request body where an optional field is left out, never ``null``.

    The documented schema has no ``null`` either (``app.api.openapi`` drops it), so what
    the server refuses is exactly what the schema does not allow."""

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = sorted(str(k) for k, v in data.items() if v is None)
            if nulls:
                raise ValueError(
                    f"{', '.join(nulls)} must not be null; leave out a field you do not send"
                )
        return data
