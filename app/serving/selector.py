"""Which loaded variant a request's selector means: merging, choosing, refusing, falling back.

Each parameter of a request (``model``, ``variant``, ``width``, ``resolution``, or one
``name`` from a protocol path) becomes an `Ask` (`app.serving.names` reads the strings).
The asks are merged: two that disagree (``variant=v1-0.5-160&model=v3``) are a 422 naming
both, since serving either would silently ignore the other. The merged `Want` picks:

* the architecture: the model's first (preference order) that has a match, else the
  architecture of the most accurate match (so ``?width=0.5`` finds the model that has it);
* the widest matching width, the highest matching resolution at that width, the origin a
  name prefers (TF release names mean the TF Lite variant), the highest accuracy.

With nothing asked: the most accurate loaded variant. Nothing matches: a 404 that lists
what is loaded and names the nearest loaded variants, or, with ``fallback="nearest"``,
the nearest variant itself, marked with a `Fallback`. The architecture is never traded
away: a model that is not loaded stays a 404.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.errors import ConflictingParameters, InvalidRequest, UnknownModel
from app.serving.names import MODELS, SPELLING_TO_MODEL, Ask, read_name, spelling_key

if TYPE_CHECKING:
    from app.serving.registry import LoadedVariant

FALLBACKS = ("none", "nearest")
"""Values of the ``fallback`` parameter: refuse (default) or serve the nearest variant."""


@dataclass
class Want:
    """The merged asks of one request, with which ask set each field (for messages)."""

    archs: tuple[str, ...] | None = None
    width: float | None = None
    resolution: int | None = None
    origin: str | None = None
    exact: bool = False
    name: str | None = None
    asks: list[Ask] = dataclasses.field(default_factory=list)
    source: dict[str, Ask] = dataclasses.field(default_factory=dict)

    def empty(self) -> bool:
        return self.archs is None and self.width is None and self.resolution is None

    def model_label(self) -> str:
        ask = self.source.get("archs")
        if ask is None or self.archs is None:
            return "any model"
        return ask.model or "/".join(self.archs)

    def asked(self) -> str:
        """What the request asked for, in canonical words (ASCII: it goes in a header)."""
        parts = []
        if self.archs is not None:
            parts.append(f"model {self.model_label()}")
        if self.width is not None:
            parts.append(f"width {self.width:g}")
        if self.resolution is not None:
            parts.append(f"resolution {self.resolution}")
        if self.exact and self.origin:
            parts.append(f"origin {self.origin}")
        return ", ".join(parts) or "default"


def _means(ask: Ask, field: str) -> str:
    if field == "archs":
        model = ask.model or "/".join(ask.archs or ())
        covers = " or ".join(ask.archs or ())
        return f"model {model}" + (f" ({covers})" if covers and covers != model else "")
    if field == "width":
        return f"width {ask.width:g}"
    if field == "resolution":
        return f"resolution {ask.resolution}"
    if field == "origin":
        return f"origin {ask.origin}"
    return f"variant {ask.name}"


def _conflict(first: Ask, second: Ask, field: str) -> ConflictingParameters:
    return ConflictingParameters(
        f"{first.shown} means {_means(first, field)} but {second.shown} means "
        f"{_means(second, field)}; drop one of them or make them agree",
        parameters=[first.param, second.param],
        values={first.param: first.text, second.param: second.text},
    )


def merge(asks: Sequence[Ask]) -> Want:
    """One `Want` from every ask, or `ConflictingParameters` naming the two that disagree."""
    want = Want(asks=list(asks))
    for ask in asks:
        if ask.archs is not None:
            if want.archs is None:
                want.archs, want.source["archs"] = ask.archs, ask
            else:
                both = tuple(a for a in want.archs if a in ask.archs)
                if not both:
                    raise _conflict(want.source["archs"], ask, "archs")
                want.archs = both
                if len(ask.archs) < len(want.source["archs"].archs or ()):
                    want.source["archs"] = ask  # the more precise one names the model
        for field in ("width", "resolution", "name"):
            value = getattr(ask, field)
            if value is None:
                continue
            have = getattr(want, field)
            if have is None:
                setattr(want, field, value)
                want.source[field] = ask
            elif not (have == value or (field == "width" and _same_width(have, value))):
                raise _conflict(want.source[field], ask, field)
        if ask.origin is not None:
            if ask.exact and want.exact and ask.origin != want.origin:
                raise _conflict(want.source["origin"], ask, "origin")
            if ask.exact or want.origin is None:
                want.origin, want.exact, want.source["origin"] = ask.origin, ask.exact, ask
    return want


# ------------------------------------------------------------------------------ choosing
def _accuracy(v: LoadedVariant) -> float:
    return v.spec.accuracy.top1 if v.spec.accuracy else 0.0


def _same_width(a: float, b: float) -> bool:
    return abs(a - b) < 1e-6


def _fits(v: LoadedVariant, want: Want) -> bool:
    s = v.spec
    return (
        (want.archs is None or s.arch in want.archs)
        and (want.width is None or _same_width(s.width, want.width))
        and (want.resolution is None or s.resolution == want.resolution)
        and (not want.exact or s.origin == want.origin)
        and (want.name is None or v.name == want.name)
    )


def best(matches: Sequence[LoadedVariant], want: Want) -> LoadedVariant:
    """Among variants that all fit ``want``: the rules of the module docstring."""
    if want.archs is not None:
        arch = next(a for a in want.archs if any(v.spec.arch == a for v in matches))
    else:
        arch = max(matches, key=_accuracy).spec.arch
    pool = [v for v in matches if v.spec.arch == arch]
    widest = max(v.spec.width for v in pool)
    pool = [v for v in pool if _same_width(v.spec.width, widest)]
    highest = max(v.spec.resolution for v in pool)
    pool = [v for v in pool if v.spec.resolution == highest]
    return max(pool, key=lambda v: (v.spec.origin == want.origin, _accuracy(v)))


def _distance(want: Want) -> Callable[[LoadedVariant], tuple]:
    """Sort key of "nearest": width first, then resolution, then the model's preference,
    the preferred origin, accuracy."""
    rank = {a: i for i, a in enumerate(want.archs or ())}

    def key(v: LoadedVariant) -> tuple:
        s = v.spec
        return (
            abs(s.width - want.width) if want.width is not None else 0.0,
            abs(s.resolution - want.resolution) if want.resolution is not None else 0,
            rank.get(s.arch, 0),
            s.origin != want.origin,
            -_accuracy(v),
            -s.width,
            -s.resolution,
        )

    return key


def _neighbours(
    pool: Sequence[LoadedVariant], want: Want, attr: str, value: float
) -> list[LoadedVariant]:
    """The nearest loaded value of ``attr`` below and above ``value``, each with the
    variant that would serve it, nearest first."""
    key = _distance(want)
    below = [v for v in pool if getattr(v.spec, attr) < value]
    above = [v for v in pool if getattr(v.spec, attr) > value]
    out = []
    for side, pick in ((below, max), (above, min)):
        if side:
            edge = pick(getattr(v.spec, attr) for v in side)
            out.append(min((v for v in side if getattr(v.spec, attr) == edge), key=key))
    return sorted(out, key=lambda v: (abs(getattr(v.spec, attr) - value), key(v)))


def _fmt(values: Sequence[float]) -> str:
    return ", ".join(f"{x:g}" for x in values) or "none"


def _by_model(pool: Sequence[LoadedVariant], attr: str) -> dict[str, list[float]]:
    out: dict[str, set[float]] = {}
    for v in pool:
        out.setdefault(v.spec.arch, set()).add(getattr(v.spec, attr))
    order = list(MODELS)
    return {m: sorted(out[m]) for m in sorted(out, key=lambda m: (m not in order, m))}


@dataclass(frozen=True)
class Fallback:
    """The request asked for a variant that is not loaded and took the nearest one."""

    asked: str
    served: str
    reason: str

    def header(self) -> str:
        """The value of ``X-Variant-Fallback`` (ASCII: built from canonical names)."""
        return f'nearest; asked="{self.asked}"; served="{self.served}"'


def _unavailable(
    loaded: Sequence[LoadedVariant], want: Want, loaded_models: list[str]
) -> tuple[UnknownModel, list[LoadedVariant]]:
    """Why nothing fits ``want``: the 404 and the nearest loaded variants (best first,
    possibly none: a model that is not loaded has no nearest)."""
    scope = [v for v in loaded if want.archs is None or v.spec.arch in want.archs]
    names = sorted(v.name for v in loaded)
    if not scope and "archs" not in want.source:
        return UnknownModel("no model is loaded"), []
    if not scope:
        ask = want.source["archs"]
        what = "variant" if ask.param == "variant" else "model"
        if ask.param == "variant" or ask.pins_variant:
            msg = f"{what} {_short(ask.text)!r} is not loaded; loaded: {', '.join(names) or 'none'}"
            return UnknownModel(msg, loaded=names), []
        model = f" ({want.model_label()})" if ask.text.lower() != want.model_label() else ""
        msg = (
            f"model {_short(ask.text)!r}{model} is not loaded; loaded models: "
            f"{', '.join(loaded_models) or 'none'}"
        )
        return UnknownModel(msg, loaded=loaded_models), []
    label = want.model_label()
    field = None
    at_width = scope
    if want.width is not None:
        at_width = [v for v in scope if _same_width(v.spec.width, want.width)]
        if not at_width:
            field = "width"
    if (
        field is None
        and want.resolution is not None
        and not any(v.spec.resolution == want.resolution for v in at_width)
    ):
        field = "resolution"
    if field is None:
        field = "origin" if want.exact else "name"
    ask = want.source.get(field) or want.source.get("archs") or want.asks[0]
    if field == "width":
        near = _neighbours(scope, want, "width", want.width or 0.0)
    elif field == "resolution":
        near = _neighbours(at_width, want, "resolution", want.resolution or 0)
    else:
        near = sorted(scope, key=_distance(want))[:1]
    nearest = "; nearest loaded: " + ", ".join(
        (f"{v.spec.width:g}" if field == "width" else f"{v.spec.resolution}") + f" ({v.name})"
        if field in ("width", "resolution")
        else v.name
        for v in near
    )
    details: dict[str, Any] = {"nearest": [v.name for v in near]}
    names_a_variant = ask.param in ("model", "variant", "name") and ask.pins_variant
    if names_a_variant or field in ("origin", "name"):
        what = "variant" if ask.param in ("variant", "name") else ask.param
        msg = f"{what} {_short(ask.text)!r} is not loaded; loaded: {', '.join(names)}{nearest}"
        return UnknownModel(msg, loaded=names, **details), near
    source = "" if ask.param == field else f" (from {ask.shown})"
    if field == "width":
        if want.archs is not None:
            widths = sorted({v.spec.width for v in scope})
            msg = f"width {want.width:g}{source} is not loaded for {label}; loaded widths: "
            msg += _fmt(widths)
            details |= {"model": label, "widths": widths}
        else:
            by_model = _by_model(scope, "width")
            msg = f"width {want.width:g}{source} is not loaded for any model; loaded widths: "
            msg += "; ".join(f"{m}: {_fmt(ws)}" for m, ws in by_model.items())
            details |= {"widths": by_model}
        return UnknownModel(msg + nearest, **details), near
    where = f" at width {want.width:g}" if want.width is not None else ""
    if want.archs is not None:
        resolutions = sorted({v.spec.resolution for v in at_width})
        msg = f"resolution {want.resolution}{source} is not loaded for {label}{where}; loaded: "
        msg += _fmt(resolutions)
        details |= {"model": label, "resolutions": resolutions}
    else:
        by_model = _by_model(at_width, "resolution")
        msg = f"resolution {want.resolution}{source} is not loaded{where} for any model; loaded: "
        msg += "; ".join(f"{m}: {_fmt(rs)}" for m, rs in by_model.items())
        details |= {"resolutions": by_model}
    if want.width is not None:
        details["width"] = want.width
    return UnknownModel(msg + nearest, **details), near


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _suggestion(text: str, loaded: Sequence[LoadedVariant]) -> str:
    """`` (did you mean 'v3-small'?)`` for a near miss, else nothing."""
    words = [*SPELLING_TO_MODEL, *(v.name.lower() for v in loaded)]
    close = difflib.get_close_matches(spelling_key(text)[:64], words, n=1, cutoff=0.8)
    if not close:
        return ""
    word = close[0]
    shown = SPELLING_TO_MODEL.get(word) or next(v.name for v in loaded if v.name.lower() == word)
    return f" (did you mean {shown!r}?)"


def _unknown_name(
    text: str, param: str, loaded: Sequence[LoadedVariant], loaded_models: list[str]
) -> UnknownModel:
    names = sorted(v.name for v in loaded)
    hint = _suggestion(text, loaded)
    if param == "variant":
        return UnknownModel(
            f"variant {_short(text)!r} is not loaded{hint}; loaded: {', '.join(names) or 'none'}",
            loaded=names,
        )
    what = "model" if param == "model" else "model or variant"
    return UnknownModel(
        f"unknown {what} {_short(text)!r}{hint}; allowed: {', '.join(MODELS)} (any case, "
        f"or another library's spelling such as mobilenet_v2, MobileNetV2, or a release "
        f"name such as mobilenet_v1_0.5_160; GET /models lists them); loaded: "
        f"{', '.join(loaded_models) or 'none'}",
        allowed=list(MODELS),
        loaded=loaded_models,
        **({"variants": names} if param != "model" else {}),
    )


def check_fallback(fallback: str | None) -> bool:
    """``True`` for ``"nearest"``; ``None``, ``""`` and ``"none"`` are the default."""
    value = (fallback or "none").strip().lower()
    if value not in FALLBACKS:
        raise InvalidRequest(
            f"fallback: {_short(fallback or '')!r} is not one of {', '.join(FALLBACKS)}",
            allowed=list(FALLBACKS),
        )
    return value == "nearest"


def select(
    loaded: Sequence[LoadedVariant],
    *,
    model: str | None = None,
    width: float | None = None,
    resolution: int | None = None,
    variant: str | None = None,
    name: str | None = None,
    fallback: str | None = None,
) -> LoadedVariant:
    """The variant a request's parameters mean (see the module docstring); with
    ``fallback="nearest"`` a copy of the nearest one carrying a `Fallback`."""
    nearest = check_fallback(fallback)
    models = loaded_models(loaded)
    asks: list[Ask] = []
    for param, text in (("name", name), ("model", model), ("variant", variant)):
        if text is None or not text.strip():
            continue
        ask = read_name(text, param, loaded)
        if ask is None:
            raise _unknown_name(text, param, loaded, models)
        asks.append(ask)
    if width is not None:
        if not (math.isfinite(width) and width > 0):
            raise InvalidRequest(f"width: {width} is not a positive number")
        asks.append(Ask("width", f"{width:g}", width=float(width)))
    if resolution is not None:
        if resolution <= 0:
            raise InvalidRequest(f"resolution: {resolution} is not a positive integer")
        asks.append(Ask("resolution", str(resolution), resolution=int(resolution)))
    want = merge(asks)
    if not loaded:
        if want.empty():
            raise UnknownModel("no model is loaded")
    elif want.empty():
        return max(loaded, key=_accuracy)
    matches = [v for v in loaded if _fits(v, want)]
    if matches:
        return best(matches, want)
    error, near = _unavailable(loaded, want, models)
    if not (nearest and near):
        raise error
    served = near[0]
    return dataclasses.replace(
        served, fallback=Fallback(asked=want.asked(), served=served.name, reason=error.message)
    )


def loaded_models(loaded: Sequence[LoadedVariant]) -> list[str]:
    """The model names that mean at least one loaded variant, in ``MODELS`` order."""
    archs = {v.spec.arch for v in loaded}
    return [m for m, n in MODELS.items() if any(a in archs for a in n.archs)]
