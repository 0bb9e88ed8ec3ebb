"""The ``kserve`` SDK's own clients (REST v1, REST v2, gRPC v2) against a real server.

kserve's dependencies clash with this project's pins, so its clients run in a venv of
their own (``make kserve-venv``, or ``KSERVE_PYTHON=/path/to/python``) as a subprocess
(tests/clients/kserve_sdk.py); without one the test is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

try:
    from tests.servers import ServerProcess, free_port, start_server
except ImportError:  # tests/ itself on sys.path
    from servers import ServerProcess, free_port, start_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("clients") / "kserve_sdk.py"
V1 = "v1-0.5-160"
V3 = "v3-small-1.0-224"


def kserve_python() -> str:
    candidate = os.environ.get("KSERVE_PYTHON") or str(REPO / ".venv-kserve" / "bin" / "python")
    if not Path(candidate).exists():
        why = "no Python with the kserve SDK: run `make kserve-venv` or set KSERVE_PYTHON"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)  # .ci/run makes it: the real client must never silently vanish
        pytest.skip(why)
    return candidate


@pytest.fixture(scope="module")
def server(weights_dir: Path) -> Iterator[tuple[ServerProcess, int]]:
    kserve_python()
    port = free_port()
    srv = start_server(
        weights_dir,
        variants=[V1, V3],
        env={"MOBILENET_THREADS": "1", "MOBILENET_GRPC_PORT": str(port)},
        ready_timeout=180,
    )
    try:
        yield srv, port
    finally:
        srv.stop()


def predict(server: ServerProcess, data: bytes, variant: str) -> list[dict]:
    r = httpx.post(
        f"{server.url}/predict",
        params={"variant": variant},
        files={"file": ("cat.bmp", data)},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_kserve_sdk_clients_classify_the_cat_and_get_each_protocol_s_errors(
    server: tuple[ServerProcess, int], images_dir: Path
) -> None:
    srv, grpc_port = server
    cat_path = images_dir / "cat.bmp"
    run = subprocess.run(
        [kserve_python(), str(SCRIPT), srv.url, f"127.0.0.1:{grpc_port}", str(cat_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    cat = cat_path.read_bytes()
    expected = {name: predict(srv, cat, variant) for name, variant in (("v3", V3), (V1, V1))}

    v2 = out["rest_v2"]
    assert v2["server_ready"] and v2["model_ready"]
    for name, top5 in expected.items():
        for mode in ("binary", "json"):
            got = v2[f"{name}/{mode}"]
            assert got["index"] == top5[0]["index"] == 285
            assert got["score"] == pytest.approx(top5[0]["score"], abs=1e-6)
    assert [int(s.split(":")[1]) for s in v2["classification"]] == [
        p["index"] for p in expected["v3"]
    ]
    assert v2["unknown"]["status"] == 404 and "v9" in v2["unknown"]["message"]
    assert v2["corrupt"]["status"] == 400 and "image 0" in v2["corrupt"]["message"]

    v1 = out["rest_v1"]
    for name, top5 in expected.items():
        assert v1[name]["classes"] == [p["index"] for p in top5]
        assert v1[name]["labels"][0] == "Egyptian cat"
    assert v1["unknown"]["status"] == 404 and v1["corrupt"]["status"] == 400

    g = out["grpc_v2"]
    assert g["server_live"] and g["model_ready"]
    for name, top5 in expected.items():
        assert g[name]["index"] == 285
        assert g[name]["score"] == pytest.approx(top5[0]["score"], abs=1e-6)
    assert g["unknown"]["status"] == "NOT_FOUND"
    assert g["corrupt"]["status"] == "INVALID_ARGUMENT"
