"""``mobilenet-serve``: weights management in-process, predict/models against a real server.

The server tests start ``mobilenet-serve serve`` as a subprocess on a free loopback port
over a weights dir holding two small variants, talk to it through ``app.cli.main`` and
finally stop it with SIGTERM, which must end it cleanly (exit 0).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.cli import main
from app.weights import SPECS, SPECS_BY_NAME

SMALL = "v1-0.25-128"
SERVED = ["v1-0.25-128", "v1-0.5-160"]
CAT = {281, 282, 285}
CAT_LABELS = ("tabby", "tiger cat", "Egyptian cat")
CHICKADEE = 19


def weights(*args: str) -> int:
    return main(["weights", *args])


# ----------------------------------------------------------------------------- weights
def test_weights_list_shows_every_variant_and_its_status(
    tmp_path: Path, mirror_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert weights("list", "--dir", str(tmp_path)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["variant", "origin", "params", "top-1", "status"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows) == [s.name for s in SPECS]
    assert all(row[-1] == "missing" for row in rows.values())
    v2 = SPECS_BY_NAME["v2-1.0-224"]
    assert rows["v2-1.0-224"][1:4] == ["tflite", f"{v2.params:,d}", f"{v2.accuracy.top1:.1f}"]

    assert weights("fetch", SMALL, "--mirror", str(mirror_dir), "--dir", str(tmp_path)) == 0
    capsys.readouterr()
    assert weights("list", "--dir", str(tmp_path)) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[SMALL][-1] == "present"
    assert [name for name, row in rows.items() if row[-1] == "present"] == [SMALL]


def test_fetch_from_mirror_then_verify(
    tmp_path: Path, mirror_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "w"
    assert weights("fetch", SMALL, "--mirror", str(mirror_dir), "--dir", str(out_dir)) == 0
    err = capsys.readouterr().err
    assert f"fetching 1 variant(s) from mirror {mirror_dir}" in err
    assert re.search(rf"{SMALL}\s+fetched", err), err
    assert (out_dir / f"{SMALL}.safetensors").is_file()
    assert (out_dir / "sources" / SPECS_BY_NAME[SMALL].sources[0].filename).is_file()
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert list(manifest["variants"]) == [SMALL]

    # A second fetch finds it current and does nothing.
    before = (out_dir / f"{SMALL}.safetensors").stat().st_mtime_ns
    assert weights("fetch", SMALL, "--mirror", str(mirror_dir), "--dir", str(out_dir)) == 0
    assert re.search(rf"{SMALL}\s+up-to-date", capsys.readouterr().err)
    assert (out_dir / f"{SMALL}.safetensors").stat().st_mtime_ns == before

    assert weights("verify", "--dir", str(out_dir)) == 0
    assert capsys.readouterr().out.split() == [SMALL, "ok"]


def test_verify_fails_after_corruption(
    tmp_path: Path, mirror_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert weights("fetch", SMALL, "--mirror", str(mirror_dir), "--dir", str(tmp_path)) == 0
    path = tmp_path / f"{SMALL}.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert weights("verify", "--dir", str(tmp_path)) == 1
    assert capsys.readouterr().out.split() == [SMALL, "FAILED"]
    # --force repairs it.
    assert (
        weights("fetch", SMALL, "--force", "--mirror", str(mirror_dir), "--dir", str(tmp_path)) == 0
    )
    assert weights("verify", "--dir", str(tmp_path)) == 0


def test_verify_fails_after_corrupting_the_kept_tflite(
    tmp_path: Path, mirror_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert weights("fetch", SMALL, "--mirror", str(mirror_dir), "--dir", str(tmp_path)) == 0
    path = tmp_path / "sources" / SPECS_BY_NAME[SMALL].sources[0].filename
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert weights("verify", "--dir", str(tmp_path)) == 1
    assert "FAILED" in capsys.readouterr().out


def test_verify_with_nothing_fetched_fails(tmp_path: Path) -> None:
    assert weights("verify", "--dir", str(tmp_path / "none")) == 1


def test_fetch_unknown_variant_exits_2_with_a_clear_message(
    tmp_path: Path, mirror_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = weights("fetch", "v9-1.0-224", "--mirror", str(mirror_dir), "--dir", str(tmp_path))
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown variant 'v9-1.0-224'; known: ")
    assert all(s.name in err for s in SPECS)
    assert not any(tmp_path.iterdir())


def test_unknown_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        weights("remove")
    assert info.value.code == 2
    assert "invalid choice: 'remove'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "example"),
    [
        ([], "mobilenet-serve weights fetch"),
        (["serve"], "MOBILENET_VARIANTS=v3-small-1.0-224,v2-1.0-224 mobilenet-serve serve"),
        (["weights"], "mobilenet-serve weights fetch --mirror ../shared/pretrained/tflite"),
        (["predict"], "mobilenet-serve predict cat.jpg --url http://10.0.0.5:8000 --json"),
        (["models"], "mobilenet-serve models --url http://127.0.0.1:8000 --json"),
    ],
)
def test_help_shows_examples(
    command: list[str], example: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mobilenet-serve")
    assert "examples:" in out
    assert example in out


# ---------------------------------------------------------------------- a real server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> Iterator[Server]:
    """``mobilenet-serve serve`` over two small variants, ready to answer."""
    from app.weights import fetch_variants, resolve_variants

    wdir = tmp_path_factory.mktemp("served-weights")
    results = fetch_variants(
        resolve_variants(SERVED), weights_dir=wdir, mirror=mirror_dir, progress=False
    )
    assert [r.status for r in results] == ["fetched", "fetched"]

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILENET_")}
    env |= {
        "MOBILENET_WEIGHTS_DIR": str(wdir),
        "MOBILENET_THREADS": "1",
        "MOBILENET_DECODE_THREADS": "1",
        "MOBILENET_MAX_BATCH_SIZE": "4",
        "MOBILENET_SHUTDOWN_GRACE_S": "5",
    }
    script = Path(sys.executable).with_name("mobilenet-serve")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "app"]
    if script.exists():
        cmd.append("serve")
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    log_path = wdir.parent / f"{wdir.name}-server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    running = Server(f"http://127.0.0.1:{port}", proc, log_path)
    url = running.url
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited {proc.returncode}: {running.log_tail()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in 120 s: {running.log_tail()}")
            time.sleep(0.2)
        yield running
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def test_predict_prints_the_top_classes(
    server: Server, images_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = server.url
    cat = str(images_dir / "cat.bmp")
    assert main(["predict", cat, "--url", url, "--model", "v1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # v1 defaults to the widest width loaded: 0.5.
    assert re.fullmatch(rf"{re.escape(cat)}  \[v1-0\.5-160 \w+/\w+, \d+\.\d ms\]", lines[0])
    assert len(lines) == 1 + 5
    best = re.fullmatch(r"\s+(\d+\.\d)% +(\d+) (.+?)\s+#*", lines[1])
    assert best, lines[1]
    assert int(best.group(2)) in CAT and best.group(3) in CAT_LABELS
    scores = [float(re.match(r"\s+(\d+\.\d)%", line).group(1)) for line in lines[1:]]
    assert scores == sorted(scores, reverse=True)


def test_predict_json_several_images(
    server: Server, images_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = server.url
    cat, bird = str(images_dir / "cat.bmp"), str(images_dir / "bird.bmp")
    argv = ["predict", cat, bird, "--url", url, "--model", "v1", "--width", "0.25"]
    assert main([*argv, "--topk", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [item["image"] for item in out] == [cat, bird]
    assert all(item["variant"]["name"] == "v1-0.25-128" for item in out)
    assert all(len(item["predictions"]) == 3 for item in out)
    assert out[0]["predictions"][0]["index"] in CAT
    assert out[1]["predictions"][0]["index"] == CHICKADEE
    assert out[1]["predictions"][0]["label"] == "chickadee"


def test_predict_reports_server_refusals_and_unreadable_files(
    server: Server,
    images_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = server.url
    cat = str(images_dir / "cat.bmp")
    assert main(["predict", cat, "--url", url, "--model", "v1", "--width", "0.3"]) == 1
    err = capsys.readouterr().err
    assert f"{cat}: HTTP 404 width 0.3 is not loaded for v1; loaded widths: 0.25, 0.5" in err

    missing = str(tmp_path / "nope.jpg")
    assert main(["predict", missing, cat, "--url", url, "--json"]) == 1
    captured = capsys.readouterr()
    assert f"{missing}: cannot read" in captured.err
    assert [item["image"] for item in json.loads(captured.out)] == [cat]


def test_models_lists_what_the_server_loaded(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    url = server.url
    assert main(["models", "--url", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["variant", "model", "width", "res", "backend", "top-1"]
    rows = [line.split() for line in lines[1:-1]]
    assert [r[0] for r in rows] == SERVED
    assert rows[0][1:4] == ["v1", "0.25", "128"]
    assert rows[1][1:4] == ["v1", "0.5", "160"]
    assert rows[1][5] == f"{SPECS_BY_NAME['v1-0.5-160'].accuracy.top1:.1f}"
    assert lines[-1] == "aliases: v1 -> v1-0.5-160"

    assert main(["models", "--url", url, "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body == httpx.get(f"{url}/models").json()
    assert body["default"] == "v1-0.5-160"


def test_client_commands_exit_2_when_the_server_is_unreachable(
    images_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    assert main(["models", "--url", url, "--timeout", "5"]) == 2
    assert url in capsys.readouterr().err
    assert main(["predict", str(images_dir / "cat.bmp"), "--url", url, "--timeout", "5"]) == 2
    assert url in capsys.readouterr().err


def _terminate(server: Server) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    return server.proc.wait(timeout=30)


def test_sigterm_shuts_the_server_down_gracefully(server: Server) -> None:
    """Next to last server test: SIGTERM drains the batchers and runs the lifespan's
    shutdown instead of killing the process outright."""
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    code = _terminate(server)
    log = server.log_tail()
    assert "Shutting down" in log
    assert "Application shutdown complete" in log
    assert code in (0, -signal.SIGTERM), log


def test_sigterm_exit_status_is_0(server: Server) -> None:
    assert _terminate(server) == 0
