"""What the numbers depend on: the CPU, library versions and thread settings."""

from __future__ import annotations

import contextlib
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from bench import limits as limits_mod


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPU, core count, library versions, thread settings."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cores_available": limits_mod.cores(),
    }
    for pkg in ("litserve", "ai-edge-litert", "uvicorn", "fastapi", "pillow", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            info[pkg] = version(pkg)
    try:
        text = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    wanted = (
        "Model name",
        "CPU(s)",
        "Thread(s) per core",
        "Core(s) per socket",
        "L2 cache",
        "L3 cache",
        "Hypervisor vendor",
    )
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in wanted:
            info.setdefault("lscpu", {})[key.strip()] = value.strip()
    return info


def machine_markdown(info: dict[str, Any], ours_env: dict[str, str]) -> str:
    cpu = info.get("lscpu", {})
    n = info["cores_available"]
    extra = " ".join(f"{k}={v}" for k, v in ours_env.items()) or "none"
    lines = [
        f"- CPU: {cpu.get('Model name', platform.processor() or '?')}, "
        f"{cpu.get('CPU(s)', '?')} CPUs ({cpu.get('Core(s) per socket', '?')} cores/socket, "
        f"{cpu.get('Thread(s) per core', '?')} thread/core), L2 {cpu.get('L2 cache', '?')}, "
        f"L3 {cpu.get('L3 cache', '?')}"
        + (f", virtualised ({cpu['Hypervisor vendor']})" if "Hypervisor vendor" in cpu else ""),
        f"- {n} CPUs available to the benchmark; Python {info['python']}, torch {info['torch']}, "
        f"ai-edge-litert {info.get('ai-edge-litert', '-')}, litserve {info.get('litserve', '-')}, "
        f"uvicorn {info.get('uvicorn', '-')}, Pillow {info.get('pillow', '-')}",
        f"- Threads: ours uses its defaults, MOBILENET_THREADS = MOBILENET_DECODE_THREADS = {n} "
        f"(LiteRT: each single-image request runs to completion on a decode thread, which "
        f"forwards it on its own single-threaded interpreter, or on a {n}-thread one when "
        f"nothing else is running; client batches <= 16, wait 2 ms; extra settings: {extra}); "
        f"ours-per-core: the same with MOBILENET_WORKERS = {n}, one thread each; naive: torch "
        f"default intra-op threads ({n}), 1 uvicorn worker; litserve: {min(n, 4)} worker(s) x "
        f"{max(1, n // min(n, 4))} torch thread(s), batch <= 16, timeout 5 ms, fast_queue.",
        f"- Platform: {info['platform']}",
    ]
    return "\n".join(lines)
