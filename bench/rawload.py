"""A lean closed-loop HTTP/1.1 load generator for rates one httpx process cannot drive.

Each client holds one keep-alive connection and sends a pre-encoded request, so a
request costs the generator a socket write and a header parse (tens of microseconds)
instead of httpx's ~2 ms. Several processes share the clients; all of them warm up
until one common instant and count only answers that start and end in the window.

    python -m bench.rawload --port 8000 --path '/predict?model=v3' --images DIR \
        --per-request 1 --concurrency 256 --processes 6 --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

from bench.loadgen import encode_form


def build_requests(
    *, host: str, port: int, path: str, images: list[bytes], per_request: int, count: int = 16
) -> list[bytes]:
    """``count`` ready-to-send requests; a batch route gets ``per_request`` files each."""
    field = "file" if per_request == 1 else "files"
    out = []
    for k in range(count):
        body, content_type = encode_form(
            (field, f"{j}.jpg", "image/jpeg", images[(k * per_request + j) % len(images)])
            for j in range(per_request)
        )
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


async def _client(
    host: str, port: int, requests: list[bytes], offset: int, start: float, stop: float, rows: list
) -> None:
    """One connection, one request at a time; a dropped connection is an error and reopens."""
    k = offset
    while time.time() < stop:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            rows.append((0, 0.0, time.time()))
            await asyncio.sleep(0.05)
            continue
        try:
            while time.time() < stop:
                t0 = time.time()
                writer.write(requests[k % len(requests)])
                k += 1
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                t1 = time.time()
                if t0 >= start and t1 <= stop:
                    rows.append((status, t1 - t0, t1))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            if time.time() < stop:
                rows.append((0, 0.0, time.time()))
        finally:
            writer.close()


def _process(args: tuple) -> list[tuple[int, float, float]]:
    """One load process: (status, latency s, end time) of every answer in the window
    (status 0: a connection error)."""
    host, port, requests, clients, first, start, stop = args
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    rows: list[tuple[int, float, float]] = []

    async def main() -> None:
        await asyncio.gather(
            *(_client(host, port, requests, first + i, start, stop, rows) for i in range(clients))
        )

    asyncio.run(main())
    return rows


def drive(
    host: str,
    port: int,
    requests: list[bytes],
    *,
    concurrency: int,
    processes: int,
    delay_s: float,
    seconds: float,
) -> tuple[list[tuple[int, float, float]], float]:
    """``concurrency`` lean clients split over ``processes`` load processes, all starting
    ``delay_s`` after the processes exist and stopping ``seconds`` later. Returns every
    answer's (status, latency s, end time) and the start time."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    firsts = [sum(shares[:i]) for i in range(processes)]
    # fork: the children run only asyncio, never the parent's torch or CUDA state.
    with mp.get_context("fork").Pool(processes) as pool:
        start = time.time() + delay_s
        jobs = [
            (host, port, requests, n, f, start, start + seconds)
            for n, f in zip(shares, firsts, strict=True)
        ]
        rows = [row for part in pool.map(_process, jobs, chunksize=1) for row in part]
    return rows, start


def run(
    *,
    host: str = "127.0.0.1",
    port: int,
    path: str,
    images: list[bytes],
    per_request: int = 1,
    concurrency: int,
    processes: int = 1,
    warmup_s: float = 3.0,
    seconds: float = 8.0,
) -> dict:
    """Drive the server and return images/s, requests/s, latency percentiles and errors."""
    requests = build_requests(
        host=host, port=port, path=path, images=images, per_request=per_request
    )
    rows, _ = drive(
        host,
        port,
        requests,
        concurrency=concurrency,
        processes=processes,
        delay_s=warmup_s + 0.2,
        seconds=seconds,
    )
    ok = np.array([lat for status, lat, _ in rows if status == 200]) * 1000
    errors = sum(1 for status, _, _ in rows if status != 200)
    p50, p99 = np.percentile(ok, [50, 99]) if ok.size else (float("nan"),) * 2
    return {
        "path": path,
        "per_request": per_request,
        "concurrency": concurrency,
        "requests_per_s": ok.size / seconds,
        "images_per_s": ok.size * per_request / seconds,
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/predict?model=v3")
    parser.add_argument("--images", type=Path, required=True, help="a folder of .jpg/.JPEG files")
    parser.add_argument("--per-request", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg"})
    result = run(
        host=args.host,
        port=args.port,
        path=args.path,
        images=[p.read_bytes() for p in files],
        per_request=args.per_request,
        concurrency=args.concurrency,
        processes=args.processes,
        warmup_s=args.warmup,
        seconds=args.seconds,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
