"""``python -m bench.run`` (``make bench``): our service against its peers and its limits.

For every variant and server: start the server as a subprocess on a free loopback port,
wait until it is ready, drive it with the closed-loop load generator at each concurrency
and input, record its memory, stop it (SIGTERM to its process group, then SIGKILL), and
finally measure the no-HTTP limits (``bench.limits``) in the same run, so every ratio
compares numbers taken on the same machine minutes apart. Results go to
``bench/results/<timestamp>.json`` (git-ignored) and, for full runs, ``docs/benchmarks.md``.

    python -m bench.run                         # the default run (~12 min on 2 cores)
    python -m bench.run --quick --servers ours --inputs small --concurrency 2   # smoke
    python -m bench.run --servers ours,litserve --variants v3-small-1.0-224 --inputs 720p \\
        --concurrency 16 --no-docs                # the headline cell only (~3 min)
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

The headline client is ``wrk`` (``bench/wrk.py``; ``apt-get install wrk``), whose own CPU
per request is ~1/50 of the httpx client's: after its httpx grid, ours is driven by wrk at
concurrency 16 on every input (and the 720p JPEG sent as a raw body), every other server
on the headline cell; the repeats re-measure it. It is judged against the same run's
run-to-completion limit (``bench.limits.run_to_completion``), in req/s and in CPU per
request. Without wrk the run goes on and the report says the headline was not measured.
"""

from __future__ import annotations

# The harness by responsibility: bench.inputs (request bodies), bench.servers (server
# processes), bench.cells (measuring them), bench.rows + bench.report + bench.machine
# (tables and docs/benchmarks.md), bench.limits (no-HTTP ceilings); this module is the CLI.
import argparse
import datetime as dt
import json
import shlex
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench import headline as wrk_headline
from bench import limits as limits_mod
from bench import wrk
from bench.cells import (
    QUICK,
    Counts,
    WrkCell,
    bench_server,
    headline_repeats,
    rss_soak,
    wrk_plan,
)
from bench.inputs import Input, make_inputs
from bench.machine import machine_info
from bench.report import headline_stats, limit_rows, ratio_rows, render_markdown
from bench.rows import (
    HEADLINE,
    HEADLINE_PEER,
    OURS,
    ROW_HEADERS,
    Row,
    console_line,
    fmt,
    format_row,
    report_rows,
    wrk_rows,
)
from bench.servers import (
    REPO,
    ServerDef,
    free_port,
    ours_env_fn,
    running_server,
    server_defs,
    wait_ready,
)

# Other tools (bench.protocols) import the harness's building blocks from here; their
# homes are bench.inputs and bench.servers since the split.
__all__ = [
    "REPO",
    "Input",
    "ServerDef",
    "free_port",
    "main",
    "make_inputs",
    "ours_env_fn",
    "running_server",
    "wait_ready",
]

RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "benchmarks.md"

DEFAULT_VARIANTS = ("v3-small-1.0-224", "v2-1.0-224")
DEFAULT_SERVERS = ("ours", "ours-onnx", "naive", "litserve")
DEFAULT_CONCURRENCY = (1, 16, 64)
DEFAULT_INPUTS = ("720p", "small", "png")
DEFAULT_REPEATS = 2


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
    p.add_argument("--no-wrk", action="store_true", help="skip the wrk (headline client) cells")
    p.add_argument(
        "--wrk-seconds", type=float, help="measured run of each wrk cell (default 6, whole s)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        help=f"extra rounds of the headline cell {HEADLINE} for ours and {HEADLINE_PEER}, "
        f"each server restarted (default {DEFAULT_REPEATS}, 0 with --quick)",
    )
    p.add_argument(
        "--no-per-core",
        action="store_true",
        help="leave ours-per-core (MOBILENET_WORKERS = cores) out of the headline repeats",
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
    if args.wrk_seconds:
        counts = replace(counts, wrk_seconds=args.wrk_seconds)
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

    wrk_client = _wrk_client(args)
    use_wrk = not wrk_client.get("skipped")
    runs = [
        bench_server(
            defs[s],
            v,
            weights,
            inputs,
            concurrencies,
            counts,
            log_dir,
            wrk_cells=wrk_plan(s, v, list(inputs)) if use_wrk else [],
        )
        for v in variants
        for s in servers
    ]
    repeat_runs = []
    rtc_repeats: list[dict[str, Any]] = []
    rounds = args.repeats if args.repeats is not None else (0 if args.quick else DEFAULT_REPEATS)
    variant, input_name, conc = HEADLINE
    if (
        rounds > 0
        and {"ours", HEADLINE_PEER} <= set(servers)
        and variant in variants
        and input_name in inputs
        and conc in concurrencies
    ):
        print(
            f"headline cell again: {rounds} round(s) of {HEADLINE_PEER}, ours"
            + ("" if args.no_per_core else " and ours-per-core"),
            flush=True,
        )

        def headline_limit() -> None:
            """The same run's limit of the headline cell, again after each of our runs."""
            if not args.no_limits:
                rtc = limits_mod.run_to_completion(
                    variant, weights, {input_name: inputs[input_name].data}
                )
                rtc_repeats.extend(asdict(p) for p in rtc)

        repeat_runs = headline_repeats(
            defs,
            weights,
            inputs[input_name],
            counts,
            log_dir / "repeats",
            rounds=rounds,
            wrk_cell=WrkCell(input_name) if use_wrk else None,
            after_ours=headline_limit,
            also=() if args.no_per_core else ("ours-per-core",),
        )
    lim: dict[str, list[dict[str, Any]]] = {}
    http_alone: list[Row] = []
    http_alone_wrk: list[Row] = []
    if not args.no_limits:
        # What HTTP alone costs with this client, for the HTTP ceiling: the null server at
        # the busiest concurrency up to 16 (the reference point), on every input.
        null_c = max((c for c in concurrencies if c <= 16), default=16)
        null = bench_server(
            defs["null-http"],
            "none",
            weights,
            inputs,
            [null_c],
            counts,
            log_dir,
            wrk_cells=wrk_plan("null-http", "none", list(inputs)) if use_wrk else [],
        )
        http_alone = null.rows
        http_alone_wrk = null.wrk_rows
        raw = {k: v.data for k, v in inputs.items()}
        lim = limits_mod.measure(variants, weights, raw, quick=args.quick)
        lim["rtc_repeats"] = rtc_repeats
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
        "headline_repeats": [asdict(row) for r in repeat_runs for row in r.rows],
        "wrk_client": wrk_client,
        "wrk": [asdict(row) for r in runs for row in r.wrk_rows],
        "wrk_repeats": [asdict(row) for r in repeat_runs for row in r.wrk_rows],
        "http_alone": [asdict(row) for row in http_alone],
        "http_alone_wrk": [asdict(row) for row in http_alone_wrk],
        "limits": lim,
    }


def _wrk_client(args: argparse.Namespace) -> dict[str, Any]:
    """Which wrk drives the headline cells, or why none does (said in the report too)."""
    if args.no_wrk:
        return {"skipped": "--no-wrk"}
    exe = wrk.find_wrk()
    if exe is None:
        print(
            "WARNING: wrk is not installed, so the headline (wrk) cells are skipped; "
            "install it with `apt-get install wrk`",
            flush=True,
        )
        return {"skipped": "wrk is not installed (apt-get install wrk)"}
    return {"path": exe, "version": wrk.version(exe)}


def print_summary(report: dict[str, Any], rows: list[Row]) -> None:
    print()
    print(console_line(ROW_HEADERS))
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
            f"{s} " + ", ".join(fmt(x) for x in d["rps"]) for s, d in h["measured"].items()
        )
        rps_x, p99_x = fmt(h["rps_ratio"], 2), fmt(h["p99_ratio"], 2)
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
    wrk_all = wrk_rows(report, "wrk") + wrk_rows(report, "wrk_repeats")
    rtc = [*report["limits"].get("rtc_repeats", []), *report["limits"].get("rtc", [])]
    for s in wrk_headline.headline_stats(wrk_all, [], rtc):
        print(
            f"wrk {s['server']} {s['variant']} {s['input']} {s['body']}: req/s "
            + ", ".join(fmt(x) for x in s["rps"])
            + f" (median {fmt(s['rps_median'])}) vs limit {fmt(s['limit_img_s'])} img/s "
            f"-> {fmt(s['limit_ratio'], 2)}; CPU {fmt(s['server_cpu_ms'], 2)} ms/req vs "
            f"{fmt(s['limit_cpu_ms'], 2)} ms/img -> {fmt(s['cpu_ratio'], 2)}; "
            f"p50 {fmt(s['p50_ms'])} p99 {fmt(s['p99_ms'])} ms"
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
    wrk_all = wrk_rows(report, "wrk") + wrk_rows(report, "wrk_repeats")
    errors = sum(n for r in rows + wrk_all for kind, n in r.errors.items() if kind != "503")
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
