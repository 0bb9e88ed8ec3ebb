"""Measuring: load cells against a running server, whole server runs, the headline
repeats and the memory soak."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from bench import wrk
from bench.inputs import Input
from bench.loadgen import LoadResult, LoadSpec, encode_multipart, run_load_sync
from bench.rows import HEADLINE, HEADLINE_PEER, Row, WrkRow, format_row
from bench.servers import (
    READY_TIMEOUT_S,
    Running,
    ServerDef,
    cpu_s,
    probe,
    rss_mb,
    running_server,
    wait_ready,
)


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
    wrk_warmup_s: float = 2.0  # wrk cells: a warm-up run, then a measured run (whole s)
    wrk_seconds: float = 6.0


QUICK = Counts(
    requests=20,
    warmup_per_user=1,
    min_warmup=2,
    warmup_seconds=1.0,
    max_seconds=3.0,
    wrk_warmup_s=1.0,
    wrk_seconds=2.0,
)


@dataclass(frozen=True)
class WrkCell:
    """One wrk cell to run against a server: an input, how it is sent, a concurrency."""

    input: str
    body: str = "multipart"  # or "raw": the image bytes as the body (ours only)
    concurrency: int = HEADLINE[2]


def wrk_plan(server: str, variant: str, inputs: list[str]) -> list[WrkCell]:
    """The wrk cells of one server run: ours on every input (and the headline input sent
    raw, for the headline variant); every other server on the headline cell only; the
    null server (no variant) on the headline input, for what HTTP alone costs with wrk."""
    head_variant, head_input, _ = HEADLINE
    if server == "null-http":
        return [WrkCell(head_input)] if head_input in inputs else []
    if server == "ours":
        cells = [WrkCell(name) for name in inputs]
        if variant == head_variant and head_input in inputs:
            cells.append(WrkCell(head_input, "raw"))
        return cells
    if variant == head_variant and head_input in inputs:
        return [WrkCell(head_input)]
    return []


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
    wrk_rows: list[WrkRow] = field(default_factory=list)


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


def measure_wrk(
    server: Running, inp: Input, cell: WrkCell, counts: Counts, log_dir: Path
) -> WrkRow:
    """One wrk cell, with the server's CPU over the measured run and wrk's own."""
    if cell.body == "raw":
        payload, content_type = inp.data, inp.content_type
    else:
        payload, content_type = encode_multipart(inp.data, inp.content_type, inp.filename)
    spec = wrk.WrkSpec(
        url=server.predict_url,
        body=payload,
        content_type=content_type,
        concurrency=cell.concurrency,
        seconds=counts.wrk_seconds,
        warmup_s=counts.wrk_warmup_s,
        timeout_s=counts.timeout_s,
    )
    tag = f"{server.defn.name}-{server.variant}-{inp.name}-{cell.body}-c{cell.concurrency}"
    result = wrk.run(spec, log_dir / "wrk", cpu=lambda: cpu_s(server.proc.pid), tag=tag)
    n = max(1, result.answered)  # every answer, 503s too, as in the httpx cells
    return WrkRow(
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
        sent=result.answered,
        ok=result.ok,
        seconds=result.seconds,
        server_cpu_ms=result.server_cpu_s / n * 1e3,
        client_cpu_ms=result.client_cpu_s / n * 1e3,
        body=cell.body,
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
    *,
    wrk_cells: Sequence[WrkCell] = (),
) -> ServerRun:
    """Start, measure (the httpx grid, then ``wrk_cells``) and stop one server; a failure
    is recorded, not raised."""
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
            for cell in wrk_cells:
                row = measure_wrk(server, inputs[cell.input], cell, counts, log_dir)
                run.wrk_rows.append(row)
                print(f"  wrk {cell.body:9s} " + format_row(row), flush=True)
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
    wrk_cell: WrkCell | None = None,
    after_ours: Callable[[], None] | None = None,
    also: Sequence[str] = (),
) -> list[ServerRun]:
    """The headline cell again, ours and the peer each restarted for every round, in the
    order peer, ours, ours, peer, ...: this machine drifts by tens of per cent within
    minutes, so one cell per server, minutes apart, can flatter either side.
    ``after_ours`` runs right after each of our runs (the headline's limit, measured
    again next to the cell it judges). ``also``: more of our configurations, each run
    right after ours in every round (``ours-per-core``)."""
    variant, _, conc = HEADLINE
    runs: list[ServerRun] = []
    for r in range(rounds):
        ours = ["ours", *also]
        order = [HEADLINE_PEER, *ours] if r % 2 == 0 else [*ours, HEADLINE_PEER]
        for name in order:
            runs.append(
                bench_server(
                    defs[name],
                    variant,
                    weights,
                    {inp.name: inp},
                    [conc],
                    counts,
                    log_dir / f"r{r}",
                    wrk_cells=[wrk_cell] if wrk_cell else [],
                )
            )
            if name == "ours" and after_ours is not None:
                after_ours()
    return runs


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
