"""Overload: a flood of clients at several times capacity, admitted-request latency.

Reported, not asserted (tests/test_overload.py checks the behaviour: only 200 or
503 + Retry-After, nothing lost, memory bounded). The load generator shares the
machine's cores with the server, so its own queueing is part of what it measures.

    python -m bench.flood --url http://127.0.0.1:8000 --clients 200 --requests 3000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import httpx
import numpy as np

from bench.loadgen import SHARED_SSL, check_loopback

IMAGE = Path(__file__).resolve().parents[2] / "shared" / "images" / "cat_720p.jpg"


async def flood(
    url: str,
    body: bytes,
    *,
    clients: int,
    requests: int,
    limit_s: float,
    path: str = "/predict?model=v3",
) -> dict:
    """Closed-loop clients that ignore Retry-After (the worst case) until the budget ends."""
    check_loopback(url)
    rows: list[tuple[int, float, str | None]] = []
    sent = 0
    stop = time.monotonic() + limit_s

    async def client() -> None:
        nonlocal sent
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(
            base_url=url, timeout=30, verify=SHARED_SSL, limits=limits
        ) as c:
            while sent < requests and time.monotonic() < stop:
                sent += 1
                t = time.perf_counter()
                r = await c.post(path, content=body, headers={"content-type": "image/jpeg"})
                rows.append((r.status_code, time.perf_counter() - t, r.headers.get("retry-after")))

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    ok = [lat for status, lat, _ in rows if status == 200]
    refused = [ra for status, _, ra in rows if status == 503]
    return {
        "sent": len(rows),
        "wall_s": round(wall, 2),
        "ok": len(ok),
        "ok_per_s": round(len(ok) / wall, 1),
        "refused_503": len(refused),
        "refused_with_retry_after": sum(1 for ra in refused if ra and ra.isdigit()),
        "other": len(rows) - len(ok) - len(refused),
        "admitted_p50_s": round(float(np.percentile(ok, 50)), 3) if ok else None,
        "admitted_p99_s": round(float(np.percentile(ok, 99)), 3) if ok else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--limit-s", type=float, default=60)
    parser.add_argument("--image", type=Path, default=IMAGE)
    parser.add_argument("--path", default="/predict?model=v3")
    args = parser.parse_args()
    result = asyncio.run(
        flood(
            args.url,
            args.image.read_bytes(),
            clients=args.clients,
            requests=args.requests,
            limit_s=args.limit_s,
            path=args.path,
        )
    )
    for k, v in result.items():
        print(f"{k:26s} {v}")


if __name__ == "__main__":
    main()
