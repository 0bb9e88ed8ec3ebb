"""The selector as a table: request parameters -> the variant chosen, or the error.

Registries are built from the real specs (``SPECS_BY_NAME``) with fake backends: the
seven TF Lite variants the mirror holds (what the session app serves) and all ten
(plus the three torchvision checkpoints). Expected answers are written out by hand from
the specs' widths, resolutions and reported accuracies, never computed by the selector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import ConflictingParameters, InvalidRequest, ServiceError, UnknownModel
from app.serving.names import MODELS, NAME_PATTERNS, release_names
from app.serving.registry import LoadedVariant, Registry
from app.weights.specs import SPECS_BY_NAME
from tests.shared_data import MIRROR_NAMES

ALL_NAMES = [
    *MIRROR_NAMES,
    "v2-1.0-224-torchvision",
    "v3-small-1.0-224-torchvision",
    "v3-large-1.0-224-torchvision",
]


def build(names: list[str]) -> Registry:
    return Registry(
        LoadedVariant(spec=SPECS_BY_NAME[n], backend=object(), batcher=object()) for n in names
    )


REGISTRIES = {"mirror": build(MIRROR_NAMES), "all": build(ALL_NAMES)}


@dataclass(frozen=True)
class Err:
    """An expected refusal: error class, and fragments its message must contain."""

    kind: type[ServiceError]
    fragments: tuple[str, ...]

    def __init__(self, kind: type[ServiceError], *fragments: str) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "fragments", fragments)


@dataclass(frozen=True)
class Fb:
    """An expected fallback: the variant served and what the request asked for."""

    served: str
    asked: str


# What each model name means: (mirror, all). None: not loaded there.
BY_MODEL: dict[str, tuple[str | None, str]] = {
    "v1": ("v1-1.0-224", "v1-1.0-224"),
    "v2": ("v2-1.0-224", "v2-1.0-224-torchvision"),  # 70.8 vs 71.878 top-1
    "v3-small": ("v3-small-1.0-224", "v3-small-1.0-224-torchvision"),  # 64.9 vs 67.668
    "v3-large": (None, "v3-large-1.0-224-torchvision"),
    "v3": ("v3-small-1.0-224", "v3-large-1.0-224-torchvision"),
}
SPELLINGS: dict[str, list[str]] = {
    "v1": ["v1", "V1", "mobilenet_v1", "MobileNet", "MobileNetV1", "mobilenetv1", "MOBILENET-V1"],
    "v2": [
        "v2",
        "V2",
        "mobilenet_v2",
        "MobileNetV2",
        "mobilenetv2",
        "MobileNet V2",
        "mobilenet-v2",
    ],
    "v3-small": [
        "v3-small",
        "V3-Small",
        "v3_small",
        "v3small",
        "mobilenet_v3_small",
        "MobileNetV3Small",
        "mobilenetv3_small",
        "torchvision.models.mobilenet_v3_small",
    ],
    "v3-large": [
        "v3-large",
        "V3-LARGE",
        "mobilenet_v3_large",
        "MobileNetV3Large",
        "mobilenetv3_large",
        "keras.applications.MobileNetV3Large",
    ],
    "v3": ["v3", "V3", "mobilenet_v3", "MobileNetV3", "mobilenetv3"],
}


def test_every_documented_spelling_is_in_the_table() -> None:
    """The table below covers every spelling ``MODELS`` documents (and no model is missed)."""
    assert set(SPELLINGS) == set(MODELS) == set(BY_MODEL)
    for model, names in MODELS.items():
        assert set(names.spellings) <= set(SPELLINGS[model]), model


def _alias_rows() -> list[Any]:
    rows = []
    for model, spellings in SPELLINGS.items():
        for reg, expected in zip(("mirror", "all"), BY_MODEL[model], strict=True):
            want: str | Err = expected or Err(UnknownModel, "is not loaded", "loaded models: v1")
            for spelling in spellings:
                for param in ("model", "variant"):
                    if expected is None and param == "variant":
                        want_here: str | Err = Err(UnknownModel, f"variant {spelling!r}")
                    else:
                        want_here = want
                    rows.append(
                        pytest.param(
                            reg, {param: spelling}, want_here, id=f"{reg}-{param}={spelling}"
                        )
                    )
    return rows


R = "mirror"
A = "all"
NOT_LOADED = UnknownModel
TABLE: list[Any] = [
    # -- nothing asked: the most accurate loaded variant
    pytest.param(R, {}, "v2-1.0-224", id="default-mirror"),
    pytest.param(A, {}, "v3-large-1.0-224-torchvision", id="default-all"),
    pytest.param(R, {"model": ""}, "v2-1.0-224", id="empty-model-is-default"),
    pytest.param(R, {"model": "  "}, "v2-1.0-224", id="blank-model-is-default"),
    # -- our variant names, any case; width written as 1 or 1.0
    pytest.param(R, {"variant": "v1-0.5-160"}, "v1-0.5-160", id="variant"),
    pytest.param(R, {"variant": "V1-0.5-160"}, "v1-0.5-160", id="variant-upper"),
    pytest.param(R, {"variant": "v1-1-224"}, "v1-1.0-224", id="variant-width-1"),
    pytest.param(A, {"variant": "v2-1.0-224"}, "v2-1.0-224", id="variant-tflite-not-tv"),
    pytest.param(
        A, {"variant": "v2-1.0-224-TorchVision"}, "v2-1.0-224-torchvision", id="variant-tv"
    ),
    pytest.param(R, {"model": "v1-0.75-192"}, "v1-0.75-192", id="variant-name-as-model"),
    # -- TF release names, as variant and as model
    pytest.param(R, {"variant": "mobilenet_v1_0.5_160"}, "v1-0.5-160", id="tf-v1"),
    pytest.param(R, {"variant": "mobilenet_v1_0.5_160_quant"}, "v1-0.5-160", id="tf-v1-quant"),
    pytest.param(R, {"model": "mobilenet_v1_0.5_160_quant"}, "v1-0.5-160", id="tf-as-model"),
    pytest.param(R, {"model": "mobilenet_v1_0.5_160"}, "v1-0.5-160", id="tf-v1-model"),
    pytest.param(
        R, {"variant": "MobileNet_V1_0.25_128_quant.tflite"}, "v1-0.25-128", id="tf-file-name"
    ),
    pytest.param(R, {"variant": "google/mobilenet_v1_0.75_192"}, "v1-0.75-192", id="hf-hub"),
    pytest.param(R, {"variant": "mobilenet_v1_0.75_224_quant"}, "v1-0.75-224", id="tf-v1-224"),
    pytest.param(A, {"variant": "mobilenet_v2_1.0_224_quant"}, "v2-1.0-224", id="tf-v2-tflite"),
    pytest.param(A, {"model": "mobilenet_v2_1.0_224"}, "v2-1.0-224", id="tf-v2-prefers-tflite"),
    pytest.param(R, {"variant": "v3-small_224_1.0_uint8"}, "v3-small-1.0-224", id="tf-v3"),
    pytest.param(A, {"variant": "v3-small_224_1.0_uint8"}, "v3-small-1.0-224", id="tf-v3-all"),
    pytest.param(R, {"model": "v3-small_224_1.0_uint8"}, "v3-small-1.0-224", id="tf-v3-model"),
    pytest.param(R, {"variant": "mobilenet_v1_050_160"}, "v1-0.5-160", id="tfhub-v1"),
    pytest.param(A, {"variant": "mobilenet_v3_small_100_224"}, "v3-small-1.0-224", id="tfhub-v3"),
    pytest.param(R, {"model": "mobilenetv1_025"}, "v1-0.25-128", id="timm-v1"),
    pytest.param(A, {"model": "mobilenetv2_100"}, "v2-1.0-224-torchvision", id="timm-v2"),
    pytest.param(
        A, {"model": "timm/mobilenetv3_large_100"}, "v3-large-1.0-224-torchvision", id="timm-v3"
    ),
    # -- width and/or resolution without a model: the most accurate model that has them
    pytest.param(R, {"width": 0.5}, "v1-0.5-160", id="width-0.5-finds-v1"),
    pytest.param(R, {"width": 0.25}, "v1-0.25-128", id="width-0.25"),
    pytest.param(R, {"width": 0.75}, "v1-0.75-224", id="width-0.75-highest-res"),
    pytest.param(R, {"width": 1.0}, "v2-1.0-224", id="width-1-mirror"),
    pytest.param(A, {"width": 1}, "v3-large-1.0-224-torchvision", id="width-1-all"),
    pytest.param(R, {"resolution": 160}, "v1-0.5-160", id="res-160"),
    pytest.param(R, {"resolution": 192}, "v1-0.75-192", id="res-192"),
    pytest.param(R, {"resolution": 224}, "v2-1.0-224", id="res-224"),
    pytest.param(R, {"width": 0.75, "resolution": 192}, "v1-0.75-192", id="width-res"),
    # -- a model with width/resolution
    pytest.param(R, {"model": "v1", "width": 0.25}, "v1-0.25-128", id="v1-0.25"),
    pytest.param(R, {"model": "mobilenet_v1", "width": 0.5}, "v1-0.5-160", id="alias-width"),
    pytest.param(R, {"model": "v1", "width": 0.75}, "v1-0.75-224", id="v1-0.75"),
    pytest.param(R, {"model": "V1", "width": 0.75, "resolution": 192}, "v1-0.75-192", id="v1-w-r"),
    pytest.param(R, {"model": "v1", "resolution": 160}, "v1-0.5-160", id="v1-res-any-width"),
    pytest.param(R, {"model": "v3", "width": 1.0}, "v3-small-1.0-224", id="v3-width"),
    pytest.param(
        A, {"model": "v2", "width": 1, "resolution": 224}, "v2-1.0-224-torchvision", id="v2-tv"
    ),
    # -- parameters that agree are fine
    pytest.param(R, {"model": "v3", "variant": "v3-small-1.0-224"}, "v3-small-1.0-224", id="agree"),
    pytest.param(
        R,
        {"model": "MobileNet", "width": 0.5, "resolution": 160, "variant": "v1-0.5-160"},
        "v1-0.5-160",
        id="agree-all",
    ),
    pytest.param(
        R, {"model": "v1", "variant": "mobilenet_v1_0.5_160"}, "v1-0.5-160", id="agree-release"
    ),
    pytest.param(R, {"variant": "mobilenet_v1", "width": 0.5}, "v1-0.5-160", id="variant-model"),
    # -- contradictions: 422 naming both
    pytest.param(
        R,
        {"variant": "v1-0.5-160", "model": "v3"},
        Err(
            ConflictingParameters,
            "model='v3' means model v3 (v3-large or v3-small)",
            "variant='v1-0.5-160' means model v1",
        ),
        id="conflict-model",
    ),
    pytest.param(
        R,
        {"variant": "v1-0.5-160", "width": 0.75},
        Err(ConflictingParameters, "variant='v1-0.5-160' means width 0.5", "width=0.75"),
        id="conflict-width",
    ),
    pytest.param(
        R,
        {"variant": "v1-0.5-160", "resolution": 224},
        Err(ConflictingParameters, "means resolution 160", "resolution=224 means resolution 224"),
        id="conflict-resolution",
    ),
    pytest.param(
        R,
        {"model": "mobilenet_v1_0.5_160", "width": 0.75},
        Err(ConflictingParameters, "model='mobilenet_v1_0.5_160' means width 0.5", "width=0.75"),
        id="conflict-model-release-width",
    ),
    pytest.param(
        R,
        {"model": "v2", "variant": "mobilenet_v1_0.5_160_quant"},
        Err(ConflictingParameters, "model='v2' means model v2", "means model v1"),
        id="conflict-release",
    ),
    pytest.param(
        A,
        {"model": "v2-1.0-224-torchvision", "variant": "v2-1.0-224"},
        Err(
            ConflictingParameters,
            "model='v2-1.0-224-torchvision' means variant v2-1.0-224-torchvision",
            "variant='v2-1.0-224' means variant v2-1.0-224;",
        ),
        id="conflict-two-names",
    ),
    pytest.param(
        R,
        {"model": "v2-1.0-224-torchvision", "variant": "v2-1.0-224"},
        Err(ConflictingParameters, "means origin torchvision", "means origin tflite"),
        id="conflict-origin",
    ),
    pytest.param(
        R,
        {"model": "v2", "variant": "v1-0.5-160", "fallback": "nearest"},
        Err(ConflictingParameters, "model='v2'"),
        id="conflict-despite-fallback",
    ),
    # -- unknown names
    pytest.param(
        R,
        {"model": "v9"},
        Err(UnknownModel, "unknown model 'v9'", "allowed: v1, v2, v3-small, v3-large, v3"),
        id="unknown-model",
    ),
    pytest.param(
        R,
        {"model": "mobilenet_v3_smal"},
        Err(UnknownModel, "(did you mean 'v3-small'?)"),
        id="typo-suggests",
    ),
    pytest.param(
        R,
        {"model": "resnet50"},
        Err(UnknownModel, "unknown model 'resnet50'; allowed"),
        id="other-net",
    ),
    pytest.param(
        R,
        {"variant": "nonsense"},
        Err(UnknownModel, "variant 'nonsense' is not loaded; loaded: v1-0.25-128, v1-0.5-160"),
        id="unknown-variant",
    ),
    pytest.param(
        R,
        {"variant": "v3-small-1.0-224-minimalistic"},
        Err(UnknownModel, "variant 'v3-small-1.0-224-minimalistic' is not loaded"),
        id="unserved-variant",
    ),
    # -- not loaded: 404 naming what is and the nearest
    pytest.param(
        R,
        {"model": "v3-large"},
        Err(UnknownModel, "model 'v3-large' is not loaded; loaded models: v1, v2, v3-small, v3"),
        id="model-not-loaded",
    ),
    pytest.param(
        R,
        {"model": "MobileNetV3Large"},
        Err(UnknownModel, "model 'MobileNetV3Large' (v3-large) is not loaded"),
        id="alias-not-loaded",
    ),
    pytest.param(
        R,
        {"model": "v1", "width": 0.6},
        Err(
            UnknownModel,
            "width 0.6 is not loaded for v1; loaded widths: 0.25, 0.5, 0.75, 1",
            "nearest loaded: 0.5 (v1-0.5-160), 0.75 (v1-0.75-224)",
        ),
        id="width-not-loaded-nearest",
    ),
    pytest.param(
        R,
        {"model": "v1", "width": 0.7},
        Err(UnknownModel, "nearest loaded: 0.75 (v1-0.75-224), 0.5 (v1-0.5-160)"),
        id="width-nearest-first",
    ),
    pytest.param(
        R,
        {"model": "v2", "width": 0.5},
        Err(UnknownModel, "width 0.5 is not loaded for v2; loaded widths: 1; nearest loaded: 1"),
        id="v2-width-0.5",
    ),
    pytest.param(
        R,
        {"width": 0.6},
        Err(
            UnknownModel,
            "width 0.6 is not loaded for any model",
            "loaded widths: v1: 0.25, 0.5, 0.75, 1; v2: 1; v3-small: 1",
            "nearest loaded: 0.5 (v1-0.5-160), 0.75 (v1-0.75-224)",
        ),
        id="width-no-model-lists-each-model",
    ),
    pytest.param(
        R,
        {"model": "v1", "width": 0.75, "resolution": 160},
        Err(
            UnknownModel,
            "resolution 160 is not loaded for v1 at width 0.75; loaded: 192, 224",
            "nearest loaded: 192 (v1-0.75-192)",
        ),
        id="resolution-not-loaded",
    ),
    pytest.param(
        R,
        {"resolution": 300},
        Err(
            UnknownModel,
            "resolution 300 is not loaded for any model",
            "v1: 128, 160, 192, 224; v2: 224; v3-small: 224",
            "nearest loaded: 224 (v2-1.0-224)",
        ),
        id="resolution-no-model",
    ),
    pytest.param(
        R,
        {"model": "mobilenet_v1_0.3_96"},
        Err(UnknownModel, "model 'mobilenet_v1_0.3_96' is not loaded", "nearest loaded: 0.25"),
        id="release-not-loaded",
    ),
    pytest.param(
        R,
        {"variant": "v1-0.3-96"},
        Err(UnknownModel, "variant 'v1-0.3-96' is not loaded", "nearest loaded: 0.25 (v1-0.25"),
        id="variant-not-loaded",
    ),
    pytest.param(
        R,
        {"variant": "v2-1.0-224-torchvision"},
        Err(
            UnknownModel,
            "variant 'v2-1.0-224-torchvision' is not loaded",
            "nearest loaded: v2-1.0-224",
        ),
        id="other-origin-not-loaded",
    ),
    # -- fallback=nearest serves the nearest instead, and says so
    pytest.param(
        R,
        {"model": "v1", "width": 0.6, "fallback": "nearest"},
        Fb("v1-0.5-160", "model v1, width 0.6"),
        id="fallback-width",
    ),
    pytest.param(
        R,
        {"model": "v1", "width": 0.7, "fallback": "nearest"},
        Fb("v1-0.75-224", "model v1, width 0.7"),
        id="fallback-width-up",
    ),
    pytest.param(
        R,
        {"width": 0.6, "fallback": "nearest"},
        Fb("v1-0.5-160", "width 0.6"),
        id="fallback-no-model",
    ),
    pytest.param(
        R,
        {"model": "v2", "width": 0.5, "fallback": "nearest"},
        Fb("v2-1.0-224", "model v2, width 0.5"),
        id="fallback-stays-in-model",
    ),
    pytest.param(
        R,
        {"model": "v1", "width": 0.75, "resolution": 160, "fallback": "nearest"},
        Fb("v1-0.75-192", "model v1, width 0.75, resolution 160"),
        id="fallback-resolution",
    ),
    pytest.param(
        R,
        {"resolution": 300, "fallback": "nearest"},
        Fb("v2-1.0-224", "resolution 300"),
        id="fallback-resolution-no-model",
    ),
    pytest.param(
        R,
        {"variant": "v1-0.3-96", "fallback": "nearest"},
        Fb("v1-0.25-128", "model v1, width 0.3, resolution 96, origin tflite"),
        id="fallback-variant",
    ),
    pytest.param(
        R,
        {"variant": "v2-1.0-224-torchvision", "fallback": "nearest"},
        Fb("v2-1.0-224", "model v2, width 1, resolution 224, origin torchvision"),
        id="fallback-origin",
    ),
    pytest.param(
        R,
        {"model": "v1", "width": 0.5, "fallback": "nearest"},
        "v1-0.5-160",
        id="fallback-not-needed",
    ),
    pytest.param(
        R,
        {"model": "v1", "width": 0.5, "fallback": "none"},
        "v1-0.5-160",
        id="fallback-none",
    ),
    pytest.param(
        R,
        {"model": "v3-large", "fallback": "nearest"},
        Err(UnknownModel, "model 'v3-large' is not loaded"),
        id="fallback-never-changes-model",
    ),
    pytest.param(
        R,
        {"model": "v9", "fallback": "nearest"},
        Err(UnknownModel, "unknown model 'v9'"),
        id="fallback-unknown-model",
    ),
    # -- bad values
    pytest.param(
        R,
        {"model": "v1", "fallback": "closest"},
        Err(InvalidRequest, "fallback: 'closest' is not one of none, nearest"),
        id="bad-fallback",
    ),
    pytest.param(R, {"width": 0.0}, Err(InvalidRequest, "width: 0.0"), id="width-zero"),
    pytest.param(R, {"width": math.nan}, Err(InvalidRequest, "width: nan"), id="width-nan"),
    pytest.param(R, {"resolution": -1}, Err(InvalidRequest, "resolution: -1"), id="res-negative"),
    *_alias_rows(),
]


def check(got_or_error: Any, expected: str | Err | Fb) -> None:
    if isinstance(expected, Err):
        assert isinstance(got_or_error, expected.kind), got_or_error
        for fragment in expected.fragments:
            assert fragment in got_or_error.message, (fragment, got_or_error.message)
        return
    assert isinstance(got_or_error, LoadedVariant), got_or_error
    if isinstance(expected, Fb):
        fb = got_or_error.fallback
        assert fb is not None
        assert got_or_error.name == fb.served == expected.served
        assert fb.asked == expected.asked
        assert "is not loaded" in fb.reason
        assert expected.served in fb.reason  # the 404 it replaced named it as nearest
        assert fb.header() == f'nearest; asked="{expected.asked}"; served="{expected.served}"'
        fb.header().encode("ascii")
    else:
        assert got_or_error.name == expected
        assert got_or_error.fallback is None


def attempt(fn: Any, **kwargs: Any) -> Any:
    try:
        return fn(**kwargs)
    except ServiceError as exc:
        return exc


@pytest.mark.parametrize(("reg", "query", "expected"), TABLE)
def test_selector_table(reg: str, query: dict[str, Any], expected: str | Err | Fb) -> None:
    check(attempt(REGISTRIES[reg].resolve, **query), expected)


def test_conflict_details_name_both_parameters() -> None:
    with pytest.raises(ConflictingParameters) as info:
        REGISTRIES[R].resolve(variant="v1-0.5-160", model="v3")
    assert info.value.code == "conflicting_parameters"
    assert info.value.details["parameters"] == ["model", "variant"]
    assert info.value.details["values"] == {"model": "v3", "variant": "v1-0.5-160"}


def test_unavailable_details_list_widths_per_model_and_nearest() -> None:
    with pytest.raises(UnknownModel) as info:
        REGISTRIES[R].resolve(width=0.6)
    assert info.value.details["widths"] == {
        "v1": [0.25, 0.5, 0.75, 1.0],
        "v2": [1.0],
        "v3-small": [1.0],
    }
    assert info.value.details["nearest"] == ["v1-0.5-160", "v1-0.75-224"]


# ----------------------------------------------------------------------------- names
NAME_TABLE: list[Any] = [
    pytest.param(R, "MobileNetV2", "v2-1.0-224", id="keras"),
    pytest.param(A, "mobilenet_v2", "v2-1.0-224-torchvision", id="torchvision"),
    pytest.param(R, "V3", "v3-small-1.0-224", id="v3"),
    pytest.param(R, "v1-0.5-160", "v1-0.5-160", id="variant"),
    pytest.param(R, "mobilenet_v1_0.5_160_quant", "v1-0.5-160", id="tf-release"),
    pytest.param(A, "v3-small_224_1.0_uint8", "v3-small-1.0-224", id="tf-v3"),
    pytest.param(
        R,
        "resnet50",
        Err(UnknownModel, "unknown model or variant 'resnet50'", "loaded: v1, v2, v3-small, v3"),
        id="unknown",
    ),
    pytest.param(
        R,
        "mobilenet_v1_0.3_96",
        Err(UnknownModel, "variant 'mobilenet_v1_0.3_96' is not loaded", "nearest loaded: 0.25"),
        id="not-loaded",
    ),
    pytest.param(R, "", "v2-1.0-224", id="empty-is-default"),
]


@pytest.mark.parametrize(("reg", "name", "expected"), NAME_TABLE)
def test_resolve_name_table(reg: str, name: str, expected: str | Err) -> None:
    check(attempt(REGISTRIES[reg].resolve_name, name=name), expected)


def test_resolve_name_falls_back_when_asked() -> None:
    got = REGISTRIES[R].resolve_name("mobilenet_v1_0.3_96", fallback="nearest")
    assert got.name == "v1-0.25-128"
    assert got.fallback is not None and got.fallback.asked == "model v1, width 0.3, resolution 96"


@pytest.mark.parametrize("reg", [R, A])
def test_every_model_spelling_resolves_as_name(reg: str) -> None:
    for model, spellings in SPELLINGS.items():
        expected = BY_MODEL[model][0 if reg == R else 1]
        for spelling in spellings:
            got = attempt(REGISTRIES[reg].resolve_name, name=spelling)
            if expected is None:
                assert isinstance(got, UnknownModel), spelling
            else:
                assert got.name == expected, spelling


@pytest.mark.parametrize("reg", [R, A])
def test_release_names_listed_for_a_variant_resolve_to_it(reg: str) -> None:
    registry = REGISTRIES[reg]
    listed = {v.name: registry.release_names(v) for v in registry}
    # Every TF Lite variant has its TF release names; a torchvision checkpoint of the same
    # (architecture, width, resolution) does not (they mean the TF Lite one).
    for name in MIRROR_NAMES:
        assert listed[name], name
        for release in listed[name]:
            assert registry.resolve_name(release).name == name
            assert registry.resolve(variant=release).name == name
    if reg == A:
        assert listed["v2-1.0-224-torchvision"] == []
        assert listed["v3-small-1.0-224-torchvision"] == []
        # No TF Lite V3-Large is loaded: its release names find the torchvision one.
        assert listed["v3-large-1.0-224-torchvision"] == [
            "v3-large_224_1.0_uint8",
            "mobilenet_v3_large_100_224",
        ]
    assert listed["v1-0.5-160"] == [
        "mobilenet_v1_0.5_160_quant",
        "mobilenet_v1_0.5_160",
        "mobilenet_v1_050_160",
    ]
    assert listed["v3-small-1.0-224"] == ["v3-small_224_1.0_uint8", "mobilenet_v3_small_100_224"]


def test_release_names_agree_with_the_patterns() -> None:
    """What /models lists is what the patterns read (each example too)."""
    for pattern in NAME_PATTERNS:
        assert pattern.regex.fullmatch(pattern.example), pattern.example
    for spec in SPECS_BY_NAME.values():
        for release in release_names(spec.arch, spec.width, spec.resolution):
            assert any(p.regex.fullmatch(release) for p in NAME_PATTERNS), release


def test_spellings_list_only_loaded_models() -> None:
    spellings = REGISTRIES[R].spellings()
    assert list(spellings) == ["v1", "v2", "v3-small", "v3"]
    assert spellings["v2"][0] == "v2"
    assert "MobileNetV2" in spellings["v2"] and "mobilenet_v2" in spellings["v2"]
    assert "v3-large" in REGISTRIES[A].spellings()


def test_degraded_variant_is_no_longer_chosen() -> None:
    """The service drops a variant that fails its golden check from ``variants``: the
    selector must read what is loaded at call time."""
    registry = build(MIRROR_NAMES)
    assert registry.resolve(width=0.5).name == "v1-0.5-160"
    del registry.variants["v1-0.5-160"]
    err = attempt(registry.resolve, width=0.5)
    assert isinstance(err, UnknownModel) and "width 0.5 is not loaded for any model" in err.message


# ------------------------------------------------------------------------------ any input
_WORDS = st.sampled_from(
    ["v1", "V3", "mobilenet_v2", "MobileNetV3Small", "v1-0.5-160", "mobilenet_v1_0.3_96",
     "v3-small_224_1.0_uint8", "mobilenetv2_100", "google/", ".tflite", "_quant", "-", "_",
     "0.5", "160", "999999999999999999999999", "\x00", "é", "\u212a"]
)  # fmt: skip
_TEXT = st.one_of(st.none(), st.text(max_size=40), st.lists(_WORDS, max_size=4).map("".join))


@settings(max_examples=300, deadline=None)
@given(
    reg=st.sampled_from([R, A]),
    model=_TEXT,
    variant=_TEXT,
    width=st.one_of(st.none(), st.floats(), st.sampled_from([0.25, 0.5, 0.6, 1.0])),
    resolution=st.one_of(st.none(), st.integers(-(2**40), 2**40), st.sampled_from([160, 224])),
    fallback=st.sampled_from([None, "nearest", "none", "NEAREST", "", "x"]),
)
def test_any_input_is_a_loaded_variant_or_a_4xx_error(
    reg: str,
    model: str | None,
    variant: str | None,
    width: float | None,
    resolution: int | None,
    fallback: str | None,
) -> None:
    """What the middleware and the routes rely on: nothing but a domain error escapes,
    and a fallback's header is plain ASCII."""
    registry = REGISTRIES[reg]
    got = attempt(
        registry.resolve,
        model=model,
        variant=variant,
        width=width,
        resolution=resolution,
        fallback=fallback,
    )
    if isinstance(got, ServiceError):
        assert got.code in ("unknown_model", "invalid_request", "conflicting_parameters"), got
        assert got.message
        return
    assert registry.variants[got.name].spec is got.spec
    if got.fallback is not None:
        got.fallback.header().encode("ascii")
        assert got.fallback.served == got.name


def test_a_specs_own_aliases_name_it() -> None:
    """``VariantSpec.aliases`` (data, no code) are accepted and listed like release names."""
    import dataclasses

    spec = dataclasses.replace(SPECS_BY_NAME["v1-0.5-160"], aliases=("edge-tiny",))
    registry = Registry(
        [
            LoadedVariant(spec=spec, backend=object(), batcher=object()),
            LoadedVariant(spec=SPECS_BY_NAME["v2-1.0-224"], backend=object(), batcher=object()),
        ]
    )
    assert registry.resolve(variant="Edge-Tiny").name == "v1-0.5-160"
    assert registry.resolve_name("edge-tiny").name == "v1-0.5-160"
    assert registry.release_names(registry.variants["v1-0.5-160"])[0] == "edge-tiny"
    with pytest.raises(ConflictingParameters):
        registry.resolve(variant="edge-tiny", model="v2")
