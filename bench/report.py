"""The markdown report (``docs/benchmarks.md``) and the tables it shares with the console
summary: ratios to the peers, the repeated headline cell, the no-HTTP limits."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from bench import headline as wrk_headline
from bench import limits as limits_mod
from bench.machine import machine_markdown
from bench.rows import (
    HEADLINE,
    HEADLINE_PEER,
    OURS,
    ROW_HEADERS,
    Row,
    fmt,
    md_table,
    report_rows,
    row_cells,
    wrk_rows,
)


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
                ", ".join(fmt(x) for x in got["rps"]),
                fmt(h["median"][server]["rps"]),
                ", ".join(fmt(x, 0) for x in got["p99_ms"]),
                fmt(h["median"][server]["p99_ms"], 0),
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
        + f"\n\nMedians, ours / {h['peer']}: **req/s x{fmt(h['rps_ratio'], 2)}**, "
        f"**p99 x{fmt(h['p99_ratio'], 2)}**."
    )


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
                    fmt(r.rps / p.rps if p.rps else math.nan, 2),
                    fmt(r.p99_ms / p.p99_ms if p.p99_ms else math.nan, 2),
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
                fmt(p["img_s"]),
                f"{fmt(best.rps)} (c={best.concurrency})",
                fmt(best.rps / p["img_s"] if p["img_s"] else math.nan, 2),
                fmt(ceiling),
                fmt(best.rps / ceiling if ceiling else math.nan, 2),
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
                fmt(p["img_s"]),
                fmt(p["ms_per_batch"], 2),
            ]
            for p in lim["forward"]
        ],
    )
    best = md_table(
        ["variant", "backend", "best batch", "img/s"],
        [
            [p["variant"], p["backend"], str(p["batch"]), fmt(p["img_s"])]
            for p in limits_mod.best_forward(lim["forward"])
        ],
    )
    dec = md_table(
        ["variant", "input", "ms/image", "img/s (1 thread)"],
        [[p["variant"], p["input"], fmt(p["ms"], 2), fmt(p["img_s"])] for p in lim["decode"]],
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
                fmt(p["img_s"]),
            ]
            for p in lim["pipeline"]
        ],
    )
    rtc = (
        "\n\n### Run to completion (the headline's limit: each core decodes then forwards "
        "on its own thread and single-threaded LiteRT interpreter; CPU = this process's "
        "user + system; V1/V2 have no hard-swish to rewrite)\n\n"
        + md_table(
            [
                "variant",
                "input",
                "backend",
                "threads",
                "exact hard-swish",
                "forward ms (1 thread)",
                "img/s",
                "CPU ms/img",
            ],
            [
                [
                    p["variant"],
                    p["input"],
                    p["backend"],
                    str(p["threads"]),
                    "yes" if p["exact_hard_swish"] else "no",
                    fmt(p["forward_ms"], 2),
                    fmt(p["img_s"]),
                    fmt(p["cpu_ms"], 2),
                ]
                for p in lim["rtc"]
            ],
        )
        if lim.get("rtc")
        else ""
    )
    return (
        "### Model forward alone (all cores, ready uint8 batch)\n\n"
        + fwd
        + "\n\nBest batch size per backend:\n\n"
        + best
        + "\n\n### Decode + preprocess alone (`app.imaging.prepare`, one thread)\n\n"
        + dec
        + "\n\n### In-process pipeline (decode pool of all cores -> batched forward, "
        "the service's default backend)\n\n" + pipe + rtc
    )


# Figures from the last GPU machine run (bench/gpu_check.sh, not part of `make bench`).
GPU_SUMMARY = Path(__file__).resolve().parent / "gpu_results_h100" / "summary.md"
# The last `python -m bench.protocols` run, written up by hand (not part of `make bench`).
PROTOCOLS_SUMMARY = Path(__file__).resolve().parent / "protocols_summary.md"


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
                fmt(s["startup_s"]),
                fmt(s["rss_ready_mb"], 0),
                fmt(s["rss_after_mb"], 0),
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
        *(
            [
                f"## Headline: wrk at concurrency {HEADLINE[2]} against the same run's limit",
                "",
                wrk_headline.headline_markdown(
                    report, wrk_rows(report, "wrk"), wrk_rows(report, "wrk_repeats")
                ),
                "",
            ]
            if "wrk" in report  # reports from before the wrk client have no such section
            else []
        ),
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
        *(
            [
                "The same server driven by wrk (the headline's client, measured run only):",
                "",
                md_table(ROW_HEADERS, [row_cells(r) for r in wrk_rows(report, "http_alone_wrk")]),
                "",
            ]
            if report.get("http_alone_wrk")
            else []
        ),
        "## Limits (no HTTP, same run)",
        "",
        limits_markdown(report["limits"]) if report["limits"] else "(skipped)",
        "",
        *([PROTOCOLS_SUMMARY.read_text().strip(), ""] if PROTOCOLS_SUMMARY.exists() else []),
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
