"""Serve the same model with TorchServe (Java frontend + Python worker, dynamic batching).

Builds an unpacked model archive (``MAR-INF/MANIFEST.json`` + handler + model config) in
a temporary directory, writes a ``config.properties`` that binds every listener to
loopback, turns token auth off and leaves snapshots off, then runs the Java frontend in
the foreground (no pid file in /tmp, signals forwarded, temp files removed on exit).

Needs ``pip install torchserve`` (0.12.0, the last release: the project is archived) and
a Java 17 runtime (``java`` on PATH or ``JAVA_HOME``); see torchserve_note.md.

    python -m bench.peers.torchserve_peer --port 8003 --variant v2-1.0-224
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[2]
HANDLER = Path(__file__).with_name("torchserve_handler.py")
MODEL = "mobilenet"
BATCH_SIZE = 16
MAX_BATCH_DELAY_MS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def write_model_dir(
    store: Path, variant: str, weights_dir: Path, workers: int, threads: int
) -> Path:
    """An unpacked archive TorchServe loads like a .mar (no torch-model-archiver needed)."""
    model_dir = store / MODEL
    (model_dir / "MAR-INF").mkdir(parents=True)
    shutil.copy(HANDLER, model_dir / HANDLER.name)
    manifest = {
        "createdOn": "01/01/2026 00:00:00",
        "runtime": "python",
        "model": {
            "modelName": MODEL,
            "handler": HANDLER.name,
            "modelVersion": "1.0",
            "configFile": "model-config.yaml",
        },
        "archiverVersion": "0.12.0",
    }
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    # JSON is valid YAML, and TorchServe passes this whole mapping to the handler.
    config = {
        "minWorkers": workers,
        "maxWorkers": workers,
        "batchSize": BATCH_SIZE,
        "maxBatchDelay": MAX_BATCH_DELAY_MS,
        "responseTimeout": 120,
        "bench": {
            "repo": str(REPO),
            "variant": variant,
            "weights_dir": str(weights_dir.resolve()),
            "threads": threads,
        },
    }
    (model_dir / "model-config.yaml").write_text(json.dumps(config))
    return model_dir


def write_config(root: Path, host: str, port: int) -> Path:
    """Loopback-only listeners, token auth off, no config snapshots, small job queue."""
    path = root / "config.properties"
    lines = [
        f"inference_address=http://{host}:{port}",
        f"management_address=http://{host}:{_free_port()}",
        f"metrics_address=http://{host}:{_free_port()}",
        f"model_store={root / 'store'}",
        f"load_models={MODEL}",
        "disable_token_authorization=true",
        "enable_envvars_config=false",
        "install_py_dep_per_model=false",
        "default_response_timeout=120",
        "job_queue_size=1000",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def find_java() -> str | None:
    """The Java the ``torchserve`` script would use: ``$JAVA_HOME/bin/java``, else PATH."""
    java_home = os.environ.get("JAVA_HOME")
    return shutil.which(str(Path(java_home) / "bin" / "java") if java_home else "java")


def java_command(java: str, config: Path, store: Path) -> list[str]:
    """What ``torchserve --start --foreground`` runs, minus its pid file in /tmp."""
    import ts

    ts_home = Path(ts.__file__).resolve().parents[1]
    return [
        java,
        f"-Dmodel_server_home={ts_home}",
        "-cp",
        f".:{ts_home / 'ts' / 'frontend' / '*'}",
        "org.pytorch.serve.ModelServer",
        "--python",
        sys.executable,
        "-f",
        str(config),
        "-s",
        str(store),
        "-ncs",
        "--disable-token-auth",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--variant", default="v3-small-1.0-224")
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, help="torch threads per worker (default cores/workers)"
    )
    args = parser.parse_args(argv)
    if importlib.util.find_spec("ts") is None:
        print("TorchServe is not installed: pip install torchserve==0.12.0", file=sys.stderr)
        return 2
    java = find_java()
    if java is None:
        print("TorchServe needs Java 17+ (`java` on PATH or JAVA_HOME)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="bench-torchserve-"))
    try:
        threads = args.threads or max(1, _cores() // args.workers)
        write_model_dir(root / "store", args.variant, args.weights_dir, args.workers, threads)
        config = write_config(root, args.host, args.port)
        logs = str(root / "logs")
        env = {**os.environ, "LOG_LOCATION": logs, "METRICS_LOCATION": logs}
        proc = subprocess.Popen(java_command(java, config, root / "store"), cwd=root, env=env)

        def forward(signum: int, frame: FrameType | None) -> None:
            proc.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        return proc.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
