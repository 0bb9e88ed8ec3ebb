"""One measured cell (``Row``) and how it prints: console lines and markdown tables."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

OURS = ("ours", "ours-per-core", "ours-torch", "ours-onnx")
HEADLINE_OURS = ("ours", "ours-per-core")  # ours in the headline table
# The reference cell, measured again after the grid (see ``headline_repeats``).
HEADLINE = ("v3-small-1.0-224", "720p", 16)
HEADLINE_PEER = "litserve"


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
class WrkRow(Row):
    """A cell driven by ``wrk`` (``bench.wrk``): the same columns, measured over the
    timed run only (warm-up excluded), latency over every answer; ``body`` is how the
    image is sent: ``multipart`` (field ``file``) or ``raw`` (the image as the body)."""

    body: str = "multipart"


def wrk_rows(report: dict[str, Any], key: str) -> list[WrkRow]:
    """A list of wrk rows of the JSON report (absent in older reports: [])."""
    return [WrkRow(**r) for r in report.get(key, [])]


def report_rows(report: dict[str, Any], key: str) -> list[Row]:
    """A list of rows of the JSON report as ``Row`` objects (absent in older reports: [])."""
    return [Row(**r) for r in report.get(key, [])]


def fmt(x: float, digits: int = 1) -> str:
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
        fmt(r.rps),
        fmt(r.p50_ms),
        fmt(r.p95_ms),
        fmt(r.p99_ms),
        _errors_text(r.errors),
        fmt(r.rss_mb, 0),
        fmt(r.server_cpu_ms, 2),
        fmt(r.client_cpu_ms, 2),
    ]


def console_line(cells: list[str]) -> str:
    """One fixed-width console line: the first three columns left-aligned, numbers right."""
    return " ".join(
        c.rjust(w) if i > 2 else c.ljust(w)
        for i, (c, w) in enumerate(zip(cells, ROW_WIDTHS, strict=True))
    )


def format_row(r: Row) -> str:
    return console_line(row_cells(r))


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
