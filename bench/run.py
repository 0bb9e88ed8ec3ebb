"""``python -m bench.run`` (``make bench``): our service against its peers and its limits.

For every variant and server: start the server as a subprocess on a free loopback port,
wait until it is ready, drive it with the closed-loop load generator at each concurrency
and input, record its memory, stop it (SIGTERM to its process group, then SIGKILL), and
finally measure the no-HTTP limits (``bench.limits``) in the same run, so every ratio
compares numbers taken on the same machine minutes apart. Results go to
``bench/results/<timestamp>.json`` (git-ignored) and, for full runs, ``docs/benchmarks.md``.

    python -m bench.run                         # the default run (< ~10 min on 2 cores)
    python -m bench.run --quick --servers ours --inputs small --concurrency 2   # smoke
    python -m bench.run --servers ours,ours-torch,naive,litserve,torchserve --variants v2-1.0-224
    python -m bench.run --ours-env MOBILENET_THREADS=1   # try a setting of our server
    python -m bench.run --rss-soak 10000        # memory of our server over 10k requests

Servers: ``ours`` (``mobilenet-serve serve``, default settings: on CPU that is the int8
LiteRT model), ``ours-torch`` (the same with ``MOBILENET_BACKEND=torch``, the like-for-like
comparison with the torch peers), ``naive``, ``litserve``, ``torchserve`` (needs
``pip install torchserve`` and Java 17; see bench/peers/torchserve_note.md). Every run
also drives ``null-http`` (a server that does no work) on each input, so the report shows
what HTTP and the load generator cost on these cores next to the no-HTTP limits. The
headline cell (v3-small, 720p, concurrency 16: ours against LitServe) is then measured
``--repeats`` more times per server, alternating, and reported as medians.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import math
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import psutil
from PIL import Image

from bench import limits as limits_mod
from bench.loadgen import LoadResult, LoadSpec, run_load_sync

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOBILENET_SHARED_DIR", REPO.parent / "shared"))
IMAGES = SHARED / "images"
RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "benchmarks.md"

DEFAULT_VARIANTS = ("v3-small-1.0-224", "v2-1.0-224")
DEFAULT_SERVERS = ("ours", "ours-onnx", "naive", "litserve")
DEFAULT_CONCURRENCY = (1, 16, 64)
DEFAULT_INPUTS = ("720p", "small", "png")
OURS = ("ours", "ours-torch", "ours-onnx")
# The reference cell, measured again after the grid (see ``headline_repeats``).
HEADLINE = ("v3-small-1.0-224", "720p", 16)
HEADLINE_PEER = "litserve"
DEFAULT_REPEATS = 2
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0


# ------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class Input:
    """One request body: the bytes, their MIME type and a file name for the form."""

    name: str
    data: bytes
    content_type: str
    filename: str
    size: tuple[int, int]

    def describe(self) -> str:
        return f"{self.filename} {self.size[0]}x{self.size[1]}, {len(self.data) / 1024:.0f} KiB"


def _encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def make_inputs(names: list[str]) -> dict[str, Input]:
    """The benchmark images: a 720p camera JPEG, a small web JPEG and a PNG screenshot-like.

    Made from ``shared/images`` at run time, deterministically, so nothing binary is kept
    in the repository and every run sends the same bytes.
    """
    if not (IMAGES / "cat.bmp").is_file() or not (IMAGES / "cat_720p.jpg").is_file():
        raise SystemExit(
            f"benchmark photos not found in {IMAGES}; set MOBILENET_SHARED_DIR to the shared/ "
            "folder (it holds images/cat.bmp and images/cat_720p.jpg)"
        )
    cat = Image.open(IMAGES / "cat.bmp").convert("RGB")
    small = cat.resize((336, 224), Image.Resampling.LANCZOS)
    makers: dict[str, Callable[[], Input]] = {
        "720p": lambda: Input(
            "720p",
            (IMAGES / "cat_720p.jpg").read_bytes(),
            "image/jpeg",
            "cat_720p.jpg",
            (1280, 720),
        ),
        "small": lambda: Input(
            "small", _encode(small, "JPEG", quality=90), "image/jpeg", "cat_small.jpg", small.size
        ),
        "png": lambda: Input("png", _encode(cat, "PNG"), "image/png", "cat.png", cat.size),
    }
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise SystemExit(f"unknown input(s) {unknown}; choose from {sorted(makers)}")
    return {n: makers[n]() for n in names}


# ----------------------------------------------------------------------------- servers
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


# --------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Counts:
    """How much load each cell gets: a timed window, with a request cap as a backstop.

    The cap is far above what a 2-core server answers in the window, so the window ends
    on time and the drain after it is not counted (``bench.loadgen``)."""

    requests: int = 5000
    warmup_per_user: int = 2
    min_warmup: int = 10
    warmup_seconds: float = 2.0
    max_seconds: float = 4.0
    timeout_s: float = 30.0


QUICK = Counts(requests=20, warmup_per_user=1, min_warmup=2, warmup_seconds=1.0, max_seconds=3.0)


@dataclass
class Row:
    """One table row: a server at one concurrency on one input."""

    server: str
    variant: str
    input: str
    concurrency: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: dict[str, int]
    rss_mb: float
    sent: int
    ok: int
    seconds: float
    # CPU seconds per request (warm-up, window and drain; every answer counts, 503s too):
    # the server's process tree, and this process, which is the load generator.
    server_cpu_ms: float = math.nan
    client_cpu_ms: float = math.nan

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class ServerRun:
    """Everything measured on one server process: rows and memory before/after load."""

    server: str
    variant: str
    rss_ready_mb: float = math.nan
    rss_after_mb: float = math.nan
    startup_s: float = math.nan
    rows: list[Row] = field(default_factory=list)
    failure: str | None = None


def measure_cell(server: Running, inp: Input, spec: LoadSpec) -> Row:
    """One load run, with the CPU that the server and the load generator spent on it."""
    server0, client0 = cpu_s(server.proc.pid), time.process_time()
    result = run_load_sync(spec)
    server_s, client_s = cpu_s(server.proc.pid) - server0, time.process_time() - client0
    n = max(1, result.warmup_sent + result.sent)
    return replace(
        _row(server, inp, result),
        server_cpu_ms=server_s / n * 1e3,
        client_cpu_ms=client_s / n * 1e3,
    )


def _row(server: Running, inp: Input, result: LoadResult) -> Row:
    return Row(
        server=server.defn.name,
        variant=server.variant,
        input=inp.name,
        concurrency=result.concurrency,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p95_ms=result.p95_ms,
        p99_ms=result.p99_ms,
        errors=result.errors,
        rss_mb=rss_mb(server.proc.pid),
        sent=result.sent,
        ok=result.ok,
        seconds=result.seconds,
    )


def drive(
    server: Running, inputs: dict[str, Input], concurrencies: list[int], counts: Counts
) -> list[Row]:
    """Every (input, concurrency) cell against one ready server, in a fixed order."""
    rows = []
    for inp in inputs.values():
        for c in concurrencies:
            spec = LoadSpec(
                url=server.predict_url,
                body=inp.data,
                content_type=inp.content_type,
                filename=inp.filename,
                concurrency=c,
                warmup=max(counts.min_warmup, counts.warmup_per_user * c),
                warmup_seconds=counts.warmup_seconds,
                requests=counts.requests,
                max_seconds=counts.max_seconds,
                timeout_s=counts.timeout_s,
            )
            row = measure_cell(server, inp, spec)
            rows.append(row)
            print("  " + format_row(row), flush=True)
    return rows


def bench_server(
    defn: ServerDef,
    variant: str,
    weights: Path,
    inputs: dict[str, Input],
    concurrencies: list[int],
    counts: Counts,
    log_dir: Path,
) -> ServerRun:
    """Start, measure and stop one server; a failure is recorded, not raised."""
    run = ServerRun(defn.name, variant)
    print(f"{defn.name} / {variant}: starting", flush=True)
    t0 = time.monotonic()
    with running_server(defn, variant, weights, log_dir) as server:
        try:
            wait_ready(server, READY_TIMEOUT_S)
            probe(server, next(iter(inputs.values())))
            run.startup_s = time.monotonic() - t0
            run.rss_ready_mb = rss_mb(server.proc.pid)
            run.rows = drive(server, inputs, concurrencies, counts)
            run.rss_after_mb = rss_mb(server.proc.pid)
        except (RuntimeError, httpx.HTTPError) as exc:
            run.failure = str(exc)
            print(f"  FAILED: {exc}", flush=True)
    return run


def headline_repeats(
    defs: dict[str, ServerDef],
    weights: Path,
    inp: Input,
    counts: Counts,
    log_dir: Path,
    *,
    rounds: int,
) -> list[Row]:
    """The headline cell again, ours and the peer each restarted for every round, in the
    order peer, ours, ours, peer, ...: this machine drifts by tens of per cent within
    minutes, so one cell per server, minutes apart, can flatter either side."""
    variant, _, conc = HEADLINE
    rows: list[Row] = []
    for r in range(rounds):
        order = [HEADLINE_PEER, "ours"] if r % 2 == 0 else ["ours", HEADLINE_PEER]
        for name in order:
            run = bench_server(
                defs[name], variant, weights, {inp.name: inp}, [conc], counts, log_dir / f"r{r}"
            )
            rows.extend(run.rows)
    return rows


def headline_stats(rows: list[Row], repeats: list[Row]) -> dict[str, Any] | None:
    """Every measurement of the headline cell per server (the grid's first), their medians,
    and ours / peer of the medians; None unless both servers were measured."""
    cell = [r for r in rows + repeats if (r.variant, r.input, r.concurrency) == HEADLINE]
    per: dict[str, dict[str, list[float]]] = {}
    for r in cell:
        if r.server in ("ours", HEADLINE_PEER) and r.ok:
            got = per.setdefault(r.server, {"rps": [], "p99_ms": []})
            got["rps"].append(r.rps)
            got["p99_ms"].append(r.p99_ms)
    if len(per) < 2:
        return None
    med = {s: {k: statistics.median(v) for k, v in d.items()} for s, d in per.items()}
    ours, peer = med["ours"], med[HEADLINE_PEER]
    return {
        "cell": list(HEADLINE),
        "peer": HEADLINE_PEER,
        "measured": per,
        "median": med,
        "rps_ratio": ours["rps"] / peer["rps"] if peer["rps"] else math.nan,
        "p99_ratio": ours["p99_ms"] / peer["p99_ms"] if peer["p99_ms"] else math.nan,
    }


def headline_markdown(h: dict[str, Any]) -> str:
    variant, inp, conc = h["cell"]
    table = md_table(
        ["server", "req/s, in order", "median req/s", "p99 ms, in order", "median p99 ms"],
        [
            [
                server,
                ", ".join(_fmt(x) for x in got["rps"]),
                _fmt(h["median"][server]["rps"]),
                ", ".join(_fmt(x, 0) for x in got["p99_ms"]),
                _fmt(h["median"][server]["p99_ms"], 0),
            ]
            for server, got in h["measured"].items()
        ],
    )
    n = min(len(got["rps"]) for got in h["measured"].values())
    return (
        f"The headline cell ({variant}, {inp}, concurrency {conc}) measured {n} times per "
        f"server: the grid above, then each server restarted and measured again, "
        f"alternating ({h['peer']}, ours, ours, {h['peer']}, ...) so that drift weighs on "
        "both alike.\n\n"
        + table
        + f"\n\nMedians, ours / {h['peer']}: **req/s x{_fmt(h['rps_ratio'], 2)}**, "
        f"**p99 x{_fmt(h['p99_ratio'], 2)}**."
    )


def rss_soak(
    defn: ServerDef,
    variant: str,
    weights: Path,
    inp: Input,
    total: int,
    log_dir: Path,
    *,
    concurrency: int = 16,
    steps: int = 10,
) -> list[dict[str, float]]:
    """Send ``total`` requests in ``steps`` chunks and report RSS after each (no assertion)."""
    points: list[dict[str, float]] = []
    with running_server(defn, variant, weights, log_dir) as server:
        wait_ready(server, READY_TIMEOUT_S)
        probe(server, inp)
        sent = 0
        points.append({"requests": 0, "rss_mb": rss_mb(server.proc.pid), "rps": math.nan})
        print(f"soak {defn.name}/{variant} {inp.name}: RSS {points[0]['rss_mb']:.1f} MB at start")
        chunk = max(1, math.ceil(total / steps))
        while sent < total:
            n = min(chunk, total - sent)
            spec = LoadSpec(
                url=server.predict_url,
                body=inp.data,
                content_type=inp.content_type,
                filename=inp.filename,
                concurrency=concurrency,
                warmup=0,
                requests=n,
                max_seconds=600.0,
            )
            result = run_load_sync(spec)
            sent += result.sent
            point = {
                "requests": sent,
                "rss_mb": rss_mb(server.proc.pid),
                "rps": result.rps,
                "errors": result.error_count,
            }
            points.append(point)
            print(
                f"  after {sent:6d} requests: RSS {point['rss_mb']:7.1f} MB  "
                f"{result.rps:6.1f} req/s  errors {result.error_count}",
                flush=True,
            )
    return points


# ------------------------------------------------------------------------------ report
def report_rows(report: dict[str, Any], key: str) -> list[Row]:
    """A list of rows of the JSON report as ``Row`` objects (absent in older reports: [])."""
    return [Row(**r) for r in report.get(key, [])]


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _errors_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}:{v}" for k, v in sorted(errors.items())) or "0"


ROW_HEADERS = [
    "server",
    "variant",
    "input",
    "conc",
    "req/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "errors",
    "RSS MB",
    "srv CPU ms/req",
    "client CPU ms/req",
]


ROW_WIDTHS = [11, 17, 6, 4, 8, 8, 8, 8, 10, 7, 14, 17]


def row_cells(r: Row) -> list[str]:
    return [
        r.server,
        r.variant,
        r.input,
        str(r.concurrency),
        _fmt(r.rps),
        _fmt(r.p50_ms),
        _fmt(r.p95_ms),
        _fmt(r.p99_ms),
        _errors_text(r.errors),
        _fmt(r.rss_mb, 0),
        _fmt(r.server_cpu_ms, 2),
        _fmt(r.client_cpu_ms, 2),
    ]


def _line(cells: list[str]) -> str:
    """One fixed-width console line: the first three columns left-aligned, numbers right."""
    return " ".join(
        c.rjust(w) if i > 2 else c.ljust(w)
        for i, (c, w) in enumerate(zip(cells, ROW_WIDTHS, strict=True))
    )


def format_row(r: Row) -> str:
    return _line(row_cells(r))


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def ratio_rows(rows: list[Row], peers: list[str]) -> list[list[str]]:
    """Ours vs each peer per cell: throughput ratio (>1 = ours faster), p99 ratio (<1 = ours
    lower tail latency)."""
    index = {(r.server, r.variant, r.input, r.concurrency): r for r in rows}
    out = []
    for r in rows:
        if r.server not in OURS:
            continue
        for peer in peers:
            p = index.get((peer, r.variant, r.input, r.concurrency))
            if p is None:
                continue
            out.append(
                [
                    f"{r.server} / {peer}",
                    r.variant,
                    r.input,
                    str(r.concurrency),
                    _fmt(r.rps / p.rps if p.rps else math.nan, 2),
                    _fmt(r.p99_ms / p.p99_ms if p.p99_ms else math.nan, 2),
                ]
            )
    return out


def http_ceiling(limit_img_s: float, http: Row | None, *, cores: int) -> float:
    """The most an HTTP server could answer here: the pipeline's CPU per image (all cores
    busy at the limit) plus what one request costs the null server and the load generator,
    which share the same cores."""
    if http is None or not limit_img_s or math.isnan(http.server_cpu_ms + http.client_cpu_ms):
        return math.nan
    per_request_ms = cores * 1000 / limit_img_s + http.server_cpu_ms + http.client_cpu_ms
    return cores * 1000 / per_request_ms


def limit_rows(
    rows: list[Row], pipeline: list[dict[str, Any]], http: list[Row] | None = None
) -> list[list[str]]:
    """Ours at its best concurrency vs the in-process pipeline limit of the same input, and
    vs that limit once HTTP's own cost (the null server's cell of that input) is added."""
    null = {r.input: r for r in http or []}
    out = []
    for p in pipeline:
        mine = [
            r
            for r in rows
            if r.server == "ours" and (r.variant, r.input) == (p["variant"], p["input"])
        ]
        if not mine:
            continue
        best = max(mine, key=lambda r: r.rps)
        ceiling = http_ceiling(p["img_s"], null.get(p["input"]), cores=limits_mod.cores())
        out.append(
            [
                p["variant"],
                p["input"],
                f"{p['backend']} x{p['threads']} dec, b{p['batch']}",
                _fmt(p["img_s"]),
                f"{_fmt(best.rps)} (c={best.concurrency})",
                _fmt(best.rps / p["img_s"] if p["img_s"] else math.nan, 2),
                _fmt(ceiling),
                _fmt(best.rps / ceiling if ceiling else math.nan, 2),
            ]
        )
    return out


def limits_markdown(lim: dict[str, list[dict[str, Any]]]) -> str:
    fwd = md_table(
        ["variant", "backend", "precision", "batch", "img/s", "ms/batch"],
        [
            [
                p["variant"],
                p["backend"],
                p["precision"],
                str(p["batch"]),
                _fmt(p["img_s"]),
                _fmt(p["ms_per_batch"], 2),
            ]
            for p in lim["forward"]
        ],
    )
    best = md_table(
        ["variant", "backend", "best batch", "img/s"],
        [
            [p["variant"], p["backend"], str(p["batch"]), _fmt(p["img_s"])]
            for p in limits_mod.best_forward(lim["forward"])
        ],
    )
    dec = md_table(
        ["variant", "input", "ms/image", "img/s (1 thread)"],
        [[p["variant"], p["input"], _fmt(p["ms"], 2), _fmt(p["img_s"])] for p in lim["decode"]],
    )
    pipe = md_table(
        ["variant", "input", "backend", "decode threads", "batch", "img/s"],
        [
            [
                p["variant"],
                p["input"],
                p["backend"],
                str(p["threads"]),
                str(p["batch"]),
                _fmt(p["img_s"]),
            ]
            for p in lim["pipeline"]
        ],
    )
    return (
        "### Model forward alone (all cores, ready uint8 batch)\n\n"
        + fwd
        + "\n\nBest batch size per backend:\n\n"
        + best
        + "\n\n### Decode + preprocess alone (`app.imaging.prepare`, one thread)\n\n"
        + dec
        + "\n\n### In-process pipeline (decode pool of all cores -> batched forward, "
        "the service's default backend)\n\n" + pipe
    )


# ------------------------------------------------------------------------------ machine
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
        f"(LiteRT: {n} single-threaded interpreters share each batch, a lone image goes to one "
        f"{n}-thread interpreter; batch <= 16, wait 2 ms; extra settings: {extra}); naive: torch "
        f"default intra-op threads ({n}), 1 uvicorn worker; litserve: {min(n, 4)} worker(s) x "
        f"{max(1, n // min(n, 4))} torch thread(s), batch <= 16, timeout 5 ms, fast_queue.",
        f"- Platform: {info['platform']}",
    ]
    return "\n".join(lines)


# Figures from the last GPU machine run (bench/gpu_check.sh, not part of `make bench`).
GPU_SUMMARY = Path(__file__).resolve().parent / "gpu_results_h100" / "summary.md"


def render_markdown(report: dict[str, Any], rows: list[Row], command: str) -> str:
    peers = [s for s in report["servers"] if s not in OURS]
    http = report_rows(report, "http_alone")
    headline = headline_stats(rows, report_rows(report, "headline_repeats"))
    memory = md_table(
        ["server", "variant", "start-up s", "RSS ready MB", "RSS after load MB", "failure"],
        [
            [
                s["server"],
                s["variant"],
                _fmt(s["startup_s"]),
                _fmt(s["rss_ready_mb"], 0),
                _fmt(s["rss_after_mb"], 0),
                (s["failure"] or "").splitlines()[0][:80] if s["failure"] else "",
            ]
            for s in report["server_runs"]
        ],
    )
    parts = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` on {report['started']} ({report['elapsed_s']:.0f} s). "
        "Re-run `make bench` on a quiet machine to refresh; do not edit by hand.",
        "",
        "## Machine",
        "",
        machine_markdown(report["machine"], report["ours_env"]),
        "",
        "## Method",
        "",
        "Each server runs alone, as a subprocess on a loopback port, with only the benchmarked "
        "variant loaded. A closed-loop client (`bench/loadgen.py`: httpx, one keep-alive "
        "HTTP/1.1 connection per virtual user, the multipart body encoded once) sends "
        "`POST` + multipart field `file`; each cell is a warm-up, then a measured window of "
        f"{report['counts']['max_seconds']} s (at most {report['counts']['requests']} requests). "
        "req/s counts the 200s answered inside the window, while every virtual user is busy; "
        "the drain after it (fewer and fewer requests in flight, and at concurrency 64 any "
        "503s held until their Retry-After) is not counted, for every server alike. Latency "
        "is client-side, over every successful measured request. The client "
        "runs on the same CPUs as the server, so on a small machine it takes a share of them "
        "from every server alike. CPU ms/req: user + system CPU of the server's processes, and "
        "of the load generator, over the whole cell (warm-up, window and drain) divided by "
        "every request sent in it, 503s included. RSS sums the server process and all its "
        "children: shared pages count once in every process, so multi-process servers "
        "(LitServe, TorchServe) look bigger than their real footprint.",
        "",
        "Inputs: " + "; ".join(f"`{k}` = {v}" for k, v in report["inputs"].items()) + ".",
        "",
        "## Results",
        "",
        md_table(ROW_HEADERS, [row_cells(r) for r in rows]),
        "",
        "## Ratios",
        "",
        "Throughput ratio > 1: ours answers more requests/s. p99 ratio < 1: ours has the "
        "lower tail latency.",
        "",
        md_table(
            ["ours / peer", "variant", "input", "conc", "req/s ratio", "p99 ratio"],
            ratio_rows(rows, peers),
        ),
        "",
        *(
            ["### The headline cell, repeated", "", headline_markdown(headline), ""]
            if headline
            else []
        ),
        "Ours at its best concurrency against the no-HTTP pipeline limit (1.0 = HTTP, "
        "batching and queueing cost nothing), and against the HTTP ceiling: that limit with "
        "the CPU one request costs the null server and the load generator (below) added, "
        "since they share the cores: the most any HTTP server could answer here with this "
        "client.",
        "",
        md_table(
            [
                "variant",
                "input",
                "pipeline",
                "limit img/s",
                "ours req/s",
                "ours / limit",
                "HTTP ceiling req/s",
                "ours / ceiling",
            ],
            limit_rows(rows, report["limits"].get("pipeline", []), http),
        ),
        "",
        "### HTTP alone (same run)",
        "",
        "`null-http` (`bench/peers/null_http.py`): raw ASGI on the same uvicorn stack as "
        "ours, reads the upload, answers a fixed JSON; no framework, decode or model.",
        "",
        md_table(ROW_HEADERS, [row_cells(r) for r in http]) if http else "(not measured)",
        "",
        "## Limits (no HTTP, same run)",
        "",
        limits_markdown(report["limits"]) if report["limits"] else "(skipped)",
        "",
        "## Memory and start-up",
        "",
        memory,
        "",
        "## Peers",
        "",
        "- `naive` (`bench/peers/naive.py`): FastAPI + `UploadFile` + full PIL decode + "
        "batch-1 forward inside the async handler; same weights and preprocessing.",
        "- `litserve` (`bench/peers/litserve_peer.py`): LitServe dynamic batching, decode in "
        "`decode_request`, batched forward in `predict`.",
        "- TorchServe: see `bench/peers/torchserve_note.md`.",
        "",
        GPU_SUMMARY.read_text().strip() if GPU_SUMMARY.exists() else "",
        "",
    ]
    return "\n".join(parts)


# -------------------------------------------------------------------------------- main
def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark our service against peers and no-HTTP limits.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[-1],
    )
    p.add_argument("--quick", action="store_true", help="tiny counts, one variant (CI smoke)")
    p.add_argument("--variants", type=_csv, help=f"default {','.join(DEFAULT_VARIANTS)}")
    p.add_argument(
        "--servers",
        type=_csv,
        help=f"default {','.join(DEFAULT_SERVERS)}; also ours-torch, torchserve",
    )
    p.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in _csv(s)], help="default 1,16,64"
    )
    p.add_argument("--inputs", type=_csv, help=f"default {','.join(DEFAULT_INPUTS)}")
    p.add_argument("--requests", type=int, help="request cap per cell (default 5000)")
    p.add_argument("--max-seconds", type=float, help="measured window per cell (default 4)")
    p.add_argument("--no-limits", action="store_true", help="skip the no-HTTP limits")
    p.add_argument(
        "--repeats",
        type=int,
        help=f"extra rounds of the headline cell {HEADLINE} for ours and {HEADLINE_PEER}, "
        f"each server restarted (default {DEFAULT_REPEATS}, 0 with --quick)",
    )
    p.add_argument("--weights-dir", type=Path, default=REPO / "weights")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument(
        "--docs",
        type=Path,
        help=f"markdown report (default {DOCS.relative_to(REPO)} for full runs, none with --quick)",
    )
    p.add_argument("--no-docs", action="store_true", help="do not write the markdown report")
    p.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra MOBILENET_* setting for our server (repeatable)",
    )
    p.add_argument(
        "--rss-soak",
        type=int,
        metavar="N",
        help="only: send N requests to our server and report RSS as it goes",
    )
    return p


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--ours-env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def _check_weights(weights: Path, variants: list[str]) -> None:
    from app.weights import present_variants

    present = present_variants(weights) if weights.exists() else []
    missing = [v for v in variants if v not in present]
    if missing:
        raise SystemExit(
            f"weights for {', '.join(missing)} are missing from {weights}; run `make weights` "
            "(or `mobilenet-serve weights fetch --mirror ../shared/pretrained/tflite`)"
        )


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """The default mode: every server x variant x input x concurrency, then the limits."""
    counts = QUICK if args.quick else Counts()
    if args.requests or args.max_seconds:
        counts = replace(
            counts,
            requests=args.requests or counts.requests,
            max_seconds=args.max_seconds or counts.max_seconds,
        )
    variants = args.variants or (
        list(DEFAULT_VARIANTS[:1]) if args.quick else list(DEFAULT_VARIANTS)
    )
    servers = args.servers or list(DEFAULT_SERVERS)
    concurrencies = args.concurrency or list(DEFAULT_CONCURRENCY)
    inputs = make_inputs(args.inputs or list(DEFAULT_INPUTS))
    ours_env = _parse_env(args.ours_env)
    defs = server_defs(ours_env)
    unknown = [s for s in servers if s not in defs]
    if unknown:
        raise SystemExit(f"unknown server(s) {unknown}; choose from {sorted(defs)}")
    weights = args.weights_dir.resolve()
    _check_weights(weights, variants)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = args.results_dir / f"logs-{stamp}"
    started, t0 = dt.datetime.now().isoformat(timespec="seconds"), time.monotonic()

    runs = [
        bench_server(defs[s], v, weights, inputs, concurrencies, counts, log_dir)
        for v in variants
        for s in servers
    ]
    repeats: list[Row] = []
    rounds = args.repeats if args.repeats is not None else (0 if args.quick else DEFAULT_REPEATS)
    variant, input_name, conc = HEADLINE
    if (
        rounds > 0
        and {"ours", HEADLINE_PEER} <= set(servers)
        and variant in variants
        and input_name in inputs
        and conc in concurrencies
    ):
        print(f"headline cell again: {rounds} round(s) of {HEADLINE_PEER} and ours", flush=True)
        repeats = headline_repeats(
            defs, weights, inputs[input_name], counts, log_dir / "repeats", rounds=rounds
        )
    lim: dict[str, list[dict[str, Any]]] = {}
    http_alone: list[Row] = []
    if not args.no_limits:
        # What HTTP alone costs with this client, for the HTTP ceiling: the null server at
        # the busiest concurrency up to 16 (the reference point), on every input.
        null_c = max((c for c in concurrencies if c <= 16), default=16)
        null = bench_server(defs["null-http"], "none", weights, inputs, [null_c], counts, log_dir)
        http_alone = null.rows
        raw = {k: v.data for k, v in inputs.items()}
        lim = limits_mod.measure(variants, weights, raw, quick=args.quick)
    return {
        "started": started,
        "stamp": stamp,
        "elapsed_s": time.monotonic() - t0,
        "quick": args.quick,
        "machine": machine_info(),
        "ours_env": ours_env,
        "counts": asdict(counts),
        "variants": variants,
        "servers": servers,
        "concurrency": concurrencies,
        "inputs": {k: v.describe() for k, v in inputs.items()},
        "server_runs": [asdict(r) for r in runs],
        "rows": [asdict(row) for r in runs for row in r.rows],
        "headline_repeats": [asdict(row) for row in repeats],
        "http_alone": [asdict(row) for row in http_alone],
        "limits": lim,
    }


def print_summary(report: dict[str, Any], rows: list[Row]) -> None:
    print()
    print(_line(ROW_HEADERS))
    for r in rows:
        print(format_row(r))
    peers = [s for s in report["servers"] if s not in OURS]
    ratios = ratio_rows(rows, peers)
    if ratios:
        print(f"\n{'ours / peer':24s} {'variant':17s} input  conc  req/s x  p99 x")
        for cells in ratios:
            print(
                f"{cells[0]:24s} {cells[1]:17s} {cells[2]:6s} {cells[3]:>4s} "
                f"{cells[4]:>8s} {cells[5]:>6s}"
            )
    repeats = report_rows(report, "headline_repeats")
    for r in repeats:
        print(format_row(r))
    if (h := headline_stats(rows, repeats)) is not None:
        measured = "; ".join(
            f"{s} " + ", ".join(_fmt(x) for x in d["rps"]) for s, d in h["measured"].items()
        )
        rps_x, p99_x = _fmt(h["rps_ratio"], 2), _fmt(h["p99_ratio"], 2)
        print(
            f"headline {' '.join(map(str, h['cell']))} req/s: {measured}; "
            f"medians ours / {h['peer']}: req/s x{rps_x}, p99 x{p99_x}"
        )
    http = report_rows(report, "http_alone")
    for r in http:
        print(format_row(r))
    for cells in limit_rows(rows, report["limits"].get("pipeline", []), http):
        print(
            f"ours vs pipeline limit {cells[0]} {cells[1]}: limit {cells[3]} img/s, "
            f"ours {cells[4]} req/s -> {cells[5]}; HTTP ceiling {cells[6]} req/s -> {cells[7]}"
        )
    for s in report["server_runs"]:
        if s["failure"]:
            print(f"FAILED {s['server']} / {s['variant']}: {s['failure'].splitlines()[0]}")


def _terminate_as_exit(signum: int, frame: object) -> None:
    """SIGTERM (``timeout``, CI cancel) unwinds like Ctrl-C, so every server is stopped."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate_as_exit)
    args = build_parser().parse_args(argv)
    command = "python -m bench.run" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if args.rss_soak:
        return soak_main(args)
    report = run_benchmark(args)
    report["command"] = command
    rows = report_rows(report, "rows")
    out = args.results_dir / f"bench-{report['stamp']}.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_summary(report, rows)
    print(f"\nraw results: {out}")
    docs = None if args.no_docs else (args.docs or (None if args.quick else DOCS))
    if docs is not None:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(render_markdown(report, rows, command))
        print(f"report: {docs}")
    failed = [s for s in report["server_runs"] if s["failure"]]
    # A 503 is admission control doing its job under overload (c=64), not a failure.
    errors = sum(n for r in rows for kind, n in r.errors.items() if kind != "503")
    return 1 if failed or errors else 0


def soak_main(args: argparse.Namespace) -> int:
    variants = args.variants or list(DEFAULT_VARIANTS[:1])
    weights = args.weights_dir.resolve()
    _check_weights(weights, variants[:1])
    inp = next(iter(make_inputs((args.inputs or ["720p"])[:1]).values()))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    defs = server_defs(_parse_env(args.ours_env))
    conc = (args.concurrency or [16])[0]
    points = rss_soak(
        defs["ours"],
        variants[0],
        weights,
        inp,
        args.rss_soak,
        args.results_dir / f"logs-{stamp}",
        concurrency=conc,
    )
    out = args.results_dir / f"rss-soak-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "variant": variants[0],
                "input": inp.describe(),
                "concurrency": conc,
                "points": points,
            },
            indent=2,
        )
        + "\n"
    )
    grown = points[-1]["rss_mb"] - points[0]["rss_mb"]
    print(
        f"RSS {points[0]['rss_mb']:.1f} -> {points[-1]['rss_mb']:.1f} MB "
        f"({grown:+.1f} MB over {points[-1]['requests']} requests); raw: {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
