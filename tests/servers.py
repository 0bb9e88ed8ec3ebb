"""Real servers as subprocesses, for the reliability tests: the service and nginx.

``start_server`` runs ``python -m app`` (what ``mobilenet-serve serve`` runs) on a free
127.0.0.1 port with ``MOBILENET_*`` overrides, waits for ``/readyz`` and hands back a
``ServerProcess`` (pid, RSS via psutil, ``stop()`` with SIGTERM returning the exit code).
``start_nginx`` renders ``deploy/nginx/nginx.conf`` for loopback upstreams into a temp
prefix and runs Debian's nginx in the foreground (``daemon off``).

Everything listens on 127.0.0.1 only; every wait is bounded. Plain helpers, no fixtures;
``require_nginx`` is the one pytest-aware function (skip outside CI, fail in CI).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
NGINX_CONF = REPO / "deploy" / "nginx" / "nginx.conf"
CHEAP_VARIANTS = ("v1-0.25-128", "v3-small-1.0-224")
HOST = "127.0.0.1"

# The placeholders documented at the top of deploy/nginx/nginx.conf.
_UPSTREAM_RE = re.compile(r"^(\s*)server api:8000 (.*);$", re.M)
_LISTEN_RE = re.compile(r"^(\s*)listen 8080;$", re.M)


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=timeout):
        return True
    return False


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@dataclass
class ServerProcess:
    """A running ``mobilenet-serve`` subprocess."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    cwd: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)
    scratch: list[Path] = field(repr=False, default_factory=list)  # removed once it exited

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        """Resident set size of the server process, in bytes."""
        return psutil.Process(self.proc.pid).memory_info().rss

    def log(self) -> str:
        if self.log_path.exists():
            return _tail(self.log_path)
        return getattr(self, "_log_text", "(no log)")

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Poll ``/readyz`` until 200; raise with the log tail if it dies or times out."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode} before ready:\n{self.log()}"
                    )
                try:
                    r = client.get("/readyz")
                    if r.status_code == 200:
                        return
                    last = f"{r.status_code} {r.text[:300]}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s ({last}):\n{self.log()}")

    def send_signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        """Send ``sig``, wait for the exit (SIGKILL after ``timeout``), return the exit code
        (negative = killed by that signal, as ``subprocess`` reports it)."""
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait(timeout=10)
        self.cleanup()
        return code

    def kill(self) -> int:
        return self.stop(signal.SIGKILL, timeout=10)

    def cleanup(self) -> None:
        """Remove the temp dirs this helper made (after the process is gone)."""
        if self.alive():
            return
        self._log_text = self.log()
        for path in self.scratch:
            shutil.rmtree(path, ignore_errors=True)
        self.scratch.clear()


def server_env(
    weights_dir: Path | str, *, port: int, variants: Sequence[str], env: Mapping[str, str] | None
) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("MOBILENET_")}
    out.update(
        MOBILENET_HOST=HOST,
        MOBILENET_PORT=str(port),
        MOBILENET_WEIGHTS_DIR=str(Path(weights_dir).resolve()),
        MOBILENET_VARIANTS=",".join(variants),
        MOBILENET_LOG_LEVEL="warning",
        MOBILENET_GRPC_PORT="0",  # a test that wants gRPC passes a free port in env
        PYTHONUNBUFFERED="1",
    )
    # `python -m app` must import this checkout even where it is not pip-installed.
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH")) if p)
    out.update(env or {})
    return out


def launch_server(
    weights_dir: Path | str,
    *,
    variants: Sequence[str] = CHEAP_VARIANTS,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ServerProcess:
    """Start the server without waiting (start several, then ``wait_ready`` each)."""
    port = free_port()
    scratch = [Path(tempfile.mkdtemp(prefix="mobilenet-srv-"))]
    if cwd is None:
        cwd = scratch[0] / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    log_path = scratch[0] / f"server-{port}.log"
    full_env = server_env(weights_dir, port=port, variants=variants, env=env)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return ServerProcess(
        proc=proc, port=port, log_path=log_path, cwd=cwd, env=full_env, scratch=scratch
    )


def start_server(
    weights_dir: Path | str,
    *,
    variants: Sequence[str] = CHEAP_VARIANTS,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready_timeout: float = 90.0,
) -> ServerProcess:
    """Start ``python -m app`` on a free loopback port and wait until ``/readyz`` is 200."""
    server = launch_server(weights_dir, variants=variants, env=env, cwd=cwd)
    try:
        server.wait_ready(ready_timeout)
    except BaseException:
        server.kill()
        raise
    return server


@contextlib.contextmanager
def running_server(weights_dir: Path | str, **kwargs: object) -> Iterator[ServerProcess]:
    server = start_server(weights_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        if server.alive():
            server.kill()


# --------------------------------------------------------------------------------- nginx
def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def require_nginx() -> str:
    """The nginx binary; skip the test without it outside CI, fail it in CI."""
    import pytest

    binary = nginx_binary()
    if binary is None:
        msg = "nginx is not installed (apt-get install -y nginx-light; .ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return binary


def render_nginx_conf(upstream_ports: Sequence[int], listen_port: int) -> str:
    """deploy/nginx/nginx.conf with its two placeholders pointed at loopback."""
    text = NGINX_CONF.read_text()
    upstream = _UPSTREAM_RE.search(text)
    listen = _LISTEN_RE.search(text)
    if upstream is None or listen is None:
        raise AssertionError(
            f"{NGINX_CONF}: placeholder lines not found (`server api:8000 ...;` and "
            "`listen 8080;`, see its header)"
        )
    indent, params = upstream.group(1), upstream.group(2)
    servers = "\n".join(f"{indent}server {HOST}:{p} {params};" for p in upstream_ports)
    text = _UPSTREAM_RE.sub(lambda _: servers, text, count=1)
    return _LISTEN_RE.sub(lambda m: f"{m.group(1)}listen {HOST}:{listen_port};", text, count=1)


@dataclass
class NginxProcess:
    proc: subprocess.Popen
    port: int
    prefix: Path
    log_path: Path
    owns_prefix: bool = False

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return _tail(self.log_path)

    def stop(self, timeout: float = 10.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGQUIT)  # graceful stop
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait(timeout=10)
        if self.owns_prefix:
            shutil.rmtree(self.prefix, ignore_errors=True)
        return code


def _user_directive() -> str:
    if os.geteuid() != 0:
        return ""
    import grp
    import pwd

    return f" user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};"


def start_nginx(
    upstream_ports: Sequence[int], *, prefix: Path | None = None, timeout: float = 15.0
) -> NginxProcess:
    """Run nginx in the foreground in front of ``upstream_ports``; wait for /nginx-health."""
    binary = require_nginx()
    owns_prefix = prefix is None
    prefix = Path(prefix or tempfile.mkdtemp(prefix="mobilenet-nginx-"))
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx_conf(upstream_ports, port))
    log_path = prefix / "nginx.log"
    globals_ = f"daemon off; pid {prefix}/nginx.pid;{_user_directive()}"
    cmd = [binary, "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr", "-g", globals_]
    check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise AssertionError(f"nginx -t failed:\n{check.stderr}")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    nginx = NginxProcess(
        proc=proc, port=port, prefix=prefix, log_path=log_path, owns_prefix=owns_prefix
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not nginx.alive():
            raise RuntimeError(f"nginx exited with {proc.returncode}:\n{nginx.log()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{nginx.url}/nginx-health", timeout=1.0).status_code == 200:
                return nginx
        time.sleep(0.1)
    nginx.stop()
    raise TimeoutError(f"nginx did not answer within {timeout}s:\n{nginx.log()}")
