"""The weights pipeline: variant specs, upstream fetching, importers and the local store."""

from app.weights.fetch import FetchResult, default_variants, fetch_variants, resolve_variants
from app.weights.labels import imagenet_labels
from app.weights.specs import SPECS, SPECS_BY_NAME, VariantSpec, get_spec
from app.weights.store import load_model, present_variants

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
