"""The report's headline: our server driven by ``wrk`` against the same run's no-HTTP limit
(``bench.limits.run_to_completion``), in req/s and in CPU per request, plus every server
on the headline cell with the same client."""

from __future__ import annotations

import math
import statistics
from typing import Any

from bench.rows import HEADLINE, HEADLINE_OURS, WrkRow, fmt, md_table

CPU_TARGET = 1.2  # the bar: server CPU per request <= 1.2x the limit's per image


def _median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _group(rows: list[WrkRow], server: str) -> dict[tuple[str, str, str, int], list[WrkRow]]:
    """``server``'s wrk rows by (variant, input, body, concurrency), in measuring order."""
    out: dict[tuple[str, str, str, int], list[WrkRow]] = {}
    for r in rows:
        if r.server == server and r.ok:
            out.setdefault((r.variant, r.input, r.body, r.concurrency), []).append(r)
    return out


def headline_stats(
    rows: list[WrkRow], repeats: list[WrkRow], rtc: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Ours per wrk cell: every measurement, medians, and ratios to the limit of the same
    variant and input (req/s / limit img/s; server CPU ms per request / the limit's CPU ms
    per image), each side's median where it was measured more than once."""
    limits: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in rtc:
        limits.setdefault((p["variant"], p["input"]), []).append(p)
    out = []
    groups = [(srv, k, g) for srv in HEADLINE_OURS for k, g in _group(rows + repeats, srv).items()]
    for server, (variant, inp, body, conc), got in groups:
        points = limits.get((variant, inp), [])
        rps = _median([r.rps for r in got])
        cpu = _median([r.server_cpu_ms for r in got])
        limit_img_s = _median([p["img_s"] for p in points])
        limit_cpu = _median([p["cpu_ms"] for p in points])
        out.append(
            {
                "server": server,
                "variant": variant,
                "input": inp,
                "body": body,
                "concurrency": conc,
                "rps": [r.rps for r in got],
                "rps_median": rps,
                "p50_ms": _median([r.p50_ms for r in got]),
                "p99_ms": _median([r.p99_ms for r in got]),
                "server_cpu_ms": cpu,
                "client_cpu_ms": _median([r.client_cpu_ms for r in got]),
                "limit_img_s_runs": [p["img_s"] for p in points],
                "limit_img_s": limit_img_s,
                "limit_cpu_ms": limit_cpu,
                "limit_ratio": _ratio(rps, limit_img_s),
                "cpu_ratio": _ratio(cpu, limit_cpu),
            }
        )
    return out


def headline_cells(stats: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            s.get("server", "ours"),
            s["variant"],
            s["input"],
            s["body"],
            ", ".join(fmt(x) for x in s["rps"]),
            f"**{fmt(s['rps_median'])}**",
            fmt(s["limit_img_s"])
            + (
                f" ({', '.join(fmt(x) for x in s['limit_img_s_runs'])})"
                if len(s["limit_img_s_runs"]) > 1
                else ""
            ),
            f"**{fmt(s['limit_ratio'], 2)}**",
            fmt(s["server_cpu_ms"], 2),
            fmt(s["limit_cpu_ms"], 2),
            f"**{fmt(s['cpu_ratio'], 2)}**",
            fmt(s["p50_ms"]),
            fmt(s["p99_ms"]),
            fmt(s["client_cpu_ms"], 3),
        ]
        for s in stats
    ]


HEADLINE_HEADERS = [
    "server",
    "variant",
    "input",
    "body",
    "wrk req/s, in order",
    "median req/s",
    "limit img/s (runs)",
    "req/s / limit",
    "srv CPU ms/req",
    "limit CPU ms/img",
    "CPU ratio",
    "p50 ms",
    "p99 ms",
    "wrk CPU ms/req",
]


def servers_cells(rows: list[WrkRow], repeats: list[WrkRow]) -> list[list[str]]:
    """Every server on the headline cell with wrk (multipart): medians, and ours / it."""
    variant, inp, conc = HEADLINE
    key = (variant, inp, "multipart", conc)
    servers = list(dict.fromkeys(r.server for r in rows + repeats))
    med: dict[str, dict[str, Any]] = {}
    for server in servers:
        got = _group(rows + repeats, server).get(key)
        if got:
            med[server] = {
                "runs": [r.rps for r in got],
                **{
                    k: _median([getattr(r, k) for r in got])
                    for k in ("rps", "p50_ms", "p99_ms", "server_cpu_ms", "client_cpu_ms")
                },
            }
    ours = med.get("ours")
    return [
        [
            server,
            ", ".join(fmt(x) for x in m["runs"]),
            fmt(m["rps"]),
            fmt(m["p50_ms"]),
            fmt(m["p99_ms"]),
            fmt(m["server_cpu_ms"], 2),
            fmt(m["client_cpu_ms"], 3),
            fmt(_ratio(ours["rps"], m["rps"]), 2) if ours and server != "ours" else "-",
            fmt(_ratio(ours["p99_ms"], m["p99_ms"]), 2) if ours and server != "ours" else "-",
        ]
        for server, m in med.items()
    ]


def headline_markdown(report: dict[str, Any], rows: list[WrkRow], repeats: list[WrkRow]) -> str:
    """The headline section; says so plainly when wrk or the limit were not measured."""
    if not rows:
        why = report.get("wrk_client", {}).get("skipped") or "no wrk cell was measured"
        return f"(not measured: {why})"
    lim = report.get("limits", {})
    rtc = [*lim.get("rtc_repeats", []), *lim.get("rtc", [])]  # as measured
    stats = headline_stats(rows, repeats, rtc)
    counts = report["counts"]
    variant, inp, conc = HEADLINE
    rewrite = {p["variant"]: "yes" if p["exact_hard_swish"] else "no" for p in rtc}
    limit_text = (
        f"{rtc[0]['backend']}, {rtc[0]['threads']} threads of decode then forward; exact "
        "hard-swish rewrite: " + ", ".join(f"{v} {yes}" for v, yes in rewrite.items())
        if rtc
        else "not measured"
    )
    return "\n".join(
        [
            f"Client: `wrk` (`bench/wrk.py`), {conc} keep-alive connections, closed loop, "
            f"one pre-encoded body; a {counts.get('wrk_warmup_s', '?')} s warm-up run, then "
            f"a measured run of {counts.get('wrk_seconds', '?')} s. req/s counts 2xx answers "
            "per second of the measured run; latency covers every answer; errors are "
            "non-2xx answers and socket errors (all cells below: "
            f"{_errors_total(rows + repeats)}). CPU ms/req: the server's process tree, user + "
            "system, over the measured run divided by the answers in it (up to "
            f"{conc} requests in flight at its end are billed but not counted, about 1%); "
            "wrk's own CPU from the kernel's accounting of its process.",
            "",
            "Limit: the same run's no-HTTP pipeline, run to completion (`bench/limits.py`, "
            f"`rtc`: {limit_text}; each core's thread decodes with `app.imaging.prepare` "
            "then forwards on its own single-threaded LiteRT interpreter, no batching, no "
            "HTTP). req/s / limit: 1.0 means HTTP, queueing and hand-offs cost nothing. CPU "
            "ratio: the server's CPU per request over the limit's CPU per image "
            f"(target <= {CPU_TARGET}).",
            "",
            md_table(HEADLINE_HEADERS, headline_cells(stats)),
            "",
            f"The headline cell ({variant}, {inp}, c={conc}, multipart) with wrk for every "
            "server (medians over the grid's run and the repeats, each server restarted):",
            "",
            md_table(
                [
                    "server",
                    "wrk req/s, in order",
                    "median req/s",
                    "p50 ms",
                    "p99 ms",
                    "srv CPU ms/req",
                    "wrk CPU ms/req",
                    "ours / it, req/s",
                    "ours / it, p99",
                ],
                servers_cells(rows, repeats),
            ),
            "",
            "Noise: the machine is shared and drifts by tens of per cent within minutes; "
            "the limit is measured once per input after all the served cells (and, for the "
            "headline cell, again right after each repeat of ours: all its runs are in "
            "brackets, the median is used), so req/s / limit moves with that drift. "
            "The CPU ratio compares the CPU each answer costs rather than the share of "
            "the cores a process got, so a busy "
            "neighbour moves it much less; read the two side by side, and the repeats of "
            "the headline cell for the spread.",
        ]
    )


def _errors_total(rows: list[WrkRow]) -> str:
    total: dict[str, int] = {}
    for r in rows:
        for k, n in r.errors.items():
            total[k] = total.get(k, 0) + n
    return ", ".join(f"{k}: {n}" for k, n in sorted(total.items())) or "none"
