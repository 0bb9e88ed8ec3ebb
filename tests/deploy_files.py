"""What the deployment-file tests share (not collected: no tests here): where the files
are, the values they must agree on, a Dockerfile parser, YAML and duration helpers, and
the skip-locally / fail-in-CI rule for a missing tool."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

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


def need(what: str, ok: bool, hint: str) -> None:
    """Skip (locally) or fail (CI=true) when a tool the check needs is missing."""
    if ok:
        return
    msg = f"{what} is not available: {hint}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def tool(name: str) -> str | None:
    """A console script from this venv first, then PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all_yaml(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def duration_s(value: str | int | float) -> float:
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


def stage_of(stages: list[Stage], name: str) -> Stage:
    found = [s for s in stages if s.name == name]
    assert found, f"Dockerfile has no stage {name!r} (stages: {[s.name for s in stages]})"
    return found[0]


def stage_chain(stages: list[Stage], name: str) -> list[Stage]:
    """The stage and its ancestors (FROM <stage>), nearest first."""
    chain = [stage_of(stages, name)]
    names = {s.name for s in stages}
    while chain[-1].base in names:
        chain.append(stage_of(stages, chain[-1].base))
    return chain


def effective(stages: list[Stage], name: str, cmd: str) -> Instr | None:
    """The instruction (ENTRYPOINT, CMD, USER, ...) a stage inherits or sets last."""
    for st in stage_chain(stages, name):
        found = st.all(cmd)
        if found:
            return found[-1]
    return None


def exec_form(instr: Instr | None) -> list[str]:
    assert instr is not None
    value = json.loads(instr.args)
    assert isinstance(value, list), f"line {instr.line}: use the exec (JSON) form"
    return value


def stage_env(stages: list[Stage], name: str) -> dict[str, str]:
    """ENV values as seen in a stage (ancestors first, later ones win)."""
    env: dict[str, str] = {}
    for st in reversed(stage_chain(stages, name)):
        for ins in st.all("ENV"):
            for key, val in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", ins.args):
                env[key] = val.strip('"')
    return env


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def containers_of(dep: dict[str, Any]) -> list[dict[str, Any]]:
    return dep["spec"]["template"]["spec"]["containers"]


def container_env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
