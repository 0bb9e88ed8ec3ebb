"""Which loaded variant answers a request: model aliases, width and resolution rules.

``model`` is ``v1``, ``v2``, ``v3-small``, ``v3-large`` or ``v3`` (the best V3 loaded);
``width`` defaults to the widest loaded for that model; ``resolution`` to the variant's
own (the highest loaded for that width). Where two origins serve the same
(architecture, width, resolution), the one with the higher reported accuracy answers.
Every refusal lists what is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.errors import UnknownModel
from app.weights.specs import VariantSpec

MODEL_ALIASES: dict[str, tuple[str, ...]] = {
    "v1": ("v1",),
    "v2": ("v2",),
    "v3-small": ("v3-small",),
    "v3-large": ("v3-large",),
    "v3": ("v3-large", "v3-small"),  # preference order
}


@dataclass
class LoadedVariant:
    """A variant ready to serve: its spec, backend and batcher."""

    spec: VariantSpec
    backend: Any  # app.inference.Backend
    batcher: Any  # app.batching.Batcher

    @property
    def name(self) -> str:
        return self.spec.name


def _accuracy(v: LoadedVariant) -> float:
    return v.spec.accuracy.top1 if v.spec.accuracy else 0.0


class Registry:
    """The loaded variants and the rules that pick one for a request."""

    def __init__(self, variants: Iterable[LoadedVariant]) -> None:
        self.variants: dict[str, LoadedVariant] = {v.name: v for v in variants}

    def __len__(self) -> int:
        return len(self.variants)

    def __iter__(self):
        return iter(self.variants.values())

    def loaded_models(self) -> list[str]:
        archs = {v.spec.arch for v in self}
        return [m for m, archs_ in MODEL_ALIASES.items() if any(a in archs for a in archs_)]

    def aliases(self) -> dict[str, str]:
        """Each model name a request may use -> the variant it answers with by default."""
        out = {}
        for model in self.loaded_models():
            out[model] = self.resolve(model=model).name
        return out

    def default(self) -> LoadedVariant:
        """With no model asked for: the most accurate loaded variant."""
        if not self.variants:
            raise UnknownModel("no model is loaded")
        return max(self, key=_accuracy)

    def resolve_name(self, name: str) -> LoadedVariant:
        """A protocol's model name: a variant name or a model alias (case-insensitive).

        Minimal version for the protocol adapters; the selector branch refines it."""
        key = name.strip().lower()
        by_lower = {n.lower(): v for n, v in self.variants.items()}
        if key in by_lower:
            return by_lower[key]
        if key in MODEL_ALIASES:
            return self.resolve(model=key)
        raise UnknownModel(
            f"unknown model {name!r}; use a variant name ({', '.join(sorted(self.variants))}) "
            f"or a model name ({', '.join(self.loaded_models())})",
            loaded=sorted(self.variants),
        )

    def resolve(
        self,
        *,
        model: str | None = None,
        width: float | None = None,
        resolution: int | None = None,
        variant: str | None = None,
    ) -> LoadedVariant:
        if variant is not None:
            if variant not in self.variants:
                raise UnknownModel(
                    f"variant {variant!r} is not loaded; loaded: "
                    f"{', '.join(sorted(self.variants))}",
                    loaded=sorted(self.variants),
                )
            return self.variants[variant]
        if model is None and width is None and resolution is None:
            return self.default()
        model = model or self.default().spec.arch
        if model not in MODEL_ALIASES:
            raise UnknownModel(
                f"unknown model {model!r}; allowed: {', '.join(MODEL_ALIASES)} "
                f"(loaded: {', '.join(self.loaded_models())})",
                allowed=list(MODEL_ALIASES),
                loaded=self.loaded_models(),
            )
        for arch in MODEL_ALIASES[model]:
            candidates = [v for v in self if v.spec.arch == arch]
            if candidates:
                break
        else:
            raise UnknownModel(
                f"model {model!r} is not loaded; loaded models: "
                f"{', '.join(self.loaded_models()) or 'none'}",
                loaded=self.loaded_models(),
            )
        widths = sorted({v.spec.width for v in candidates})
        if width is None:
            width = widths[-1]
        candidates = [v for v in candidates if abs(v.spec.width - width) < 1e-6]
        if not candidates:
            raise UnknownModel(
                f"width {width:g} is not loaded for {model}; loaded widths: "
                f"{', '.join(f'{w:g}' for w in widths)}",
                model=model,
                widths=widths,
            )
        resolutions = sorted({v.spec.resolution for v in candidates})
        if resolution is not None:
            candidates = [v for v in candidates if v.spec.resolution == resolution]
            if not candidates:
                raise UnknownModel(
                    f"resolution {resolution} is not loaded for {model} at width "
                    f"{width:g}; loaded: {', '.join(map(str, resolutions))}",
                    model=model,
                    width=width,
                    resolutions=resolutions,
                )
        else:
            top = resolutions[-1]
            candidates = [v for v in candidates if v.spec.resolution == top]
        return max(candidates, key=_accuracy)
