"""How people write MobileNet names, as data: model spellings and release-name patterns.

``MODELS`` holds the model names a request may use (``v1`` ... ``v3``), the architectures
each covers (in preference order) and the spellings other libraries use for them
(torchvision ``mobilenet_v2``, Keras ``MobileNetV2`` and ``MobileNet``, ...).
``NAME_PATTERNS`` reads names that pin a width and (mostly) a resolution too: ours
(``v1-0.5-160``), TF release names (``mobilenet_v1_0.5_160_quant``,
``v3-small_224_1.0_uint8``), TF Hub and timm names. Matching ignores case (and ``-``,
``_``, spaces in model spellings). `read_name` turns one string into an `Ask`: the fields
it pins, for `app.serving.selector` to merge and choose with.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.serving.registry import LoadedVariant


@dataclass(frozen=True)
class ModelName:
    """A model name a request may use: the architectures it covers, best first, and the
    other spellings that mean it."""

    archs: tuple[str, ...]
    spellings: tuple[str, ...]


MODELS: dict[str, ModelName] = {
    "v1": ModelName(("v1",), ("mobilenet_v1", "MobileNet", "MobileNetV1", "mobilenetv1")),
    "v2": ModelName(("v2",), ("mobilenet_v2", "MobileNetV2", "mobilenetv2")),
    "v3-small": ModelName(
        ("v3-small",), ("mobilenet_v3_small", "MobileNetV3Small", "mobilenetv3_small")
    ),
    "v3-large": ModelName(
        ("v3-large",), ("mobilenet_v3_large", "MobileNetV3Large", "mobilenetv3_large")
    ),
    # Plain "V3": the large one when loaded (more accurate), else the small one.
    "v3": ModelName(("v3-large", "v3-small"), ("mobilenet_v3", "MobileNetV3", "mobilenetv3")),
}


@dataclass(frozen=True)
class NamePattern:
    """A family of names that pin architecture, width and (mostly) resolution."""

    regex: re.Pattern[str]
    where: str  # who uses these names, for the docs
    example: str
    origin: str | None  # the origin of the variant such a name means
    exact: bool = False  # the origin is part of the name (ours): no other origin answers


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.ASCII | re.IGNORECASE)


NAME_PATTERNS: tuple[NamePattern, ...] = (
    NamePattern(
        _re(
            r"(?P<arch>v1|v2|v3-small|v3-large)-(?P<w>\d+(?:\.\d+)?)-(?P<res>\d+)"
            r"(?P<origin>-torchvision|-tflite)?"
        ),
        "this service",
        "v1-0.5-160",
        "tflite",
        exact=True,
    ),
    NamePattern(
        _re(r"mobilenet_(?P<arch>v[12])_(?P<w>\d+\.\d+)_(?P<res>\d+)(?:_quant)?"),
        "TF-slim, TF Lite, Hugging Face google/",
        "mobilenet_v1_0.5_160_quant",
        "tflite",
    ),
    NamePattern(
        _re(r"(?P<arch>v3[-_](?:small|large))_(?P<res>\d+)_(?P<w>\d+\.\d+)(?:_(?:uint8|float))?"),
        "TF Lite V3 releases",
        "v3-small_224_1.0_uint8",
        "tflite",
    ),
    NamePattern(
        _re(r"mobilenet_(?P<arch>v[12]|v3_(?:small|large))_(?P<w100>\d{3})_(?P<res>\d+)"),
        "TF Hub, Kaggle",
        "mobilenet_v2_100_224",
        "tflite",
    ),
    NamePattern(
        _re(r"mobilenetv(?P<arch>1|2|3_(?:small|large))_(?P<w100>\d{3})"),
        "timm: width only",
        "mobilenetv3_large_100",
        None,
    ),
)
_PREFIXES = (
    "google/",
    "timm/",
    "torchvision.models.",
    "keras.applications.",
    "tf.keras.applications.",
)
_SUFFIXES = (".tflite",)


def spelling_key(spelling: str) -> str:
    """Model spellings match ignoring case, ``-``, ``_`` and spaces."""
    return re.sub(r"[\s_\-]+", "", spelling.lower())


SPELLING_TO_MODEL: dict[str, str] = {}
for _model, _names in MODELS.items():
    for _spelling in (_model, *_names.spellings):
        assert SPELLING_TO_MODEL.setdefault(spelling_key(_spelling), _model) == _model, _spelling


def model_spellings(model: str) -> list[str]:
    """Every documented way to write ``model`` (its own name first)."""
    return [model, *MODELS[model].spellings]


def release_names(arch: str, width: float, resolution: int) -> list[str]:
    """The upstream names of (arch, width, resolution), as NAME_PATTERNS reads them."""
    w100 = f"{round(width * 100):03d}"
    if arch in ("v1", "v2"):
        return [
            f"mobilenet_{arch}_{width}_{resolution}_quant",
            f"mobilenet_{arch}_{width}_{resolution}",
            f"mobilenet_{arch}_{w100}_{resolution}",
        ]
    size = arch.split("-", 1)[1]
    return [f"{arch}_{resolution}_{width}_uint8", f"mobilenet_v3_{size}_{w100}_{resolution}"]


def describe_names() -> str:
    """One paragraph for the OpenAPI descriptions, built from the tables above."""
    models = "; ".join(f"{m}: {', '.join(n.spellings)}" for m, n in MODELS.items())
    patterns = ", ".join(f"{p.example} ({p.where})" for p in NAME_PATTERNS[1:])
    return (
        f"Any case. Other spellings: {models}. Release names pin width and resolution "
        f"too: {patterns}."
    )


# ------------------------------------------------------------------------- what is asked
@dataclass(frozen=True)
class Ask:
    """What one request parameter pins (``None``: nothing)."""

    param: str  # "model", "variant", "width", "resolution" or "name"
    text: str  # what the client wrote
    model: str | None = None  # the model name it means, for messages
    archs: tuple[str, ...] | None = None
    width: float | None = None
    resolution: int | None = None
    origin: str | None = None
    exact: bool = False  # origin must match, not only be preferred
    name: str | None = None  # one loaded variant, by its exact name

    @property
    def shown(self) -> str:
        if self.param in ("width", "resolution"):
            return f"{self.param}={self.text}"
        return f"{self.param}={self.text!r}"

    @property
    def pins_variant(self) -> bool:
        return self.width is not None and self.resolution is not None


def _arch(text: str) -> str:
    arch = text.lower().replace("_", "-")
    return arch if arch.startswith("v") else f"v{arch}"


def _strip(text: str) -> str:
    low = text.lower()
    for prefix in _PREFIXES:
        if low.startswith(prefix):
            text, low = text[len(prefix) :], low[len(prefix) :]
    for suffix in _SUFFIXES:
        if low.endswith(suffix):
            text = text[: -len(suffix)]
    return text


def read_name(text: str, param: str, loaded: Sequence[LoadedVariant]) -> Ask | None:
    """What a name means: a loaded variant's exact name, a model spelling, or a release
    name; ``None`` when it is none of these."""
    raw = text.strip()
    for v in loaded:  # a loaded variant's name, or one of its spec's own aliases
        if raw.lower() in (v.name.lower(), *(a.lower() for a in v.spec.aliases)):
            s = v.spec
            return Ask(
                param,
                raw,
                model=s.arch,
                archs=(s.arch,),
                width=s.width,
                resolution=s.resolution,
                origin=s.origin,
                exact=True,
                name=v.name,
            )
    bare = _strip(raw)
    model = SPELLING_TO_MODEL.get(spelling_key(bare))
    if model is not None:
        return Ask(param, raw, model=model, archs=MODELS[model].archs)
    for pattern in NAME_PATTERNS:
        m = pattern.regex.fullmatch(bare)
        if m is None:
            continue
        groups = m.groupdict()
        arch = _arch(groups["arch"])
        width = float(groups["w"]) if groups.get("w") else int(groups["w100"]) / 100
        res = int(groups["res"]) if groups.get("res") else None
        origin = (groups.get("origin") or "").lstrip("-") or pattern.origin
        if width <= 0 or res == 0:
            return None
        return Ask(
            param,
            raw,
            model=arch,
            archs=(arch,),
            width=width,
            resolution=res,
            origin=origin,
            exact=pattern.exact,
        )
    return None
