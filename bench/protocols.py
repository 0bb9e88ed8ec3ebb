"""Protocols side by side: ``/predict`` multipart, OIP v2 REST (binary tensor data) and
OIP v2 gRPC, against ONE server run, same image, same variant, same concurrency.

Each row is a closed loop (bench/loadgen.py): every virtual user keeps one request in
flight on its own connection (gRPC: its own channel). Request bodies are encoded once up
front, so the rows differ only in what the server does with each protocol.

    python -m bench.protocols --variant v3-small-1.0-224 --input 720p -c 16 --seconds 20

Loopback only, bounded in time; results go to bench/results/protocols-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from bench import run as bench_run
from bench.loadgen import (
    LoadResult,
    LoadSpec,
    _client,
    _phase,
    _summarise,
    _Tally,
    check_loopback,
    encode_multipart,
)
from bench.run import REPO, Input, ServerDef, make_inputs, ours_env_fn, running_server, wait_ready

HEADER_LENGTH = "Inference-Header-Content-Length"


def v2_binary_body(image: bytes) -> tuple[bytes, dict[str, str]]:
    """One image as a BYTES [1] tensor in the binary extension, output FP32 as binary:
    what tritonclient.http sends by default."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(image) + 4},
                }
            ],
            "outputs": [{"name": "PROBABILITIES", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + len(image).to_bytes(4, "little") + image
    return body, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


async def http_row(
    url: str, payload: bytes, headers: dict[str, str], c: int, warmup_s: float, seconds: float
) -> LoadResult:
    check_loopback(url)
    spec = LoadSpec(url=url, body=b"", content_type="", concurrency=c)
    clients = [_client(spec) for _ in range(c)]
    try:
        await _phase(clients, url, payload, headers, budget=10**9, max_seconds=warmup_s)
        tally, start = await _phase(
            clients, url, payload, headers, budget=10**9, max_seconds=seconds
        )
    finally:
        await asyncio.gather(*(x.aclose() for x in clients))
    return _summarise(c, tally, start)


async def grpc_row(
    address: str, variant: str, image: bytes, c: int, warmup_s: float, seconds: float
) -> LoadResult:
    import grpc

    from app.protocols.oip_v2_grpc import SERVICE, messages

    msg = messages()
    req_cls = msg["ModelInferRequest"]
    request = req_cls(
        model_name=variant,
        inputs=[req_cls.InferInputTensor(name="IMAGE", datatype="BYTES", shape=[1])],
        raw_input_contents=[len(image).to_bytes(4, "little") + image],
    ).SerializeToString()
    channels = [grpc.aio.insecure_channel(address) for _ in range(c)]
    calls = [
        ch.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=lambda b: b,  # encoded once, up front
            response_deserializer=msg["ModelInferResponse"].FromString,
        )
        for ch in channels
    ]

    async def user(call: Callable, tally: _Tally) -> None:
        while tally.take():
            t0 = time.perf_counter()
            try:
                await call(request, timeout=30)
            except grpc.RpcError as exc:
                tally.errors[exc.code().name] += 1
                continue
            done = time.perf_counter()
            tally.latencies_ms.append((done - t0) * 1000)
            tally.ok_times.append(done)

    async def phase(max_seconds: float) -> tuple[_Tally, float]:
        start = time.perf_counter()
        tally = _Tally(budget=10**9, deadline=start + max_seconds)
        await asyncio.gather(*(user(call, tally) for call in calls))
        return tally, start

    try:
        await phase(warmup_s)
        tally, start = await phase(seconds)
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    return _summarise(c, tally, start)


def run(args: argparse.Namespace) -> dict[str, Any]:
    inp: Input = make_inputs([args.input])[args.input]
    grpc_port = bench_run.free_port()
    defn = ServerDef(
        "ours",
        lambda port, variant, weights: [sys.executable, "-m", "app"],  # this checkout's app
        ours_env_fn({"MOBILENET_GRPC_PORT": str(grpc_port)}),
        "/readyz",
        lambda v: f"/predict?variant={v}",
    )
    rows: dict[str, LoadResult] = {}
    runs: dict[str, list[LoadResult]] = {}
    with running_server(defn, args.variant, Path(args.weights), REPO / "bench" / "results") as srv:
        wait_ready(srv, 180)
        form, ctype = encode_multipart(inp.data, inp.content_type, inp.filename)
        v2_body, v2_headers = v2_binary_body(inp.data)
        check = httpx.post(
            f"{srv.base}/v2/models/{args.variant}/infer", content=v2_body, headers=v2_headers
        )
        check.raise_for_status()
        plan: list[tuple[str, Callable[[], Any]]] = [
            (
                "/predict multipart",
                lambda: http_row(
                    srv.predict_url,
                    form,
                    {"Content-Type": ctype},
                    args.concurrency,
                    args.warmup,
                    args.seconds,
                ),
            ),
            (
                "OIP v2 REST binary",
                lambda: http_row(
                    f"{srv.base}/v2/models/{args.variant}/infer",
                    v2_body,
                    v2_headers,
                    args.concurrency,
                    args.warmup,
                    args.seconds,
                ),
            ),
            (
                "OIP v2 gRPC",
                lambda: grpc_row(
                    f"127.0.0.1:{grpc_port}",
                    args.variant,
                    inp.data,
                    args.concurrency,
                    args.warmup,
                    args.seconds,
                ),
            ),
        ]
        runs: dict[str, list[LoadResult]] = {name: [] for name, _ in plan}
        for i in range(args.repeats):  # alternate the order: a drifting machine hits all
            for name, coro in plan if i % 2 == 0 else plan[::-1]:
                result = asyncio.run(coro())
                runs[name].append(result)
                print(f"{name}: {result.rps:.1f} req/s, p50 {result.p50_ms:.1f} ms", flush=True)
        for name, results in runs.items():  # the median run by throughput
            rows[name] = sorted(results, key=lambda r: r.rps)[len(results) // 2]
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "variant": args.variant,
        "input": inp.describe(),
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "runs": {k: [asdict(r) for r in v] for k, v in runs.items()},
        "rows": {k: asdict(v) for k, v in rows.items()},
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['variant']}, {report['input']}, c={report['concurrency']}, "
        f"{report['seconds']} s per row, median of {report['repeats']} in alternating order, "
        f"one server run ({report['when']})",
        "",
        "| protocol | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---|",
    ]
    for name, r in report["rows"].items():
        lines.append(
            f"| {name} | {r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['errors'] or '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="v3-small-1.0-224")
    p.add_argument("--input", default="720p", choices=["720p", "small", "png"])
    p.add_argument("-c", "--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3, help="runs per row (median reported)")
    p.add_argument("--weights", default=str(REPO / "weights"))
    args = p.parse_args(argv)
    report = run(args)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    (out / f"protocols-{stamp}.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
