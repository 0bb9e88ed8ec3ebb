"""Server processes for the benchmark: how to start each kind, readiness, CPU and memory
of the whole process tree, and a stop that never leaves a worker behind."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from bench.inputs import Input

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ServerDef:
    """How to start one server kind and where to talk to it."""

    name: str
    command: Callable[[int, str, Path], list[str]]
    env: Callable[[int, str, Path], dict[str, str]]
    ready_path: str
    predict_path: Callable[[str], str]


def _peer(module: str) -> Callable[[int, str, Path], list[str]]:
    def command(port: int, variant: str, weights: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            module,
            "--port",
            str(port),
            "--variant",
            variant,
            "--weights-dir",
            str(weights),
        ]

    return command


def ours_command(port: int, variant: str, weights: Path) -> list[str]:
    script = Path(sys.executable).with_name("mobilenet-serve")
    # ``python -m app`` is ``serve`` (where the console script is not installed).
    return [str(script), "serve"] if script.exists() else [sys.executable, "-m", "app"]


def ours_env_fn(extra: dict[str, str]) -> Callable[[int, str, Path], dict[str, str]]:
    """Our settings: only the benchmarked variant, CPU, quiet logs, defaults otherwise."""

    def env(port: int, variant: str, weights: Path) -> dict[str, str]:
        return {
            "MOBILENET_HOST": "127.0.0.1",
            "MOBILENET_PORT": str(port),
            "MOBILENET_VARIANTS": variant,
            "MOBILENET_WEIGHTS_DIR": str(weights),
            "MOBILENET_DEVICE": "cpu",
            "MOBILENET_LOG_LEVEL": "warning",
            "MOBILENET_SHUTDOWN_GRACE_S": "5",
            **extra,
        }

    return env


def _no_env(port: int, variant: str, weights: Path) -> dict[str, str]:
    return {}


def usable_cores() -> int:
    """CPUs this process may run on (affinity), as our server counts them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def server_defs(ours_env: dict[str, str]) -> dict[str, ServerDef]:
    """Every server the harness knows; ``ours_env`` adds settings to both of ours."""
    return {
        "ours": ServerDef(
            "ours",
            ours_command,
            ours_env_fn(ours_env),
            "/readyz",
            lambda v: f"/predict?variant={v}",
        ),
        # One worker process per core (MOBILENET_WORKERS): no GIL shared between the event
        # loop and the decode threads of another core; about one more model's memory each.
        "ours-per-core": ServerDef(
            "ours-per-core",
            ours_command,
            ours_env_fn({"MOBILENET_WORKERS": str(usable_cores()), **ours_env}),
            "/readyz",
            lambda v: f"/predict?variant={v}",
        ),
        "ours-torch": ServerDef(
            "ours-torch",
            ours_command,
            ours_env_fn({"MOBILENET_BACKEND": "torch", **ours_env}),
            "/readyz",
            lambda v: f"/predict?variant={v}",
        ),
        "ours-onnx": ServerDef(
            "ours-onnx",
            ours_command,
            ours_env_fn({"MOBILENET_BACKEND": "onnx", **ours_env}),
            "/readyz",
            lambda v: f"/predict?variant={v}",
        ),
        "naive": ServerDef(
            "naive", _peer("bench.peers.naive"), _no_env, "/health", lambda v: "/predict"
        ),
        "litserve": ServerDef(
            "litserve", _peer("bench.peers.litserve_peer"), _no_env, "/health", lambda v: "/predict"
        ),
        "null-http": ServerDef(
            "null-http", _peer("bench.peers.null_http"), _no_env, "/health", lambda v: "/predict"
        ),
        "torchserve": ServerDef(
            "torchserve",
            _peer("bench.peers.torchserve_peer"),
            _no_env,
            "/ping",
            lambda v: "/predictions/mobilenet",
        ),
    }


def free_port() -> int:
    """A loopback port free right now (the tiny race with other programs is acceptable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree_sum(pid: int, measure: Callable[[psutil.Process], float]) -> float:
    """``measure`` summed over a process and all its descendants (multi-process servers);
    NaN once the process is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return math.nan
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += measure(p)
    return total


def rss_mb(pid: int) -> float:
    """Resident memory of a server, all its processes."""
    return _tree_sum(pid, lambda p: p.memory_info().rss) / 2**20


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a server has used so far, all its processes."""
    return _tree_sum(pid, lambda p: sum(p.cpu_times()[:2]))


@dataclass
class Running:
    """A started server: its process (leader of its own process group) and base URL."""

    defn: ServerDef
    variant: str
    proc: subprocess.Popen[bytes]
    base: str
    log: Path

    @property
    def predict_url(self) -> str:
        return self.base + self.defn.predict_path(self.variant)

    def log_tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def fatal_readiness(response: httpx.Response) -> str | None:
    """Why a not-ready answer will never turn ready (ours reports "loading failed"), if so.

    Without this, a server whose models failed to load would hold the run for the whole
    readiness timeout.
    """
    if response.status_code == 200:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    notes = [*body.get("problems", []), *body.get("degraded", [])] if isinstance(body, dict) else []
    failed = [n for n in notes if isinstance(n, str) and "failed" in n.lower()]
    return "; ".join(failed) or None


def wait_ready(server: Running, timeout_s: float) -> None:
    """Poll the readiness path until 200; fail fast if the process dies or its load failed."""
    deadline = time.monotonic() + timeout_s
    url = server.base + server.defn.ready_path
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"{server.defn.name} exited with {server.proc.returncode}:\n"
                    + server.log_tail()
                )
            with contextlib.suppress(httpx.HTTPError):
                response = client.get(url)
                if response.status_code == 200:
                    return
                if (why := fatal_readiness(response)) is not None:
                    raise RuntimeError(f"{server.defn.name} cannot become ready: {why}")
            time.sleep(0.25)
    raise RuntimeError(f"{server.defn.name} not ready after {timeout_s:.0f}s:\n{server.log_tail()}")


def probe(server: Running, sample: Input) -> None:
    """One real request, so a broken server fails loudly instead of filling a table with 5xx."""
    files = {"file": (sample.filename, sample.data, sample.content_type)}
    response = httpx.post(server.predict_url, files=files, timeout=60.0)
    if response.status_code != 200:
        raise RuntimeError(
            f"{server.defn.name}: probe got HTTP {response.status_code}: {response.text[:300]}"
        )


def stop(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group (workers included), then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout_s)
    # The leader may be gone while its workers linger: the group id outlives it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout_s)


@contextlib.contextmanager
def running_server(
    defn: ServerDef, variant: str, weights: Path, log_dir: Path
) -> Iterator[Running]:
    """Start ``defn`` for ``variant`` in its own session; always stopped on exit."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{defn.name}-{variant}.log"
    env = {**os.environ, **defn.env(port, variant, weights)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            defn.command(port, variant, weights),
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = Running(defn, variant, proc, f"http://127.0.0.1:{port}", log)
    try:
        yield server
    finally:
        stop(proc)
