"""The loaded variants, and the one place a request's selector becomes one of them.

The rules (model spellings, release names, width/resolution defaults, conflicts, the
nearest-variant fallback) are data and functions in `app.serving.selector`; this class
holds what is loaded and answers ``resolve`` (query parameters) and ``resolve_name`` (one
string, for protocol routes that put the model in the path).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from app.serving import names, selector
from app.serving.names import MODELS
from app.serving.selector import Fallback
from app.weights.specs import VariantSpec

MODEL_ALIASES: dict[str, tuple[str, ...]] = {m: n.archs for m, n in MODELS.items()}
"""Model name -> the architectures it covers, in preference order (``v3``: large, small)."""


@dataclass
class LoadedVariant:
    """A variant ready to serve: its spec, backend and batcher. ``fallback`` is set only on
    the copy `Registry.resolve` returns when it served the nearest variant instead."""

    spec: VariantSpec
    backend: Any  # app.inference.Backend
    batcher: Any  # app.batching.Batcher
    fallback: Fallback | None = None

    @property
    def name(self) -> str:
        return self.spec.name


class Registry:
    """The loaded variants and the rules that pick one for a request."""

    CACHE_MAX = 256  # distinct selectors remembered (a client inventing names gets none)

    def __init__(self, variants: Iterable[LoadedVariant]) -> None:
        self.variants: dict[str, LoadedVariant] = {v.name: v for v in variants}
        # Every request resolves its selector, twice (the fast-reject middleware, then the
        # route): a hit is a dict lookup instead of the selector's parsing and ranking.
        self._cache: dict[tuple, LoadedVariant] = {}
        self._cached_for: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.variants)

    def __iter__(self) -> Iterator[LoadedVariant]:
        return iter(self.variants.values())

    def loaded_models(self) -> list[str]:
        return selector.loaded_models(list(self))

    def aliases(self) -> dict[str, str]:
        """Each model name a request may use -> the variant it answers with by default."""
        return {model: self.resolve(model=model).name for model in self.loaded_models()}

    def spellings(self) -> dict[str, list[str]]:
        """Each loaded model name -> every spelling a request may use for it."""
        return {model: names.model_spellings(model) for model in self.loaded_models()}

    def release_names(self, v: LoadedVariant) -> list[str]:
        """The spec's own aliases and the upstream release names that resolve to ``v`` (not
        those that mean another loaded variant of the same architecture, width and
        resolution)."""
        s = v.spec
        found = [*s.aliases, *names.release_names(s.arch, s.width, s.resolution)]
        return [n for n in found if self.resolve_name(n).name == v.name]

    def default(self) -> LoadedVariant:
        """With nothing asked for: the most accurate loaded variant."""
        return self.resolve()

    def resolve(
        self,
        *,
        model: str | None = None,
        width: float | None = None,
        resolution: int | None = None,
        variant: str | None = None,
        fallback: str | None = None,
    ) -> LoadedVariant:
        """The variant a request's query parameters mean; ``UnknownModel`` (404) when it
        is not loaded, ``ConflictingParameters`` (422) when they disagree."""
        key = (model, width, resolution, variant, fallback)
        return self._cached(key) or self._remember(
            key,
            selector.select(
                list(self),
                model=model,
                width=width,
                resolution=resolution,
                variant=variant,
                fallback=fallback,
            ),
        )

    def resolve_name(self, name: str, *, fallback: str | None = None) -> LoadedVariant:
        """One string that may be a variant name, a release name or a model spelling
        (any case): what ``/v2/models/{name}`` and friends put in the path."""
        key = ("name", name, fallback)
        return self._cached(key) or self._remember(
            key, selector.select(list(self), name=name, fallback=fallback)
        )

    def _cached(self, key: tuple) -> LoadedVariant | None:
        loaded = tuple(self.variants)
        if loaded != self._cached_for:  # a variant was dropped (golden check) or added
            self._cache, self._cached_for = {}, loaded
        return self._cache.get(key)

    def _remember(self, key: tuple, found: LoadedVariant) -> LoadedVariant:
        """Only answers are kept (errors are rare, and each says something of its own)."""
        if len(self._cache) < self.CACHE_MAX:
            self._cache[key] = found
        return found
