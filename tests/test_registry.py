"""Unit tests of the resolution rules in ``app/serving/registry.py``.

Fake ``LoadedVariant`` objects (real ``VariantSpec`` data, no backend, no batcher): which
variant answers each (model, width, resolution, variant) and what every refusal says.
"""

from __future__ import annotations

import dataclasses

import pytest

from app.errors import ConflictingParameters, UnknownModel
from app.serving.registry import MODEL_ALIASES, LoadedVariant, Registry
from app.weights.specs import SPECS_BY_NAME, Accuracy

_BASE = SPECS_BY_NAME["v1-1.0-224"]


def fake(
    arch: str,
    width: float,
    resolution: int,
    top1: float | None,
    *,
    origin: str = "tflite",
    name: str | None = None,
) -> LoadedVariant:
    spec = dataclasses.replace(
        _BASE,
        name=name or f"{arch}-{width}-{resolution}" + ("" if origin == "tflite" else f"-{origin}"),
        arch=arch,
        width=width,
        resolution=resolution,
        origin=origin,
        accuracy=None if top1 is None else Accuracy(top1=top1, top5=None, source="test"),
    )
    return LoadedVariant(spec=spec, backend=object(), batcher=object())


def registry(*variants: LoadedVariant) -> Registry:
    return Registry(variants)


# The set the service ships on CPU (TF-origin): V1 at four widths, V2, V3-small.
SHIPPED = (
    fake("v1", 0.25, 128, 39.9),
    fake("v1", 0.5, 160, 57.7),
    fake("v1", 0.75, 192, 66.2),
    fake("v1", 0.75, 224, 67.9),
    fake("v1", 1.0, 224, 69.7),
    fake("v2", 1.0, 224, 70.8),
    fake("v3-small", 1.0, 224, 64.9),
)


def test_len_iter_and_lookup_by_name() -> None:
    reg = registry(*SHIPPED)
    assert len(reg) == 7
    assert [v.name for v in reg] == [v.name for v in SHIPPED]
    assert reg.resolve(variant="v1-0.75-192").spec.resolution == 192


def test_aliases_name_the_variant_each_model_resolves_to() -> None:
    reg = registry(*SHIPPED)
    assert reg.aliases() == {
        "v1": "v1-1.0-224",
        "v2": "v2-1.0-224",
        "v3-small": "v3-small-1.0-224",
        "v3": "v3-small-1.0-224",
    }
    assert reg.loaded_models() == ["v1", "v2", "v3-small", "v3"]


def test_v3_prefers_large_over_small_even_when_small_scores_higher() -> None:
    small = fake("v3-small", 1.0, 224, 99.0)
    large = fake("v3-large", 1.0, 224, 75.0)
    reg = registry(small, large)
    assert reg.resolve(model="v3") is large
    assert reg.resolve(model="v3-small") is small
    assert reg.aliases() == {
        "v3-small": small.name,
        "v3-large": large.name,
        "v3": large.name,
    }


def test_v3_falls_back_to_small_when_large_is_not_loaded() -> None:
    small = fake("v3-small", 1.0, 224, 64.9)
    reg = registry(fake("v2", 1.0, 224, 70.8), small)
    assert reg.resolve(model="v3") is small
    assert "v3-large" not in reg.aliases()


def test_default_is_the_most_accurate_loaded_variant() -> None:
    reg = registry(*SHIPPED)
    assert reg.default().name == "v2-1.0-224"
    assert reg.resolve().name == "v2-1.0-224"
    best = fake("v3-large", 1.0, 224, 75.2)
    assert registry(*SHIPPED, best).resolve() is best


def test_variant_without_accuracy_counts_as_least_accurate() -> None:
    unknown = fake("v1", 1.0, 224, None, name="mystery")
    known = fake("v1", 0.25, 128, 10.0)
    assert registry(unknown, known).default() is known


def test_widest_width_is_the_default_for_a_model() -> None:
    reg = registry(*SHIPPED)
    assert reg.resolve(model="v1").name == "v1-1.0-224"
    # Order of loading does not matter.
    assert registry(*reversed(SHIPPED)).resolve(model="v1").name == "v1-1.0-224"
    assert registry(*SHIPPED[:3]).resolve(model="v1").name == "v1-0.75-192"


@pytest.mark.parametrize(
    ("width", "expected"),
    [(0.25, "v1-0.25-128"), (0.5, "v1-0.5-160"), (1.0, "v1-1.0-224"), (1, "v1-1.0-224")],
)
def test_width_picks_that_width(width: float, expected: str) -> None:
    assert registry(*SHIPPED).resolve(model="v1", width=width).name == expected


def test_highest_resolution_is_the_default_for_a_width() -> None:
    reg = registry(*SHIPPED)
    assert reg.resolve(model="v1", width=0.75).name == "v1-0.75-224"
    assert reg.resolve(model="v1", width=0.75, resolution=192).name == "v1-0.75-192"


def test_width_or_resolution_alone_pick_a_model_that_has_them() -> None:
    reg = registry(fake("v1", 0.5, 160, 57.7), fake("v1", 1.0, 224, 69.7))
    assert reg.resolve(width=0.5).name == "v1-0.5-160"
    assert reg.resolve(resolution=224).name == "v1-1.0-224"


def test_two_origins_for_the_same_variant_the_more_accurate_answers() -> None:
    tflite = fake("v2", 1.0, 224, 70.8)
    torchvision = fake("v2", 1.0, 224, 71.878, origin="torchvision")
    for reg in (registry(tflite, torchvision), registry(torchvision, tflite)):
        assert reg.resolve(model="v2") is torchvision
        assert reg.resolve(model="v2", width=1.0, resolution=224) is torchvision
        assert reg.aliases()["v2"] == torchvision.name
        # An exact variant name still reaches the other one.
        assert reg.resolve(variant=tflite.name) is tflite
    better_tflite = fake("v3-small", 1.0, 224, 70.0)
    worse_tv = fake("v3-small", 1.0, 224, 67.7, origin="torchvision")
    assert registry(worse_tv, better_tflite).resolve(model="v3") is better_tflite


def test_variant_name_that_contradicts_model_width_or_resolution_is_refused() -> None:
    # Issue 22: a variant that disagrees with model/width/resolution used to win silently.
    reg = registry(*SHIPPED)
    with pytest.raises(ConflictingParameters) as info:
        reg.resolve(model="v2", width=0.3, resolution=999, variant="v1-0.5-160")
    assert info.value.details["parameters"] == ["model", "variant"]
    # Agreeing parameters are fine.
    got = reg.resolve(model="v1", width=0.5, resolution=160, variant="v1-0.5-160")
    assert got.name == "v1-0.5-160"


# ------------------------------------------------------------------------------ refusals
def test_unknown_model_lists_allowed_and_loaded_models() -> None:
    with pytest.raises(UnknownModel) as info:
        registry(*SHIPPED).resolve(model="v9")
    msg = info.value.message
    assert "'v9'" in msg
    for name in MODEL_ALIASES:
        assert name in msg
    assert info.value.details["allowed"] == list(MODEL_ALIASES)
    assert info.value.details["loaded"] == ["v1", "v2", "v3-small", "v3"]


def test_known_but_unloaded_model_lists_the_loaded_models() -> None:
    with pytest.raises(UnknownModel) as info:
        registry(*SHIPPED).resolve(model="v3-large")
    assert "v3-large" in info.value.message
    assert "not loaded" in info.value.message
    assert "v1, v2, v3-small, v3" in info.value.message
    assert info.value.details["loaded"] == ["v1", "v2", "v3-small", "v3"]


def test_unloaded_width_lists_the_loaded_widths() -> None:
    with pytest.raises(UnknownModel) as info:
        registry(*SHIPPED).resolve(model="v1", width=0.3)
    assert info.value.message == (
        "width 0.3 is not loaded for v1; loaded widths: 0.25, 0.5, 0.75, 1; "
        "nearest loaded: 0.25 (v1-0.25-128), 0.5 (v1-0.5-160)"
    )
    assert info.value.details["widths"] == [0.25, 0.5, 0.75, 1.0]
    with pytest.raises(UnknownModel, match=r"loaded widths: 1; nearest loaded: 1 \(v2-1.0-224\)$"):
        registry(*SHIPPED).resolve(model="v2", width=0.5)


def test_unloaded_resolution_lists_the_loaded_resolutions_for_that_width() -> None:
    with pytest.raises(UnknownModel) as info:
        registry(*SHIPPED).resolve(model="v1", width=0.75, resolution=160)
    assert "resolution 160" in info.value.message
    assert info.value.message.endswith("loaded: 192, 224; nearest loaded: 192 (v1-0.75-192)")
    assert info.value.details["resolutions"] == [192, 224]
    # Issue 22: without a width, a resolution is looked for at every width of the model
    # (it used to be looked for only at the widest one).
    assert registry(*SHIPPED).resolve(model="v1", resolution=128).name == "v1-0.25-128"
    with pytest.raises(UnknownModel, match=r"for v1; loaded: 128, 160, 192, 224; nearest"):
        registry(*SHIPPED).resolve(model="v1", resolution=300)


def test_unknown_variant_lists_every_loaded_variant() -> None:
    with pytest.raises(UnknownModel) as info:
        registry(*SHIPPED).resolve(variant="v1-0.3-128")
    assert "'v1-0.3-128'" in info.value.message
    for v in SHIPPED:
        assert v.name in info.value.message
    assert info.value.details["loaded"] == sorted(v.name for v in SHIPPED)


def test_empty_registry_refuses_everything_with_a_message() -> None:
    reg = registry()
    assert len(reg) == 0
    assert reg.aliases() == {}
    with pytest.raises(UnknownModel, match="no model is loaded"):
        reg.default()
    with pytest.raises(UnknownModel, match="no model is loaded"):
        reg.resolve()
    with pytest.raises(UnknownModel, match="not loaded; loaded models: none"):
        reg.resolve(model="v1")
    with pytest.raises(UnknownModel, match=r"loaded: none$"):
        reg.resolve(variant="v1-1.0-224")
