"""``wrk`` (Debian's native HTTP load generator) as the benchmark's headline client.

Why: the httpx load generator (``bench.loadgen``) spends ~1-2 ms of CPU per request on
the same cores as the server; wrk spends ~0.02 ms, so what it measures is the server.
Like ``bench.loadgen`` it is closed-loop: each of ``concurrency`` keep-alive connections
has exactly one request in flight.

A Lua script posts one pre-encoded body (a multipart form, or the raw image) and counts
every answer's status in wrk's ``response`` hook; its ``done`` hook prints one JSON line
(``WRK_JSON {...}``) with the run's duration, answers, socket errors, statuses and
latency percentiles, which is what is parsed here (``--latency`` is passed too, so the
kept log shows wrk's own distribution). A short warm-up run opens the connections and
fills the server's pipeline first; only the measured run counts. wrk's own CPU (user +
system) comes from the kernel's accounting of that child process (``os.wait4``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.loadgen import check_loopback

MARKER = "WRK_JSON "

# args: <body file> <content type>. Globals (``counts``) are what ``thread:get`` can read.
LUA = r"""-- written by bench/wrk.py: POST one pre-encoded body, count every status
counts = {}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = args[2]
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do
      total[status] = (total[status] or 0) + n
    end
  end
  local statuses = {}
  for status, n in pairs(total) do
    table.insert(statuses, string.format('"%d": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    '%s{"duration_us": %d, "requests": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, '
      .. '"statuses": {%s}, "latency_us": {"p50": %d, "p90": %d, "p95": %d, "p99": %d, '
      .. '"max": %d, "mean": %.1f}}\n',
    "WRK_JSON ", summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.timeout, table.concat(statuses, ", "),
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency.max, latency.mean))
end
"""


def find_wrk() -> str | None:
    """The ``wrk`` executable, or None (``apt-get install wrk``)."""
    return shutil.which("wrk")


def version(exe: str) -> str:
    """wrk's version line (``wrk -v`` prints it, then its usage, and exits 1)."""
    try:
        out = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.splitlines()[0].split(" Copyright")[0] if out else "?"


@dataclass(frozen=True, kw_only=True)
class WrkSpec:
    """One wrk cell: a warm-up run, then a measured run of ``seconds``."""

    url: str
    body: bytes
    content_type: str
    concurrency: int = 16
    threads: int = 1  # one epoll loop easily keeps 16 connections busy at these rates
    seconds: float = 6.0  # wrk runs whole seconds: rounded, at least 1
    warmup_s: float = 2.0  # 0: no warm-up run
    timeout_s: float = 30.0


@dataclass(frozen=True, kw_only=True)
class WrkResult:
    """The measured run. Latencies over every answer (wrk does not split them by status)."""

    concurrency: int
    seconds: float
    answered: int  # every complete HTTP answer, whatever its status
    ok: int  # 2xx answers
    rps: float  # 2xx answers per second of the run
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)  # non-2xx by status, socket errors
    client_cpu_s: float = math.nan  # wrk's user + system CPU over the measured run
    server_cpu_s: float = math.nan  # the ``cpu`` probe's difference over the same run


def parse(text: str, concurrency: int) -> WrkResult:
    """The ``WRK_JSON`` line of a run's output as a result (client CPU not yet known)."""
    line = next((ln for ln in text.splitlines() if ln.startswith(MARKER)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no {MARKER.strip()} line:\n{text[-2000:]}")
    raw = json.loads(line[len(MARKER) :])
    statuses = {int(k): int(v) for k, v in raw["statuses"].items()}
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    errors = {str(s): n for s, n in sorted(statuses.items()) if not 200 <= s < 300}
    errors.update({k: int(v) for k, v in raw["errors"].items() if v})
    seconds = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    return WrkResult(
        concurrency=concurrency,
        seconds=seconds,
        answered=int(raw["requests"]),
        ok=ok,
        rps=ok / seconds if seconds > 0 else math.nan,
        p50_ms=lat["p50"] / 1e3,
        p90_ms=lat["p90"] / 1e3,
        p95_ms=lat["p95"] / 1e3,
        p99_ms=lat["p99"] / 1e3,
        max_ms=lat["max"] / 1e3,
        errors=errors,
    )


def _run_wrk(args: list[str], log: Path, limit_s: float) -> tuple[str, float]:
    """Run wrk once; returns (its output, its user + system CPU seconds)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    killer = threading.Timer(limit_s, proc.kill)  # a backstop: wrk stops itself on time
    killer.start()
    try:
        # wait4, not wait: the kernel's CPU accounting of exactly this child.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        raise
    finally:
        killer.cancel()
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{text[-2000:]}")
    return text, usage.ru_utime + usage.ru_stime


def run(
    spec: WrkSpec, workdir: Path, *, cpu: Callable[[], float] | None = None, tag: str = "wrk"
) -> WrkResult:
    """Warm up, then measure; ``cpu`` (the server's CPU seconds so far) is read just before
    and just after the measured run. The script, body and wrk's output stay in ``workdir``."""
    check_loopback(spec.url)
    exe = find_wrk()
    if exe is None:
        raise RuntimeError("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    workdir.mkdir(parents=True, exist_ok=True)
    script, body = workdir / "post.lua", workdir / f"{tag}.body"
    script.write_text(LUA)
    body.write_bytes(spec.body)

    def args(seconds: float) -> list[str]:
        return [
            exe,
            f"-t{min(spec.threads, spec.concurrency)}",
            f"-c{spec.concurrency}",
            f"-d{max(1, round(seconds))}s",  # wrk takes whole seconds
            f"--timeout={max(1, math.ceil(spec.timeout_s))}s",
            "--latency",
            "-s",
            str(script),
            spec.url,
            "--",
            str(body),
            spec.content_type,
        ]

    try:
        if spec.warmup_s > 0:
            _run_wrk(args(spec.warmup_s), workdir / f"{tag}-warmup.txt", spec.warmup_s + 60)
        server0 = cpu() if cpu else math.nan
        text, client_s = _run_wrk(args(spec.seconds), workdir / f"{tag}.txt", spec.seconds + 60)
        server_s = (cpu() - server0) if cpu else math.nan
    finally:
        body.unlink(missing_ok=True)  # up to 250 KB per cell; the outputs are what is kept
    return replace(parse(text, spec.concurrency), client_cpu_s=client_s, server_cpu_s=server_s)
