"""All configuration in one pydantic-settings object, read from ``MOBILENET_*`` variables.

Nothing reads the environment anywhere else. Build one with ``Settings()`` (or pass
fields explicitly in tests); the app keeps it on ``app.state.settings``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _cgroup_cpu_quota(root: Path) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (v2 ``cpu.max``, v1 CFS files)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for sub in ("cpu", "cpu,cpuacct"):
        try:
            quota_us = int((root / sub / "cpu.cfs_quota_us").read_text())
            period_us = int((root / sub / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def cpu_budget(*, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by a container's CPU quota
    (``docker --cpus``, a Kubernetes limit), which neither affinity nor ``nproc`` shows."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux only
    cpus = len(affinity(0)) if affinity else os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _default_threads(data: dict) -> int:
    """Each server process gets its share of the CPU budget (workers x threads <= CPUs)."""
    return max(1, cpu_budget() // data.get("workers", 1))


class Settings(BaseSettings):
    """Service settings; every field is ``MOBILENET_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MOBILENET_", env_file=None, extra="ignore")

    # --- serving ---
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="Port of the Open Inference Protocol v2 gRPC server (Triton's 8001); "
        "0 turns gRPC off.",
    )
    workers: int = Field(
        1, ge=1, le=64, description="Server processes on the port (each loads the models)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where models run: auto = CUDA if present, else CPU."
    )
    variants: list[str] | None = Field(
        None, description="Variant names to load (comma list); default: every one present."
    )
    backend: Literal["auto", "torch", "onnx", "litert"] = Field(
        "auto", description="Inference backend; auto picks per variant and device."
    )
    litert_exact_hard_swish: bool = Field(
        True,
        description="LiteRT: run V3's uint8 hard-swish on XNNPACK as float ops proven to "
        "give the reference kernel's byte for all 256 input codes (2.4x faster V3-Small, "
        "same scores bit for bit); false keeps TFLite's scalar kernel.",
    )
    gpu_decode: bool = Field(
        True, description="On CUDA, decode JPEG uploads on the GPU (nvJPEG) in the batch."
    )
    cuda_graphs: bool = Field(True, description="On CUDA, replay one CUDA graph per batch size.")
    threads: int = Field(
        default_factory=_default_threads,
        ge=1,
        description="CPU threads for inference (torch and ONNX intra-op; LiteRT runs this many "
        "single-threaded interpreters side by side). Default: the CPUs this process may use "
        "(affinity and container quota) divided by workers.",
    )
    worker_nice: int = Field(
        5,
        ge=0,
        le=19,
        description="Nice increment of the decode and inference threads, so the event "
        "loop answering requests runs first (Linux; 0 turns it off).",
    )
    decode_threads: int = Field(
        default_factory=_default_threads,
        ge=1,
        description="Threads decoding and preprocessing uploads (default as for threads).",
    )
    gil_switch_interval_ms: float = Field(
        0.5,
        gt=0,
        le=100,
        description="How long a thread may hold the GIL while another waits for it "
        "(Python's default is 5). A decode or inference thread back from C code then "
        "waits less for the event loop to let go, so fewer cores sit idle.",
    )

    # --- batching ---
    run_to_completion: bool = Field(
        True,
        description="LiteRT on CPU: a single-image request is decoded and forwarded on one "
        "decode thread with an interpreter of its own (no batch: LiteRT's graphs run one "
        "image at a time anyway), saving the hand-offs between threads; client batches "
        "and explanations still go through the batcher.",
    )
    max_batch_size: int = Field(16, ge=1, le=512, description="Largest batch the worker runs.")
    max_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="Longest a request waits for its batch to fill."
    )
    queue_limit: int = Field(
        64, ge=1, description="Hard cap on requests in flight per variant before 503."
    )
    admission_target_ms: float = Field(
        500,
        gt=0,
        description="Server-side latency (admission to answer) the per-variant "
        "concurrency limit steers to; past the limit, 503 with Retry-After.",
    )
    retry_after_hold_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="A connection refused with 503 that retries before its Retry-After "
        "while still refused gets its next 503 only when Retry-After is up (at most this "
        "long). 0 turns it off (e.g. behind a proxy that pools connections).",
    )
    request_timeout_ms: float = Field(
        10_000, gt=0, description="Default per-request deadline (timeout_ms overrides)."
    )

    # --- intake ---
    max_upload_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Upload size limit.")
    max_pixels: int = Field(40_000_000, ge=1, description="Decompression-bomb pixel limit.")
    max_batch_files: int = Field(
        32,
        ge=1,
        description="Files per /predict/batch request; images per OIP v2 or KServe v1 request.",
    )
    max_uploads: int = Field(
        512,
        ge=1,
        description="Request bodies being received at once, all clients together; past it "
        "503 + Retry-After. Uploads hold no inference slot while they arrive.",
    )
    max_uploads_per_client: int = Field(
        64,
        ge=0,
        description="Slow uploads (still arriving after 1 s) from one client address at "
        "once; past it 429 and the connection is closed (0: no per-client bound). Behind a "
        "proxy the address is the proxy's unless it passes X-Forwarded-For and "
        "FORWARDED_ALLOW_IPS trusts it (docs/deploy.md).",
    )
    upload_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Longest a request body may take to arrive (16 MiB at 1.6 MiB/s), "
        "else 408 and the connection is closed.",
    )
    upload_min_rate_bytes: int = Field(
        4096,
        ge=0,
        description="Slowest average upload rate (bytes/s) tolerated once "
        "upload_grace_s has passed, else 408 and the connection is closed (0: off).",
    )
    upload_grace_s: float = Field(
        5.0, ge=0, description="Seconds a body may arrive slower than upload_min_rate_bytes."
    )

    # --- weights ---
    weights_dir: Path = Field(Path("weights"), description="Converted weights and manifest.")
    weights_mirror: Path | str | None = Field(
        None,
        description="Upstream weight files for air-gapped installs: a directory, or an "
        "http(s) base URL (an internal artifact server); sha256 is checked either way.",
    )

    # --- operations ---
    api_key: str | None = Field(None, description="If set, predict routes need this bearer token.")
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins.")
    log_json: bool = Field(False, description="Structured JSON logs.")
    log_level: str = Field("info", description="Log level.")
    shutdown_grace_s: float = Field(30.0, ge=0, description="Drain time on SIGTERM.")
    warmup: bool = Field(True, description="Run warm-up passes and the golden-image check.")

    @field_validator("weights_mirror", mode="before")
    @classmethod
    def _mirror_dir_or_url(cls, value: object) -> object:
        """Keep an http(s) URL as text (a Path would fold its ``//``); else a directory."""
        if isinstance(value, str) and not value.startswith(("http://", "https://")):
            return Path(value) if value else None
        return value

    @field_validator("variants", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
            return items or None
        return value
