"""The weights pipeline end to end: mirror or HTTP -> sha256 check -> convert -> atomic store.

HTTP runs against a local server on 127.0.0.1 that serves the mirror's files at the
paths of the specs' upstream URLs, so nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from app.errors import WeightsError
from app.weights import SPECS_BY_NAME, default_variants, fetch_variants, load_model
from app.weights.fetch import download, fetch_variant
from app.weights.specs import TORCHVISION, VariantSpec
from app.weights.store import MANIFEST, SOURCES, present_variants, read_manifest, sha256_file
from tests.shared_data import MIRROR_NAMES

torch.set_num_threads(2)

MIRROR_VARIANTS = set(MIRROR_NAMES)
SMALL = SPECS_BY_NAME["v1-0.25-128"]  # the smallest file: fastest to move and convert
TWO_FILES = SPECS_BY_NAME["v1-1.0-224"]  # extractor + head, the head at another path


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: (mtime_ns, sha256)."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, sha256_file(p))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _assert_nothing_written(weights_dir: Path, spec: VariantSpec) -> None:
    assert not (weights_dir / spec.filename).exists()
    leftovers = [p for p in weights_dir.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    assert spec.name not in read_manifest(weights_dir)["variants"]
    for source in spec.sources:
        assert not (weights_dir / SOURCES / source.filename).exists()


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _flip_one_byte(path: Path, *, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


# --- everything the mirror holds ----------------------------------------------------------
@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path):
    out = tmp_path_factory.mktemp("fetched")
    specs = default_variants(mirror_dir)
    reported = []
    results = fetch_variants(
        specs, weights_dir=out, mirror=mirror_dir, progress=False, on_result=reported.append
    )
    return out, specs, results, reported


def test_the_mirror_yields_all_seven_variants(fetched, mirror_dir: Path) -> None:
    out, specs, results, reported = fetched
    assert {s.name for s in specs} == MIRROR_VARIANTS
    assert reported == results
    assert {r.variant: r.status for r in results} == dict.fromkeys(MIRROR_VARIANTS, "fetched")
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["variants"]) == MIRROR_VARIANTS
    assert set(present_variants(out)) == MIRROR_VARIANTS
    for spec in specs:
        entry = manifest["variants"][spec.name]
        path = out / spec.filename
        assert entry["file"] == spec.filename
        assert entry["sha256"] == sha256_file(path)
        assert entry["bytes"] == path.stat().st_size
        assert entry["origin"] == "tflite"
        assert entry["license"] == spec.license
        assert [s["sha256"] for s in entry["sources"]] == [s.sha256 for s in spec.sources]
        assert [s["url"] for s in entry["sources"]] == [s.url for s in spec.sources]
        for source, recorded in zip(spec.sources, entry["sources"], strict=True):
            assert recorded["from"] == f"mirror:{mirror_dir / source.filename}"
            kept = out / SOURCES / source.filename  # the LiteRT backend runs these
            assert sha256_file(kept) == source.sha256
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_every_converted_file_loads_into_its_architecture(fetched) -> None:
    out, specs, _, _ = fetched
    for spec in specs:
        model = load_model(out, spec)
        assert not model.training
        with torch.no_grad():
            logits = model(torch.zeros(1, 3, spec.resolution, spec.resolution))
        assert logits.shape == (1, 1000)
        assert torch.isfinite(logits).all()
        assert logits.std() > 0.1  # real weights, not an all-zero or constant head


def test_a_second_run_is_idempotent(fetched, mirror_dir: Path) -> None:
    out, specs, _, _ = fetched
    before = _snapshot(out)
    results = fetch_variants(specs, weights_dir=out, mirror=mirror_dir, progress=False)
    assert {r.variant: r.status for r in results} == dict.fromkeys(MIRROR_VARIANTS, "up-to-date")
    assert _snapshot(out) == before  # same files, same bytes, same mtimes


def test_force_and_a_tampered_file_both_refetch(tmp_path: Path, mirror_dir: Path) -> None:
    [first] = fetch_variants([SMALL], weights_dir=tmp_path, mirror=mirror_dir, progress=False)
    assert first.status == "fetched"
    path = tmp_path / SMALL.filename
    good = load_file(path)
    mtime = path.stat().st_mtime_ns

    [forced] = fetch_variants(
        [SMALL], weights_dir=tmp_path, mirror=mirror_dir, force=True, progress=False
    )
    assert forced.status == "fetched"
    assert path.stat().st_mtime_ns != mtime
    _assert_same_tensors(load_file(path), good)  # conversion is deterministic

    _flip_one_byte(path, at=0.9)
    [repaired] = fetch_variants([SMALL], weights_dir=tmp_path, mirror=mirror_dir, progress=False)
    assert repaired.status == "fetched"
    _assert_same_tensors(load_file(path), good)
    assert read_manifest(tmp_path)["variants"][SMALL.name]["sha256"] == sha256_file(path)
    load_model(tmp_path, SMALL)


# --- a corrupted mirror -------------------------------------------------------------------
@pytest.fixture
def bad_mirror(tmp_path: Path, mirror_dir: Path) -> Path:
    copy = tmp_path / "mirror"
    shutil.copytree(mirror_dir, copy)
    return copy


def test_a_corrupted_mirror_file_is_refused_and_leaves_nothing(
    bad_mirror: Path, tmp_path: Path
) -> None:
    _flip_one_byte(bad_mirror / SMALL.sources[0].filename)
    other = SPECS_BY_NAME["v1-0.5-160"]
    weights = tmp_path / "weights"
    results = fetch_variants([SMALL, other], weights_dir=weights, mirror=bad_mirror, progress=False)
    bad, good = results
    assert bad.variant == SMALL.name and bad.status == "failed"
    assert "sha256" in bad.message
    assert SMALL.sources[0].filename in bad.message
    assert SMALL.sources[0].sha256 in bad.message
    _assert_nothing_written(weights, SMALL)
    # One failure does not stop the others.
    assert good.variant == other.name and good.status == "fetched"
    assert set(read_manifest(weights)["variants"]) == {other.name}
    assert sorted(p.name for p in weights.glob("*.safetensors")) == [other.filename]

    with pytest.raises(WeightsError, match="sha256 mismatch"):
        fetch_variant(SMALL, weights_dir=weights, mirror=bad_mirror, progress=False)
    _assert_nothing_written(weights, SMALL)


def test_a_corrupted_second_file_keeps_the_first_out_too(bad_mirror: Path, tmp_path: Path) -> None:
    head = TWO_FILES.sources[1]
    assert head.role == "head"
    _flip_one_byte(bad_mirror / head.filename)
    weights = tmp_path / "weights"
    [result] = fetch_variants([TWO_FILES], weights_dir=weights, mirror=bad_mirror, progress=False)
    assert result.status == "failed"
    assert "sha256" in result.message and head.filename in result.message
    _assert_nothing_written(weights, TWO_FILES)  # not even the verified extractor


def test_a_file_for_another_variant_is_refused(bad_mirror: Path, tmp_path: Path) -> None:
    # Right bytes, wrong variant: the 0.5/160 file under the 0.25/128 spec's name *and*
    # sha256 would pass the hash check; the converter must still refuse it.
    wrong = (bad_mirror / "mobilenet_v1_0.5_160_quant.tflite").read_bytes()
    (bad_mirror / SMALL.sources[0].filename).write_bytes(wrong)
    spec = replace(
        SMALL, sources=(replace(SMALL.sources[0], sha256=hashlib.sha256(wrong).hexdigest()),)
    )
    weights = tmp_path / "weights"
    with pytest.raises(WeightsError, match="160"):
        fetch_variant(spec, weights_dir=weights, mirror=bad_mirror, progress=False)
    _assert_nothing_written(weights, spec)


# --- HTTP(S) path against a local server --------------------------------------------------
class _Server:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path
                server.hits[path] = server.hits[path] + 1
                if path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", path.removeprefix("/redirect"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                truncated = path.startswith("/truncated/")
                body = server.files.get(path.removeprefix("/truncated"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # A truncated transfer: the promised length, half the body, then close.
                self.wfile.write(body[: len(body) // 2] if truncated else body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def server(mirror_dir: Path) -> Iterator[_Server]:
    files = {
        urlparse(s.url).path: (mirror_dir / s.filename).read_bytes()
        for spec in SPECS_BY_NAME.values()
        if spec.origin == "tflite"
        for s in spec.sources
    }
    srv = _Server(files)
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def _local(spec: VariantSpec, base: str, prefix: str = "", *, only: int | None = None):
    """``spec`` with its upstream URLs moved to the local server (under ``prefix``)."""
    sources = tuple(
        replace(s, url=f"{base}{prefix if only in (None, i) else ''}{urlparse(s.url).path}")
        for i, s in enumerate(spec.sources)
    )
    return replace(spec, sources=sources)


def test_https_path_fetches_and_converts(server: _Server, fetched, tmp_path: Path) -> None:
    mirrored, _, _, _ = fetched
    specs = [_local(SMALL, server.base), _local(TWO_FILES, server.base)]
    empty_mirror = tmp_path / "empty"
    empty_mirror.mkdir()
    weights = tmp_path / "weights"
    hits = Counter(server.hits)
    results = fetch_variants(specs, weights_dir=weights, mirror=empty_mirror, progress=False)
    assert [r.status for r in results] == ["fetched", "fetched"], results
    manifest = read_manifest(weights)["variants"]
    for spec in specs:
        entry = manifest[spec.name]
        for source, recorded in zip(spec.sources, entry["sources"], strict=True):
            assert recorded["from"] == source.url
            path = urlparse(source.url).path
            assert server.hits[path] - hits[path] == 1
            assert sha256_file(weights / SOURCES / source.filename) == source.sha256
        # Same bytes in, same weights out, whichever way the bytes came.
        _assert_same_tensors(
            load_file(weights / spec.filename), load_file(mirrored / spec.filename)
        )
        load_model(weights, spec)


def test_redirects_are_followed(server: _Server, tmp_path: Path) -> None:
    spec = _local(SMALL, server.base, "/redirect")
    result = fetch_variant(spec, weights_dir=tmp_path, mirror=None, progress=True)
    assert result.status == "fetched"
    assert server.hits[f"/redirect{urlparse(SMALL.sources[0].url).path}"] >= 1
    load_model(tmp_path, spec)


def test_http_404_is_a_clear_error_and_writes_nothing(server: _Server, tmp_path: Path) -> None:
    spec = _local(TWO_FILES, server.base, "/missing", only=1)  # extractor fine, head 404
    [result] = fetch_variants([spec], weights_dir=tmp_path, mirror=None, progress=False)
    assert result.status == "failed"
    assert "404" in result.message
    assert spec.sources[1].url in result.message
    _assert_nothing_written(tmp_path, spec)
    assert not (tmp_path / MANIFEST).exists()


def test_a_truncated_transfer_is_refused_and_writes_nothing(
    server: _Server, tmp_path: Path
) -> None:
    spec = _local(SMALL, server.base, "/truncated")
    [result] = fetch_variants([spec], weights_dir=tmp_path, mirror=None, progress=False)
    assert result.status == "failed"
    assert "truncated" in result.message
    assert spec.sources[0].url in result.message
    _assert_nothing_written(tmp_path, spec)
    assert not (tmp_path / MANIFEST).exists()

    with pytest.raises(WeightsError, match="truncated"):
        download(spec.sources[0].url, progress=False)


def test_an_unreachable_host_is_a_clear_error(tmp_path: Path) -> None:
    spec = _local(SMALL, "http://127.0.0.1:9")  # discard port: nothing listens there
    [result] = fetch_variants([spec], weights_dir=tmp_path, mirror=None, progress=False)
    assert result.status == "failed"
    assert spec.sources[0].url in result.message
    _assert_nothing_written(tmp_path, spec)


# --- load_model refuses tampered weights --------------------------------------------------
def test_load_model_refuses_a_tampered_file(tmp_path: Path, mirror_dir: Path) -> None:
    fetch_variant(SMALL, weights_dir=tmp_path, mirror=mirror_dir, progress=False)
    load_model(tmp_path, SMALL)
    path = tmp_path / SMALL.filename
    _flip_one_byte(path, at=0.9)  # in the tensor data: the file still parses
    with pytest.raises(WeightsError, match="sha256") as exc:
        load_model(tmp_path, SMALL)
    assert str(path) in exc.value.message
    assert exc.value.details == {"variant": SMALL.name}
    load_model(tmp_path, SMALL, verify=False)  # it is the check that refuses, nothing else


def test_load_model_refuses_weights_missing_from_the_manifest(
    tmp_path: Path, mirror_dir: Path
) -> None:
    with pytest.raises(WeightsError, match="missing"):
        load_model(tmp_path, SMALL)
    fetch_variant(SMALL, weights_dir=tmp_path, mirror=mirror_dir, progress=False)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    del manifest["variants"][SMALL.name]
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="missing"):
        load_model(tmp_path, SMALL)


# --- torchvision origin: a .pth through torch.load(weights_only=True) ---------------------
TV_SMALL = SPECS_BY_NAME["v3-small-1.0-224-torchvision"]


def _pth_spec(mirror: Path, state: object, stem: str = "mobilenet_v3_small"):
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    prefix = hashlib.sha256(data).hexdigest()[:8]
    filename = f"{stem}-{prefix}.pth"
    mirror.mkdir(exist_ok=True)
    (mirror / filename).write_bytes(data)
    source = replace(
        TV_SMALL.sources[0], filename=filename, sha256=prefix, url=f"{TORCHVISION}/{filename}"
    )
    return replace(TV_SMALL, sources=(source,))


def test_a_torchvision_checkpoint_converts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v3_small(weights=None).eval()
    spec = _pth_spec(tmp_path / "mirror", reference.state_dict())
    weights = tmp_path / "weights"
    result = fetch_variant(spec, weights_dir=weights, mirror=tmp_path / "mirror", progress=False)
    assert result.status == "fetched"
    entry = read_manifest(weights)["variants"][spec.name]
    assert entry["origin"] == "torchvision"
    assert entry["sources"][0]["sha256"] == spec.sources[0].sha256
    assert not (weights / SOURCES).exists()  # only TF Lite sources are kept
    model = load_model(weights, spec)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), reference.features(x), rtol=0, atol=0)
    again = fetch_variant(spec, weights_dir=weights, mirror=tmp_path / "mirror", progress=False)
    assert again.status == "up-to-date"


def test_a_checkpoint_for_another_architecture_is_refused(tmp_path: Path) -> None:
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    spec = _pth_spec(tmp_path / "mirror", state)
    with pytest.raises(WeightsError, match="do not fit"):
        fetch_variant(spec, weights_dir=tmp_path / "w", mirror=tmp_path / "mirror", progress=False)
    _assert_nothing_written(tmp_path / "w", spec)


def _pwn(marker: str) -> None:
    Path(marker).write_text("code ran while unpickling")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_pwn, (self.marker,))


def test_a_pickle_payload_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    spec = _pth_spec(tmp_path / "mirror", {"features.0.0.weight": _Payload(marker)})
    assert not marker.exists()
    weights = tmp_path / "weights"
    [result] = fetch_variants(
        [spec], weights_dir=weights, mirror=tmp_path / "mirror", progress=False
    )
    assert result.status == "failed"
    assert "weights-only" in result.message
    assert spec.sources[0].filename in result.message
    assert not marker.exists()
    _assert_nothing_written(weights, spec)
