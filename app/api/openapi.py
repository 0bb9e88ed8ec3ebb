"""``/openapi.json`` says exactly what this server does, so generated clients and contract
fuzzers can trust it.

* Request bodies that routes parse themselves (binary extensions, raw images) name their
  JSON schemas by ``$ref``; the models behind those refs are added to the components.
* The request models passed in are documented as validated: an optional field is left
  out, never ``null`` (``app.protocols.common.NoNulls`` refuses nulls).
* An optional query parameter or header is absent or a value, never ``null`` (which a
  client would send as the text "null"): its schema drops pydantic's ``null`` branch.
* A validation error is documented as what it is answered with: our error shape (422)
  on our routes, the protocol's 400 on the protocols' (never FastAPI's default body).
* Operation ids are unique (a route serving POST and PUT gets one per method).
* Authentication is documented only when it is enforced: with no ``MOBILENET_API_KEY``
  the bearer scheme, the operations' security requirements and their 401s are left out.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from app.settings import Settings


def install_openapi(
    app: FastAPI, settings: Settings, extra_models: Iterable[type[BaseModel]] = ()
) -> None:
    build = app.openapi
    models = list(extra_models)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            with warnings.catch_warnings():  # FastAPI warns of the ids fixed below
                warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
                schema = build()
            components = schema.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            for model in models:  # request bodies: optional means absent, never null
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in js.pop("$defs", {}).items():
                    schemas[name] = _strip_nulls(sub)
                schemas[model.__name__] = _strip_nulls(js)
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    if isinstance(operation, dict):
                        for param in operation.get("parameters", []):
                            param["schema"] = _not_null(param.get("schema", {}))
            _unique_operation_ids(schema)
            _real_validation_errors(schema)
            if not settings.api_key:
                components.pop("securitySchemes", None)
                for item in schema.get("paths", {}).values():
                    for operation in item.values():
                        if isinstance(operation, dict):
                            operation.pop("security", None)
                            operation.get("responses", {}).pop("401", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, {type: null}]`` -> ``X`` (keeping the title, description, default)."""
    options = schema.get("anyOf")
    if not isinstance(options, list):
        return schema
    rest = [o for o in options if o.get("type") != "null"]
    if len(rest) == len(options):
        return schema
    out = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(rest) == 1:
        out.update(rest[0])
    else:
        out["anyOf"] = rest
    if "default" in out and out["default"] is None:
        out.pop("default")
    return out


PROTOCOL_PREFIXES = ("/v1/", "/v2", "/predictions/", "/ping")


def _real_validation_errors(schema: dict[str, Any]) -> None:
    default = "#/components/schemas/HTTPValidationError"
    for path, item in schema.get("paths", {}).items():
        for op in item.values():
            if not isinstance(op, dict):
                continue
            responses = op.get("responses", {})
            answer = responses.get("422", {})
            ref = answer.get("content", {}).get("application/json", {}).get("schema", {})
            if ref.get("$ref") != default:
                continue
            if path.startswith(PROTOCOL_PREFIXES):
                responses.pop("422")
            else:
                answer["content"]["application/json"]["schema"] = {
                    "$ref": "#/components/schemas/ErrorResponse"
                }
    schemas = schema.get("components", {}).get("schemas", {})
    if default not in str(schema.get("paths", {})):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)


def _unique_operation_ids(schema: dict[str, Any]) -> None:
    """One route serving two methods (TorchServe's POST and PUT) gets one operation id per
    method, as the OpenAPI spec requires and client generators need."""
    seen: dict[str, int] = {}
    for item in schema.get("paths", {}).values():
        for op in item.values():
            if isinstance(op, dict) and "operationId" in op:
                seen[op["operationId"]] = seen.get(op["operationId"], 0) + 1
    for item in schema.get("paths", {}).values():
        for method, op in item.items():
            if isinstance(op, dict) and seen.get(op.get("operationId"), 0) > 1:
                base = op["operationId"].rsplit("_", 1)[0]
                op["operationId"] = f"{base}_{method}"


def _strip_nulls(node: Any) -> Any:
    """Every ``anyOf [X, null]`` -> ``X`` and every ``default: null`` dropped, recursively."""
    if isinstance(node, list):
        return [_strip_nulls(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = _not_null({k: _strip_nulls(v) for k, v in node.items()})
    if "default" in node and node["default"] is None:
        node.pop("default")
    return node
