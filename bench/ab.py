"""A/B of our server's settings, side by side in one run (issue 17's "each lever with
its own A/B"): each arm is our server with some ``MOBILENET_*`` settings, driven by
``wrk`` on one cell; the arms alternate for ``--rounds`` rounds (each round restarts
every server), and the same run measures the no-HTTP run-to-completion limit between
rounds. Reports medians of req/s, p50/p99, server CPU per request and their ratios to
the limit, so a noisy host moves both arms alike.

    python -m bench.ab --arm base: --arm two-workers:MOBILENET_WORKERS=2,MOBILENET_THREADS=1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench import limits, wrk
from bench.cells import Counts, WrkCell, measure_wrk
from bench.inputs import make_inputs
from bench.servers import READY_TIMEOUT_S, probe, running_server, server_defs, wait_ready

DEFAULT_VARIANT = "v3-small-1.0-224"


def parse_arm(text: str) -> tuple[str, dict[str, str]]:
    """``name:KEY=VALUE,KEY=VALUE`` (keys without the ``MOBILENET_`` prefix are given it,
    except ``PYTHONPATH``: ``PYTHONPATH=/tmp/base`` runs another checkout's code, e.g. a
    ``git worktree`` of the commit before a change)."""
    name, _, rest = text.partition(":")
    env: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key != "PYTHONPATH" and not key.startswith("MOBILENET_"):
            key = f"MOBILENET_{key}"
        env[key.upper()] = value
    return name or "arm", env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", action="append", required=True, help="name:KEY=VALUE,...")
    parser.add_argument("--variant", default=DEFAULT_VARIANT)
    parser.add_argument("--input", default="720p", help="720p, small or png")
    parser.add_argument("--body", default="multipart", choices=["multipart", "raw"])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    args = parser.parse_args(argv)
    if wrk.find_wrk() is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    arms = [parse_arm(a) for a in args.arm]
    inp = make_inputs([args.input])[args.input]
    counts = Counts(wrk_seconds=args.seconds)
    cell = WrkCell(args.input, args.body, args.concurrency)
    results: dict[str, list] = {name: [] for name, _ in arms}
    limit_rates: list[float] = []
    limit_cpu: list[float] = []
    log_dir = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    for r in range(args.rounds):
        for point in limits.run_to_completion(
            args.variant, args.weights_dir, {args.input: inp.data}
        ):
            limit_rates.append(point.img_s)
            limit_cpu.append(point.cpu_ms)
            print(f"round {r + 1} limit: {point.img_s:.1f} img/s, {point.cpu_ms:.2f} ms CPU/img")
        for name, env in arms:
            defn = server_defs(env)["ours"]
            with running_server(defn, args.variant, args.weights_dir, log_dir / name) as srv:
                wait_ready(srv, READY_TIMEOUT_S)
                probe(srv, inp)
                row = measure_wrk(srv, inp, cell, counts, log_dir / name)
            results[name].append(row)
            print(
                f"round {r + 1} {name}: {row.rps:.1f} req/s p50 {row.p50_ms:.1f} "
                f"p99 {row.p99_ms:.1f} ms, server {row.server_cpu_ms:.2f} ms CPU/req, "
                f"rss {row.rss_mb:.0f} MB, errors {row.errors or '-'}"
            )
    lim = statistics.median(limit_rates) if limit_rates else float("nan")
    lim_cpu = statistics.median(limit_cpu) if limit_cpu else float("nan")
    print(f"\nlimit (median of {len(limit_rates)}): {lim:.1f} img/s, {lim_cpu:.2f} ms CPU/img")
    print(f"{'arm':<16}{'req/s':>8}{'of limit':>9}{'p50':>7}{'p99':>7}{'CPU/req':>9}{'ratio':>7}")
    for name, rows in results.items():
        rps = statistics.median(r.rps for r in rows)
        cpu = statistics.median(r.server_cpu_ms for r in rows)
        print(
            f"{name:<16}{rps:8.1f}{rps / lim:9.2f}"
            f"{statistics.median(r.p50_ms for r in rows):7.1f}"
            f"{statistics.median(r.p99_ms for r in rows):7.1f}"
            f"{cpu:9.2f}{cpu / lim_cpu:7.2f}"
        )
    print(f"(logs in {log_dir})")


if __name__ == "__main__":
    main()
