"""The OpenAPI contract, checked the way a new user would: ``schemathesis run
<url>/openapi.json --checks all`` against a real server process, every route included
(ours and the protocols'), with and without an API key. Bounded examples; the two
documented exceptions are in tests/schemathesis.toml.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from tests.servers import running_server
except ImportError:  # tests/ itself on sys.path
    from servers import running_server

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")
VARIANT = "v1-0.25-128"


def schemathesis_cli() -> list[str]:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    return [exe]


@pytest.mark.parametrize("api_key", [None, "s3cret"], ids=["open", "api-key"])
def test_schemathesis_finds_nothing(weights_dir: Path, tmp_path: Path, api_key: str | None) -> None:
    env = {"MOBILENET_THREADS": "1", "MOBILENET_DECODE_THREADS": "1"}
    auth: list[str] = []
    if api_key:
        env["MOBILENET_API_KEY"] = api_key
        auth = ["-H", f"Authorization: Bearer {api_key}"]
    with running_server(weights_dir, variants=[VARIANT], env=env) as server:
        run = subprocess.run(
            [
                *schemathesis_cli(),
                "--config-file",
                str(CONFIG),
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "12",
                "--seed",
                "20261203",
                "--no-color",
                *auth,
            ],
            capture_output=True,
            text=True,
            timeout=280,
            cwd=tmp_path,
        )
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "No issues found" in run.stdout or " 0 failures" in run.stdout or "passed" in run.stdout


def test_authentication_is_documented_exactly_when_enforced(weights_dir: Path) -> None:
    from app.api import create_app
    from app.settings import Settings

    guarded = {"/predict", "/v2/models/{name}/infer", "/v1/models/{name}:predict"}
    for key in (None, "s3cret"):
        spec = create_app(Settings(weights_dir=weights_dir, api_key=key)).openapi()
        schemes = spec.get("components", {}).get("securitySchemes", {})
        assert ("HTTPBearer" in schemes) == bool(key)
        for path in guarded:
            op = spec["paths"][path]["post"]
            assert ("security" in op) == bool(key), (path, key)
            assert ("401" in op["responses"]) == bool(key), (path, key)
        assert "security" not in spec["paths"]["/v2/health/live"]["get"]
        ids = [
            op["operationId"]
            for item in spec["paths"].values()
            for op in item.values()
            if isinstance(op, dict)
        ]
        assert len(ids) == len(set(ids))
