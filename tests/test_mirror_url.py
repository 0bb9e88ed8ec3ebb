"""``MOBILENET_WEIGHTS_MIRROR`` as an http(s) base URL (an internal artifact server).

A ThreadingHTTPServer on 127.0.0.1 serves a copy of the shared mirror directory, the way
``python -m http.server --bind 127.0.0.1`` does in the Docker build. Every file is still
sha256-checked; a corrupt file is refused; a file the server does not have (404) comes
from upstream (here a second loopback server standing in for it); an unreachable mirror
fails with its address.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from app.cli import main as cli_main
from app.errors import WeightsError
from app.settings import Settings
from app.weights import SPECS_BY_NAME, default_variants, fetch_variants
from app.weights.fetch import fetch_variant
from app.weights.store import SOURCES, is_current, read_manifest, sha256_file
from tests.shared_data import MIRROR_NAMES

MIRROR_VARIANTS = set(MIRROR_NAMES)
SMALL = SPECS_BY_NAME["v1-0.25-128"]
TWO_FILES = SPECS_BY_NAME["v1-1.0-224"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path))  # type: ignore[attr-defined]
        super().do_GET()

    def do_HEAD(self) -> None:
        self.server.requests.append(("HEAD", self.path))  # type: ignore[attr-defined]
        super().do_HEAD()


@contextlib.contextmanager
def _serve(directory: Path) -> Iterator[tuple[str, http.server.ThreadingHTTPServer]]:
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = []  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mirror_copy(tmp_path: Path, mirror_dir: Path) -> Path:
    copy = tmp_path / "served"
    shutil.copytree(mirror_dir, copy)
    return copy


def test_settings_keep_a_url_and_still_take_a_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOBILENET_WEIGHTS_MIRROR", "https://artifacts.example//ml/mobilenet/")
    assert Settings().weights_mirror == "https://artifacts.example//ml/mobilenet/"
    monkeypatch.setenv("MOBILENET_WEIGHTS_MIRROR", "../shared/pretrained/tflite")
    assert Settings().weights_mirror == Path("../shared/pretrained/tflite")


def test_default_variants_are_what_the_url_mirror_holds(mirror_copy: Path) -> None:
    with _serve(mirror_copy) as (url, server):
        assert {s.name for s in default_variants(url)} == MIRROR_VARIANTS
        assert {m for m, _ in server.requests} == {"HEAD"}  # asked, nothing downloaded


def test_fetch_from_a_url_mirror_verifies_and_records_it(
    mirror_copy: Path, mirror_dir: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "weights"
    with _serve(mirror_copy) as (url, server):
        base = url.rstrip("/")  # with or without the trailing slash
        results = fetch_variants(
            [SMALL, TWO_FILES], weights_dir=weights, mirror=base, progress=False
        )
    assert [r.status for r in results] == ["fetched", "fetched"], results
    got = sorted(p for m, p in server.requests if m == "GET")
    assert got == sorted(f"/{s.filename}" for s in [*SMALL.sources, *TWO_FILES.sources])
    manifest = read_manifest(weights)["variants"]
    for spec in (SMALL, TWO_FILES):
        assert is_current(weights, spec)
        for source, recorded in zip(spec.sources, manifest[spec.name]["sources"], strict=True):
            assert recorded["from"] == f"mirror:{base}/{source.filename}"
            kept = weights / SOURCES / source.filename
            assert sha256_file(kept) == sha256_file(mirror_dir / source.filename)


def test_a_corrupt_file_on_the_url_mirror_is_refused(mirror_copy: Path, tmp_path: Path) -> None:
    target = mirror_copy / SMALL.sources[0].filename
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    weights = tmp_path / "weights"
    with _serve(mirror_copy) as (url, _), pytest.raises(WeightsError, match="sha256 mismatch"):
        fetch_variant(SMALL, weights_dir=weights, mirror=url, progress=False)
    assert not (weights / SMALL.filename).exists()
    assert not (weights / SOURCES / SMALL.sources[0].filename).exists()
    assert SMALL.name not in read_manifest(weights)["variants"]


def test_a_file_the_url_mirror_lacks_comes_from_upstream(mirror_copy: Path, tmp_path: Path) -> None:
    upstream_dir = tmp_path / "upstream"
    upstream_dir.mkdir()
    name = SMALL.sources[0].filename
    shutil.move(mirror_copy / name, upstream_dir / name)  # the mirror answers 404 for it
    with _serve(mirror_copy) as (url, mirror), _serve(upstream_dir) as (up, upstream):
        spec = replace(SMALL, sources=[replace(SMALL.sources[0], url=f"{up}{name}")])
        result = fetch_variant(spec, weights_dir=tmp_path / "w", mirror=url, progress=False)
    assert result.status == "fetched" and result.message.startswith(f"{up}{name}")
    assert ("GET", f"/{name}") in mirror.requests and ("GET", f"/{name}") in upstream.requests


def test_an_unreachable_url_mirror_fails_naming_it(tmp_path: Path) -> None:
    with _serve(tmp_path) as (url, _):
        pass  # the port is closed again
    with pytest.raises(WeightsError, match=r"127\.0\.0\.1"):
        fetch_variant(SMALL, weights_dir=tmp_path / "w", mirror=url, progress=False)


def test_cli_weights_fetch_takes_a_mirror_url(
    mirror_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "weights"
    with _serve(mirror_copy) as (url, _):
        code = cli_main(["weights", "fetch", "--mirror", url, "--dir", str(weights), SMALL.name])
    assert code == 0, capsys.readouterr().err
    assert is_current(weights, SMALL)
    assert f"mirror:{url}" in capsys.readouterr().err
