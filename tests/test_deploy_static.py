"""What every deployment file must agree with, checked without a Docker engine or a
cluster: every MOBILENET_* variable the Dockerfile, docker-compose.yml and deploy/k8s set
is a real setting and parses (app.settings), and docs/deploy.md covers the commands.

Each kind of file has its own checks: ``test_deploy_dockerfile.py`` (hadolint, stages),
``test_deploy_compose.py`` (compose spec, Prometheus, Grafana), ``test_deploy_k8s.py``
(Kubernetes schemas and wiring), ``test_deploy_nginx.py`` (``nginx -t`` and retries).
A missing tool (hadolint, nginx, kubernetes-validate) skips its test outside CI and fails
it in CI (CI=true), like tests/conftest.py does for the shared data."""

from __future__ import annotations

import os
import re

import pytest

from tests.deploy_files import (
    APP_PORT,
    COMPOSE,
    DOCKERFILE,
    DOCS,
    UPLOAD_LIMIT,
    container_env,
    containers_of,
    k8s_files,
    load_all_yaml,
    load_yaml,
    parse_dockerfile,
    stage_env,
)

# ---------------------------------------------------------------------------
# Settings: every MOBILENET_* the deployment files set exists and parses


def _deploy_env_sets() -> dict[str, dict[str, str]]:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    sets = {
        f"Dockerfile:{t}": {
            k: v for k, v in stage_env(stages, t).items() if k.startswith("MOBILENET_")
        }
        for t in ("cpu", "gpu")
    }
    compose = load_yaml(COMPOSE)
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        if any(k.startswith("MOBILENET_") for k in env):
            sets[f"compose:{name}"] = {k: v for k, v in env.items() if isinstance(v, str)}
    for path in k8s_files():
        for doc in load_all_yaml(path):
            if doc["kind"] == "Deployment":
                for c in containers_of(doc):
                    sets[f"{path.name}:{c['name']}"] = {
                        k: v for k, v in container_env(c).items() if isinstance(v, str)
                    }
    return sets


@pytest.mark.parametrize("where", sorted(_deploy_env_sets()))
def test_env_vars_are_real_settings(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings_mod = pytest.importorskip("app.settings")
    env = _deploy_env_sets()[where]
    known = {f"MOBILENET_{f.upper()}" for f in settings_mod.Settings.model_fields}
    unknown = sorted(k for k in env if k.startswith("MOBILENET_") and k not in known)
    assert not unknown, f"{where}: not settings of the service: {unknown}"
    for key in list(os.environ):
        if key.startswith("MOBILENET_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = settings_mod.Settings()  # raises on a value the service would reject
    assert settings.port == APP_PORT
    assert settings.max_upload_bytes == UPLOAD_LIMIT


# ---------------------------------------------------------------------------
# docs


def test_deploy_docs_cover_the_commands() -> None:
    text = DOCS.read_text()
    for needle in (
        "--build-context mirror=",
        "--target gpu",
        "--scale api=",
        "kubectl apply -k deploy/k8s",
        "non_idempotent",
        "MOBILENET_MAX_BATCH_SIZE",
        "MOBILENET_THREADS",
        "docs/benchmarks.md",
    ):
        assert needle in text, f"docs/deploy.md does not mention {needle}"
    # The scaling advice quotes measured numbers, not a placeholder.
    assert "placeholder, to be filled" not in text
    assert re.search(r"\d+ req/s", text), "docs/deploy.md quotes no measured throughput"
