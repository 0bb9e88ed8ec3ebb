"""docker-compose.yml against the official compose-spec JSON schema (vendored in
check-jsonschema, ``--builtin-schema vendor.compose-spec``) plus semantic asserts, and the
Prometheus and Grafana files it mounts."""

from __future__ import annotations

import json
import re
import subprocess
from importlib import resources
from typing import Any

import jsonschema
import pytest

from tests.deploy_files import (
    APP_GRACE_S,
    APP_PORT,
    COMPOSE,
    GRAFANA,
    NGINX_CONF,
    PROMETHEUS,
    REPO,
    duration_s,
    load_yaml,
    need,
    tool,
)

# ---------------------------------------------------------------------------
# (2) docker compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def _compose_schema() -> dict[str, Any]:
    """compose-spec.json vendored by check-jsonschema (`--builtin-schema vendor.compose-spec`)."""
    try:
        ref = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
        return json.loads(ref.read_text())
    except ModuleNotFoundError:
        need("check-jsonschema", False, "pip install check-jsonschema (dev extra)")
        raise


def _compose_errors(doc: dict[str, Any]) -> list[str]:
    schema = _compose_schema()
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def test_compose_matches_compose_spec(compose: dict[str, Any]) -> None:
    assert _compose_errors(compose) == []


def test_compose_schema_is_strict(compose: dict[str, Any]) -> None:
    """A typo must fail, or the schema check above proves nothing."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["helthcheck"] = broken["services"]["api"].pop("healthcheck")
    assert _compose_errors(broken)


def test_compose_cli_check_jsonschema() -> None:
    """The same check as the pre-commit hook users would run."""
    exe = tool("check-jsonschema")
    need("check-jsonschema", exe is not None, "pip install check-jsonschema (dev extra)")
    assert exe is not None
    proc = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_api_service(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["build"]["target"] == "cpu" and api["build"]["context"] == "."
    health = " ".join(map(str, api["healthcheck"]["test"]))
    assert "/readyz" in health and f":{APP_PORT}" in health
    assert api["restart"] in ("always", "unless-stopped", "on-failure")
    assert duration_s(api["stop_grace_period"]) > APP_GRACE_S
    assert api.get("stop_signal", "SIGTERM") == "SIGTERM"
    deploy = api["deploy"]
    assert deploy["replicas"] >= 2
    assert deploy["resources"]["limits"]["cpus"] and deploy["resources"]["limits"]["memory"]
    threads = int(api["environment"]["MOBILENET_THREADS"])
    assert threads == int(float(deploy["resources"]["limits"]["cpus"])), "threads = CPU limit"
    assert "ports" not in api, "replicas must not publish a host port (nginx does)"
    assert "container_name" not in api, "container_name prevents scaling"
    # Weights come from the image. A named volume there would be shared by replicas
    # created together, which race to populate it (seen: "file exists" from dockerd).
    weights = [v for v in api["volumes"] if isinstance(v, dict) and v["target"] == "/app/weights"]
    assert not weights or weights[0]["type"] == "bind", api["volumes"]
    # No download at container start: nothing overrides the image's serve command.
    for key in ("command", "entrypoint"):
        assert "fetch" not in json.dumps(api.get(key, "")), api.get(key)
    assert not any(re.search("FETCH|DOWNLOAD", k) for k in api["environment"])
    assert api["environment"].get("MOBILENET_API_KEY") is None, (
        "pass the API key through (no value), never as an empty string"
    )


def test_compose_gpu_profile(compose: dict[str, Any]) -> None:
    gpu = [s for s in compose["services"].values() if "gpu" in s.get("profiles", [])]
    assert gpu, "no service in the `gpu` profile"
    svc = gpu[0]
    assert svc["build"]["target"] == "gpu"
    assert svc["environment"]["MOBILENET_DEVICE"] == "cuda"
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices
    ), devices
    assert "api" in svc["networks"]["default"]["aliases"], "GPU replica joins the nginx pool"
    assert duration_s(svc["stop_grace_period"]) > APP_GRACE_S


def _binds(service: dict[str, Any]) -> dict[str, str]:
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict) and v.get("type") == "bind":
            out[v["target"]] = v["source"]
        elif isinstance(v, str) and v.startswith((".", "/")):
            src, tgt = v.split(":")[:2]
            out[tgt] = src
    return out


def test_compose_nginx_prometheus_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    nginx = services["nginx"]
    assert _binds(nginx)["/etc/nginx/nginx.conf"] == "./deploy/nginx/nginx.conf"
    assert nginx["depends_on"]["api"]["condition"] == "service_healthy"
    listen = re.search(r"^\s*listen (\d+);$", NGINX_CONF.read_text(), re.M)
    assert listen and any(str(p).endswith(f":{listen.group(1)}") for p in nginx["ports"])
    assert ":" in nginx["image"] and not nginx["image"].endswith(":latest")
    prom = services["prometheus"]
    assert _binds(prom)["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    for svc in services.values():
        for src in _binds(svc).values():
            assert (REPO / src).exists(), f"bind mount source {src} does not exist"
        image = svc.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"pin {image} by tag"
    assert "grafana" in services["grafana"].get("profiles", []), "grafana is optional"
    # Air-gapped sites pull from their own registry: every image is an env override.
    for name in ("api", "api-gpu", "nginx", "prometheus", "grafana"):
        assert re.fullmatch(r"\$\{[A-Z_]+_IMAGE:-[^}]+\}", services[name]["image"]), name
    # docker-compose 1.29 (Debian) rejects Compose-v2-only keys.
    assert "name" not in compose
    for svc in services.values():
        deps = svc.get("depends_on") or {}
        for dep in deps.values() if isinstance(deps, dict) else []:
            assert "required" not in dep


def test_prometheus_scrapes_every_replica() -> None:
    cfg = load_yaml(PROMETHEUS)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    job = jobs["mobilenet-serve"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["api"] and sd["type"] == "A" and sd["port"] == APP_PORT


def test_grafana_provisioning() -> None:
    dashboards = list((GRAFANA / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dash = json.loads(path.read_text())
        assert dash["uid"] and dash["panels"]
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        assert all(exprs) and any("mobilenet_" in e for e in exprs)
    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    prov = load_yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    assert prov["providers"][0]["options"]["path"] in _binds(grafana)


def test_grafana_metric_names_exist() -> None:
    """Dashboard queries use metric families the service really exports."""
    metrics_mod = pytest.importorskip("app.observability.metrics")
    families = {m.name for m in metrics_mod.Metrics().registry.collect()}
    dash = json.loads((GRAFANA / "dashboards" / "mobilenet-serve.json").read_text())
    used = set()
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            used |= set(
                re.findall(r"\b(mobilenet_[a-z_]+?)(?:_total|_bucket|_sum|_count)?\b", t["expr"])
            )
    assert used and used <= families, used - families
