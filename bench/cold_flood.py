"""A flood from cold (issue 17): clients that ignore Retry-After hit a freshly started
server at once; what the first answers cost the admitted requests.

Each round starts our server with default settings (every variant in the weights
directory), waits for /readyz, then opens ``--clients`` keep-alive connections at once
(``bench.rawload``'s lean clients: a socket write and a header parse per request) posting
the 720p JPEG to ``--path``. Of the first ``--first`` requests sent: the admitted (200)
p50/p99 and how many were refused (503). Reported, not asserted.

    python -m bench.cold_flood --rounds 3 --clients 200 --first 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import numpy as np

from bench import rawload
from bench.inputs import IMAGES
from bench.servers import READY_TIMEOUT_S, running_server, server_defs, wait_ready


def one_round(
    weights: Path, *, clients: int, first: int, path: str, seconds: float, processes: int
) -> dict:
    """One fresh server, one flood; the first ``first`` answers."""
    body = (IMAGES / "cat_720p.jpg").read_bytes()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    ours = server_defs({})["ours"]

    def every_variant(port: int, variant: str, weights: Path) -> dict[str, str]:
        env = ours.env(port, variant, weights)
        del env["MOBILENET_VARIANTS"]  # default settings: every variant present
        return env

    defn = dataclasses.replace(ours, env=every_variant)
    with running_server(defn, "all", weights, log_dir) as srv:
        wait_ready(srv, READY_TIMEOUT_S)
        port = int(srv.base.rsplit(":", 1)[1])
        requests = rawload.build_requests(
            host="127.0.0.1", port=port, path=path, images=[body], per_request=1
        )
        rows, start = rawload.drive(
            "127.0.0.1",
            port,
            requests,
            concurrency=clients,
            processes=processes,
            delay_s=0.3,
            seconds=seconds,  # every process connects at the same instant
        )
    # The first requests sent (start = end - latency), each answered within the flood:
    # sorting by completion instead would drop exactly the slow ones near the cut.
    rows.sort(key=lambda r: r[2] - r[1])
    kept = rows[:first]
    ok = np.array([lat for status, lat, _ in kept if status == 200]) * 1000
    statuses: dict[int, int] = {}
    for status, _, _ in kept:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "answers": len(kept),
        "statuses": statuses,
        "admitted": int(ok.size),
        "p50_ms": float(np.percentile(ok, 50)) if ok.size else float("nan"),
        "p99_ms": float(np.percentile(ok, 99)) if ok.size else float("nan"),
        "max_ms": float(ok.max()) if ok.size else float("nan"),
        "window_s": max(r[2] for r in kept) - start if kept else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--first", type=int, default=1000)
    parser.add_argument("--path", default="/predict?model=v3")
    parser.add_argument("--seconds", type=float, default=15.0, help="flood length per round")
    parser.add_argument("--processes", type=int, default=1, help="load generator processes")
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    args = parser.parse_args(argv)
    results = []
    for r in range(args.rounds):
        res = one_round(
            args.weights_dir,
            clients=args.clients,
            first=args.first,
            path=args.path,
            seconds=args.seconds,
            processes=args.processes,
        )
        results.append(res)
        print(
            f"round {r + 1}: first {res['answers']} requests, answered in {res['window_s']:.1f} s: "
            f"{res['statuses']}; admitted p50 {res['p50_ms']:.0f} ms, p99 {res['p99_ms']:.0f} "
            f"ms, max {res['max_ms']:.0f} ms",
            flush=True,
        )
    p99s = [r["p99_ms"] for r in results]
    print(
        f"admitted p99 over {len(results)} rounds: {', '.join(f'{x:.0f}' for x in p99s)} ms "
        f"(median {statistics.median(p99s):.0f})"
    )


if __name__ == "__main__":
    main()
