"""The weights directory: converted ``<variant>.safetensors`` files and ``manifest.json``.

Every write is atomic (temp file in the same directory, fsync, ``os.replace``), so an
interrupted or failed fetch never leaves a half-written file behind, and the manifest
records the sha256 of each converted file so corrupt weights are never served.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import WeightsError
from app.weights.specs import VariantSpec

if TYPE_CHECKING:  # torch is optional (the `torch` extra): imported only where converting
    import torch
    from torch import nn

TORCH_EXTRA_HINT = "pip install 'mobilenet-serve[torch]'"


def torch_available() -> bool:
    """Whether the torch extra is installed (checked without importing torch)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # blocked or half-installed: as good as absent
        return False


MANIFEST = "manifest.json"
SOURCES = "sources"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path beside ``final``; on success it replaces ``final``, else vanishes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with tmp_path.open("rb") as f:
            os.fsync(f.fileno())
        tmp_path.chmod(0o644)  # mkstemp makes 0600; replicas may run as another user
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(weights_dir: Path) -> Iterator[None]:
    """Serialise manifest updates between processes (replicas fetching at once)."""
    weights_dir.mkdir(parents=True, exist_ok=True)
    with (weights_dir / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_manifest(weights_dir: Path) -> dict[str, Any]:
    path = weights_dir / MANIFEST
    if not path.exists():
        return {"format": FORMAT_VERSION, "variants": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(
            f"{path} is unreadable ({exc}); re-run `mobilenet-serve weights fetch --force`"
        ) from exc
    data.setdefault("variants", {})
    return data


def write_variant(
    weights_dir: Path, spec: VariantSpec, state: dict[str, torch.Tensor], *, entry: dict[str, Any]
) -> Path:
    """Atomically write one converted variant and record it in the manifest."""
    from safetensors.torch import save_file

    final = weights_dir / spec.filename
    metadata = {
        "variant": spec.name,
        "arch": spec.arch,
        "width": str(spec.width),
        "resolution": str(spec.resolution),
        "origin": spec.origin,
        "num_classes": str(spec.num_classes),
        "sources": json.dumps([s.sha256 for s in spec.sources]),
    }
    with atomic_path(final) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        digest = sha256_file(tmp)
    with _locked(weights_dir):
        manifest = read_manifest(weights_dir)
        manifest["format"] = FORMAT_VERSION
        manifest["variants"][spec.name] = {
            **entry,
            "file": spec.filename,
            "sha256": digest,
            "bytes": final.stat().st_size,
        }
        with atomic_path(weights_dir / MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return final


def write_source(weights_dir: Path, filename: str, data: bytes) -> Path:
    """Keep a verified upstream file (the LiteRT backend runs the original ``.tflite``)."""
    final = weights_dir / SOURCES / filename
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return final


def source_paths(weights_dir: Path, spec: VariantSpec) -> list[Path] | None:
    """The kept upstream files of ``spec``, or None if any is missing."""
    paths = [weights_dir / SOURCES / s.filename for s in spec.sources]
    return paths if all(p.is_file() for p in paths) else None


def write_sources_entry(weights_dir: Path, spec: VariantSpec, *, entry: dict[str, Any]) -> None:
    """Record a TF-origin variant kept only as its verified upstream files (fetched
    without torch): the LiteRT backend serves it; torch needs a later conversion."""
    with _locked(weights_dir):
        manifest = read_manifest(weights_dir)
        manifest["format"] = FORMAT_VERSION
        manifest["variants"][spec.name] = {**entry, "file": None, "sha256": None, "bytes": 0}
        with atomic_path(weights_dir / MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def is_current(weights_dir: Path, spec: VariantSpec, *, converted: bool = True) -> bool:
    """True when the variant's manifest entry matches its sources and its files check out:
    the converted file (unless ``converted`` is False: a TF-origin variant kept only as
    its upstream files is current for LiteRT) and the kept upstream files."""
    entry = read_manifest(weights_dir)["variants"].get(spec.name)
    if not entry:
        return False
    if [s["sha256"] for s in entry.get("sources", [])] != [s.sha256 for s in spec.sources]:
        return False
    if entry.get("file"):
        path = weights_dir / spec.filename
        if not path.exists() or sha256_file(path) != entry.get("sha256"):
            return False
    elif converted or spec.origin != "tflite":
        return False
    return spec.origin != "tflite" or sources_intact(weights_dir, spec)


def sources_intact(weights_dir: Path, spec: VariantSpec) -> bool:
    """The kept upstream files exist and still match their published sha256."""
    paths = source_paths(weights_dir, spec)
    return paths is not None and all(
        sha256_file(p).startswith(s.sha256) for p, s in zip(paths, spec.sources, strict=True)
    )


def present_variants(weights_dir: Path) -> list[str]:
    """Names of variants with a manifest entry and their files: the converted file, or
    (fetched without torch) the kept upstream files of a TF-origin variant."""
    entries = read_manifest(weights_dir)["variants"]
    return [
        name
        for name, e in entries.items()
        if (e.get("file") and (weights_dir / e["file"]).is_file())
        or (not e.get("file") and _sources_present(weights_dir, e))
    ]


def _sources_present(weights_dir: Path, entry: dict[str, Any]) -> bool:
    sources = entry.get("sources") or []
    return bool(sources) and all(
        (weights_dir / SOURCES / s.get("filename", "")).is_file() for s in sources
    )


def load_model(weights_dir: Path, spec: VariantSpec, *, verify: bool = True) -> nn.Module:
    """Build ``spec``'s architecture and load its verified weights (eval mode, CPU)."""
    path = weights_dir / spec.filename
    entry = read_manifest(weights_dir)["variants"].get(spec.name)
    if entry is not None and not entry.get("file"):
        raise WeightsError(
            f"{spec.name} was fetched without torch (upstream files only, for LiteRT); "
            f"for the torch backends: {TORCH_EXTRA_HINT}, then `mobilenet-serve weights "
            f"fetch --force {spec.name}`",
            variant=spec.name,
        )
    if entry is None or not path.exists():
        raise WeightsError(
            f"weights for {spec.name} are missing from {weights_dir}; run "
            f"`mobilenet-serve weights fetch {spec.name}`",
            variant=spec.name,
        )
    if verify:
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise WeightsError(
                f"{path} fails its sha256 check (manifest {entry['sha256'][:12]}…, "
                f"file {actual[:12]}…); re-run `mobilenet-serve weights fetch "
                f"--force {spec.name}`",
                variant=spec.name,
            )
    from safetensors.torch import load_file

    from app.models import build_model

    model = build_model(
        spec.arch, width=spec.width, num_classes=spec.num_classes, origin=spec.origin
    )
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except (RuntimeError, OSError) as exc:
        raise WeightsError(f"{path} does not fit {spec.name}: {exc}", variant=spec.name) from exc
    return model.eval()
