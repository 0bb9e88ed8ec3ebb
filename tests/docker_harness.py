"""A Docker engine for the container tests, on a machine without a registry.

* ``Engine.obtain()``: an engine that answers at ``DOCKER_HOST``, else ours at
  ``/run/mobilenet-docker/docker.sock``, else a ``dockerd`` started here (root only) with
  its own data root (``/var/lib/mobilenet-docker``: images and build cache survive runs),
  ``--bridge=none --iptables=false``: builds and the single-container tests use host
  networking; compose makes its own bridge network. ``Engine.close()`` stops a daemon
  that was started here, nothing else.
* ``base_image()``: a Debian bookworm + Python 3.11 image made by debootstrap and
  ``docker import`` (tests/docker/make-base-image.sh), built once and reused.
* ``serve_directory()``: the weights mirror over HTTP on 127.0.0.1 for the build.
* ``build()``: ``docker build --network host`` with BuildKit, timed, nice'd.

The client is Debian's ``/usr/bin/docker`` when present (a newer client without buildx
refuses BuildKit), with ``DOCKER_BUILDKIT=1``. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_TAG = "mobilenet-serve-base:bookworm"
STANDINS = REPO / "tests" / "docker" / "standins"
DATA_ROOT = Path("/var/lib/mobilenet-docker")
RUN_DIR = Path("/run/mobilenet-docker")
SOCKET = RUN_DIR / "docker.sock"


class EngineUnavailable(RuntimeError):
    """No Docker engine answers and none can be started here."""


def docker_cli() -> str | None:
    """Debian's client first: the daemon's built-in BuildKit needs no buildx."""
    if Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"
    return shutil.which("docker")


@dataclass
class Engine:
    host: str  # DOCKER_HOST value
    cli: str
    started: subprocess.Popen | None = None
    log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def obtain(cls, *, timeout_s: float = 60.0) -> Engine:
        cli = docker_cli()
        if cli is None:
            raise EngineUnavailable("no docker client (apt-get install docker.io)")
        candidates = [os.environ["DOCKER_HOST"]] if os.environ.get("DOCKER_HOST") else []
        candidates += [f"unix://{SOCKET}", "unix:///var/run/docker.sock"]
        for host in candidates:
            engine = cls(host=host, cli=cli)
            if engine.answers():
                return engine
        return cls._start(cli, timeout_s=timeout_s)

    @classmethod
    def _start(cls, cli: str, *, timeout_s: float) -> Engine:
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not Path(dockerd).exists():
            raise EngineUnavailable("no dockerd (apt-get install docker.io)")
        if os.geteuid() != 0:
            raise EngineUnavailable("dockerd needs root here (no rootless setup)")
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        log = RUN_DIR / "dockerd.log"
        argv = [
            dockerd,
            f"--data-root={DATA_ROOT}",
            f"--exec-root={RUN_DIR / 'exec'}",
            f"--pidfile={RUN_DIR / 'dockerd.pid'}",
            f"--host=unix://{SOCKET}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
        ]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        engine = cls(host=f"unix://{SOCKET}", cli=cli, started=proc, log=log)
        deadline = time.monotonic() + timeout_s
        while not engine.answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                engine.close()
                tail = log.read_text(errors="replace")[-3000:]
                raise EngineUnavailable(f"dockerd did not come up: {tail}")
            time.sleep(0.5)
        return engine

    def close(self) -> None:
        """Stop the daemon if this harness started it (containers are removed first)."""
        if self.started is None:
            return
        if self.started.poll() is None:
            self.started.send_signal(signal.SIGTERM)
            try:
                self.started.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.started.kill()
                self.started.wait(timeout=10)
        self.started = None

    # ------------------------------------------------------------------ commands
    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "1", **self.env}
        return {**env, **(extra or {})}

    def answers(self) -> bool:
        try:
            proc = subprocess.run(
                [self.cli, "version", "--format", "{{.Server.Version}}"],
                env=self.environ(),
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0 and bool(proc.stdout.strip())

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.cli, *args],
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n"
                f"{proc.stderr[-3000:]}"
            )
        return proc

    def has_image(self, tag: str) -> bool:
        return self.run("image", "inspect", tag, check=False).returncode == 0

    def inspect(self, what: str) -> dict:
        return json.loads(self.run("inspect", what).stdout)[0]

    def image_size(self, tag: str) -> int:
        return int(self.run("image", "inspect", "-f", "{{.Size}}", tag).stdout.strip())

    def build(
        self,
        tag: str,
        *,
        context: Path = REPO,
        dockerfile: Path | None = None,
        target: str | None = None,
        build_args: Mapping[str, str] | None = None,
        log: Path | None = None,
        timeout: float = 1800,
    ) -> float:
        """``docker build --network host`` (nice'd); returns the wall time in seconds."""
        argv = ["nice", "-n", "10", self.cli, "build", "--network", "host", "-t", tag]
        if dockerfile is not None:
            argv += ["-f", str(dockerfile)]
        if target:
            argv += ["--target", target]
        for key, value in (build_args or {}).items():
            argv += ["--build-arg", f"{key}={value}"]
        t0 = time.monotonic()
        proc = subprocess.run(
            [*argv, str(context)],
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        elapsed = time.monotonic() - t0
        output = proc.stdout + proc.stderr
        if log is not None:
            log.write_text(output)
        if proc.returncode != 0:
            raise AssertionError(f"docker build {tag} failed:\n{output[-6000:]}")
        return elapsed

    def remove(self, *containers: str) -> None:
        if containers:
            self.run("rm", "-f", "-v", *containers, check=False, timeout=60)


# ---------------------------------------------------------------------- images
def base_image(engine: Engine) -> str:
    """The local Debian bookworm + Python base (debootstrap), built once per data root."""
    if engine.has_image(BASE_TAG):
        return BASE_TAG
    if shutil.which("debootstrap") is None and not Path("/usr/sbin/debootstrap").exists():
        raise EngineUnavailable("no debootstrap to build the local base image (apt-get install)")
    proc = subprocess.run(
        [str(REPO / "tests" / "docker" / "make-base-image.sh"), BASE_TAG],
        env={**engine.environ(), "DOCKER": engine.cli},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise AssertionError(f"base image build failed:\n{proc.stdout}\n{proc.stderr}")
    return BASE_TAG


def standin_image(engine: Engine, name: str) -> str:
    """A local stand-in for a public image the compose file names (nginx, prometheus)."""
    tag = f"mobilenet-serve-test/{name}:bookworm"
    if not engine.has_image(tag):
        engine.build(
            tag,
            context=STANDINS,
            dockerfile=STANDINS / f"{name}.Dockerfile",
            build_args={"BASE_IMAGE": base_image(engine)},
        )
    return tag


# ---------------------------------------------------------------------- mirror
class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """``directory`` over HTTP on 127.0.0.1 (like ``python -m http.server``); yields the URL."""
    handler = functools.partial(_QuietFiles, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------- compose
def compose_cli() -> list[str] | None:
    """docker-compose 1.29 (Debian) or the Compose v2 plugin."""
    exe = shutil.which("docker-compose")
    if exe:
        return [exe]
    cli = docker_cli()
    if cli and subprocess.run([cli, "compose", "version"], capture_output=True).returncode == 0:
        return [cli, "compose"]
    return None


@dataclass
class Compose:
    engine: Engine
    project: str
    env: dict[str, str]
    files: Sequence[Path] = (REPO / "docker-compose.yml",)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        cli = compose_cli()
        assert cli is not None
        argv = [*cli, "-p", self.project]
        for f in self.files:
            argv += ["-f", str(f)]
        proc = subprocess.run(
            [*argv, *args],
            cwd=REPO,
            env=self.engine.environ(self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"compose {' '.join(args)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n"
                f"{proc.stderr[-3000:]}"
            )
        return proc

    def containers(self, service: str) -> list[str]:
        out = self("ps", "-q", service).stdout.split()
        return sorted(out)
