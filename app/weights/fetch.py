"""Fetch upstream weight files (HTTPS, a mirror directory or URL), verify, convert, store.

``fetch_variants`` is the Python API behind ``mobilenet-serve weights fetch``. For each
variant: every upstream file comes from the mirror (a directory, or an http(s) base URL
such as an internal artifact server) if it holds the file, else from its URL (streamed,
with a progress bar); its sha256 is checked before anything is parsed; it is converted
in memory to the family's state_dict (only with torch installed: without it a TF-origin
variant keeps just its verified upstream files, which is all LiteRT needs); the result
is written atomically. A variant already converted from the same sources is skipped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import httpx

from app.errors import WeightsError
from app.weights import store
from app.weights.specs import SPECS, SPECS_BY_NAME, SourceFile, VariantSpec
from app.weights.store import torch_available

if TYPE_CHECKING:  # torch is optional (the `torch` extra); imported only to convert
    import torch

log = logging.getLogger(__name__)
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024

Status = Literal["fetched", "up-to-date", "failed"]


@dataclass(frozen=True)
class FetchResult:
    variant: str
    status: Status
    message: str = ""


Mirror = Path | str  # a directory, or an http(s) base URL (an internal artifact server)


def is_url(mirror: Mirror | None) -> bool:
    return isinstance(mirror, str) and mirror.startswith(("http://", "https://"))


def mirror_url(base: str, filename: str) -> str:
    """``filename`` under the base URL (with or without its trailing slash)."""
    return f"{base.rstrip('/')}/{filename}"


def _mirror_holds(mirror: Mirror, filename: str, client: httpx.Client | None) -> bool:
    if not is_url(mirror):
        return (Path(mirror) / filename).is_file()
    own = client is None
    client = client or httpx.Client(follow_redirects=True, timeout=30.0)
    try:
        return client.head(mirror_url(str(mirror), filename)).status_code == 200
    except httpx.HTTPError as exc:
        raise WeightsError(f"weights mirror {mirror} cannot be reached: {exc!r}") from exc
    finally:
        if own:
            client.close()


def default_variants(
    mirror: Mirror | None, *, client: httpx.Client | None = None
) -> list[VariantSpec]:
    """With a mirror: the variants whose files it holds. Without: every variant."""
    if mirror is None:
        return list(SPECS)
    return [s for s in SPECS if all(_mirror_holds(mirror, f.filename, client) for f in s.sources)]


def resolve_variants(names: Iterable[str]) -> list[VariantSpec]:
    specs = []
    for name in names:
        if name not in SPECS_BY_NAME:
            raise WeightsError(f"unknown variant {name!r}; known: {', '.join(SPECS_BY_NAME)}")
        specs.append(SPECS_BY_NAME[name])
    return specs


def _check_sha256(data: bytes, source: SourceFile, origin: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if not actual.startswith(source.sha256):
        raise WeightsError(
            f"sha256 mismatch for {source.filename} from {origin}: expected {source.sha256}, "
            f"got {actual}. The file is corrupt or not the expected release; nothing was written."
        )


def download(
    url: str, *, timeout: float = 60.0, progress: bool = True, client: httpx.Client | None = None
) -> bytes:
    """GET ``url`` (redirects followed) into memory; refuse errors and short transfers."""
    own = client is None
    client = client or httpx.Client(follow_redirects=True, timeout=timeout)
    expected: int | None = None
    buf = bytearray()
    try:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise WeightsError(
                    f"HTTP {response.status_code} fetching {url}", http_status=response.status_code
                )
            expected = int(response.headers.get("content-length", 0)) or None
            bar = _progress_bar(url.rsplit("/", 1)[-1], expected) if progress else None
            for chunk in response.iter_bytes(1 << 16):
                buf += chunk
                if bar is not None:
                    bar.update(len(chunk))
                if len(buf) > MAX_DOWNLOAD_BYTES:
                    raise WeightsError(f"{url} is larger than {MAX_DOWNLOAD_BYTES} bytes")
            if bar is not None:
                bar.close()
    except httpx.HTTPError as exc:
        if expected is not None and len(buf) < expected:  # h11 refuses a short body first
            raise WeightsError(
                f"truncated download of {url}: the connection closed before "
                f"all {expected} bytes arrived ({exc!r})"
            ) from exc
        raise WeightsError(f"download of {url} failed: {exc!r}") from exc
    finally:
        if own:
            client.close()
    if expected is not None and len(buf) != expected:
        raise WeightsError(f"truncated download of {url}: got {len(buf)} of {expected} bytes")
    return bytes(buf)


def _progress_bar(name: str, total: int | None):
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc=name,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
    )


def obtain(
    source: SourceFile,
    *,
    mirror: Mirror | None,
    progress: bool = True,
    client: httpx.Client | None = None,
) -> tuple[bytes, str]:
    """The verified bytes of one upstream file and where they came from: the mirror
    (directory or URL) if it holds the file, else upstream. Mirror or not, the sha256
    is checked before anything is kept."""
    data: bytes | None = None
    if is_url(mirror):
        url = mirror_url(str(mirror), source.filename)
        try:
            data, where = download(url, progress=progress, client=client), f"mirror:{url}"
        except WeightsError as exc:
            if exc.details.get("http_status") != 404:  # only "not there" falls through
                raise
    elif mirror is not None and (Path(mirror) / source.filename).is_file():
        where = f"mirror:{Path(mirror) / source.filename}"
        data = (Path(mirror) / source.filename).read_bytes()
    if data is None:
        where = source.url
        data = download(source.url, progress=progress, client=client)
    _check_sha256(data, source, where)
    return data, where


def convert(spec: VariantSpec, files: list[bytes]) -> dict[str, torch.Tensor]:
    """Upstream bytes -> a state_dict for ``build_model(spec.arch, origin=spec.origin)``."""
    import torch

    from app.models import build_model
    from app.weights.tflite_import import TfliteGraph, tflite_state_dict

    model = build_model(
        spec.arch, width=spec.width, num_classes=spec.num_classes, origin=spec.origin
    )
    if spec.origin == "tflite":
        graphs = [TfliteGraph(data) for data in files]
        shape = graphs[0].input_shape()
        if shape[1:3] != (spec.resolution, spec.resolution):
            raise WeightsError(f"{spec.name}: file input is {shape}, spec says {spec.resolution}")
        quant = graphs[0].input_quant()
        pre = spec.preprocessing
        if quant is not None:  # the spec's normalisation must equal the file's input quant
            mean = float(quant.zero_point[0]) / 255
            std = 1 / (float(quant.scale[0]) * 255)
            if abs(pre.mean[0] - mean) > 1e-6 or abs(pre.std[0] - std) > 1e-6:
                raise WeightsError(
                    f"{spec.name}: spec preprocessing mean/std {pre.mean[0]:.6f}/"
                    f"{pre.std[0]:.6f} differ from the file's input "
                    f"quantization {mean:.6f}/{std:.6f}"
                )
        state = tflite_state_dict(
            model, graphs, drop_background=spec.upstream_classes == spec.num_classes + 1
        )
    else:
        # weights_only: never unpickle arbitrary objects from a downloaded file.
        try:
            state = torch.load(io.BytesIO(files[0]), map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError, zip errors: not a WeightsError otherwise
            raise WeightsError(
                f"{spec.name}: {spec.sources[0].filename} is not a loadable "
                f"weights-only checkpoint: {exc}"
            ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{spec.name}: converted weights do not fit the model: {exc}") from exc
    return model.state_dict()


def fetch_variant(
    spec: VariantSpec,
    *,
    weights_dir: Path,
    mirror: Mirror | None,
    force: bool = False,
    progress: bool = True,
    client: httpx.Client | None = None,
) -> FetchResult:
    """Fetch, verify, convert and store one variant (idempotent).

    Without torch installed, a TF-origin variant is kept as its verified upstream files
    only (what the LiteRT backend runs); a torchvision-origin one cannot be fetched."""
    with_torch = torch_available()
    if not force and store.is_current(weights_dir, spec, converted=with_torch):
        return FetchResult(spec.name, "up-to-date")
    if not with_torch and spec.origin != "tflite":
        raise WeightsError(
            f"{spec.name} is a torchvision checkpoint and needs torch: {store.TORCH_EXTRA_HINT}",
            variant=spec.name,
        )
    files, origins = [], []
    for source in spec.sources:
        data, where = obtain(source, mirror=mirror, progress=progress, client=client)
        files.append(data)
        origins.append(where)
    state = convert(spec, files) if with_torch else None
    if spec.origin == "tflite":
        for source, data in zip(spec.sources, files, strict=True):
            store.write_source(weights_dir, source.filename, data)
    entry = {
        "origin": spec.origin,
        "sources": [
            {"filename": s.filename, "url": s.url, "sha256": s.sha256, "from": w}
            for s, w in zip(spec.sources, origins, strict=True)
        ],
        "converted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "license": spec.license,
    }
    if state is None:
        store.write_sources_entry(weights_dir, spec, entry=entry)
        return FetchResult(spec.name, "fetched", ", ".join(origins) + " (LiteRT only: no torch)")
    store.write_variant(weights_dir, spec, state, entry=entry)
    return FetchResult(spec.name, "fetched", ", ".join(origins))


def fetch_variants(
    specs: Iterable[VariantSpec],
    *,
    weights_dir: Path,
    mirror: Mirror | None,
    force: bool = False,
    progress: bool = True,
    on_result: Callable[[FetchResult], None] | None = None,
) -> list[FetchResult]:
    """Fetch several variants; one failure does not stop the others."""
    results = []
    with httpx.Client(follow_redirects=True, timeout=60.0) as client:
        for spec in specs:
            try:
                result = fetch_variant(
                    spec,
                    weights_dir=weights_dir,
                    mirror=mirror,
                    force=force,
                    progress=progress,
                    client=client,
                )
            except WeightsError as exc:
                result = FetchResult(spec.name, "failed", exc.message)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results
