"""The weights pipeline: variant specs, upstream fetching, importers and the local store.

The fetch API (and httpx with it) is imported on first use: a serving process needs
only the specs, labels and store.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from app.weights.labels import imagenet_labels
from app.weights.specs import SPECS, SPECS_BY_NAME, VariantSpec, get_spec
from app.weights.store import load_model, present_variants

if TYPE_CHECKING:
    from app.weights.fetch import FetchResult, default_variants, fetch_variants, resolve_variants

_FETCH = {"FetchResult", "default_variants", "fetch_variants", "resolve_variants"}


def __getattr__(name: str) -> Any:
    if name in _FETCH:
        return getattr(importlib.import_module("app.weights.fetch"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SPECS",
    "SPECS_BY_NAME",
    "FetchResult",
    "VariantSpec",
    "default_variants",
    "fetch_variants",
    "get_spec",
    "imagenet_labels",
    "load_model",
    "present_variants",
    "resolve_variants",
]
