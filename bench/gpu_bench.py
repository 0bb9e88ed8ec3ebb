"""GPU throughput and latency: the model alone, JPEG-to-answer in process, and over HTTP.

Run by ``bench/gpu_check.sh`` on a machine with an NVIDIA GPU; prints compact tables.
  python -m bench.gpu_bench --weights-dir /tmp/weights --images DIR
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from app.imaging import prepare
from app.inference.torch_backend import TorchBackend
from app.weights import SPECS_BY_NAME
from app.weights.store import load_model

BATCHES = (1, 8, 32, 64, 128, 256)
# BENCH_DEVICE=cpu dry-runs the harness on a machine without a GPU (tiny numbers).
DEVICE = os.environ.get("BENCH_DEVICE", "cuda")
JPEG_BATCHES = (32, 64, 128, 256)
HTTP_SECONDS = 5.0


def _sync_time(fn, *, repeat: int) -> float:
    """Median seconds of ``fn()`` (which must return host data, so it is synchronous)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def model_only(weights_dir: Path, variants: list[str]) -> None:
    print("\n## forward only (uint8 NHWC on host -> probs on host), fp16, CUDA graphs vs eager")
    print(
        f"{'variant':20s} {'batch':>5s} {'graphs img/s':>13s} {'graphs ms':>10s} "
        f"{'eager img/s':>12s}"
    )
    for name in variants:
        spec = SPECS_BY_NAME[name]
        graphs = TorchBackend(load_model(weights_dir, spec), spec.preprocessing, device=DEVICE)
        eager = TorchBackend(
            load_model(weights_dir, spec), spec.preprocessing, device=DEVICE, cuda_graphs=False
        )
        for n in BATCHES:
            x = np.random.randint(0, 255, (n, spec.resolution, spec.resolution, 3), np.uint8)
            tg = _sync_time(lambda x=x, g=graphs: g.predict(x), repeat=10)
            te = _sync_time(lambda x=x, e=eager: e.predict(x), repeat=5)
            print(f"{name:20s} {n:5d} {n / tg:13.0f} {tg * 1000:10.2f} {n / te:12.0f}", flush=True)


def jpeg_pipeline(weights_dir: Path, images: list[bytes]) -> None:
    print("\n## JPEG bytes -> top-1 in process (no HTTP), v3-small-1.0-224")
    spec = SPECS_BY_NAME["v3-small-1.0-224"]
    backend = TorchBackend(load_model(weights_dir, spec), spec.preprocessing, device=DEVICE)
    for n in JPEG_BATCHES:
        batch = [images[i % len(images)] for i in range(n)]
        t = _sync_time(lambda b=batch: backend.predict_jpegs(b), repeat=10)
        print(
            f"nvJPEG decode+resize+forward  batch {n:4d}: {n / t:8.0f} img/s ({t * 1e3:.1f} ms)",
            flush=True,
        )
    threads = os.cpu_count() or 1
    with ThreadPoolExecutor(threads) as pool:
        for n in JPEG_BATCHES[-1:]:
            batch = [images[i % len(images)] for i in range(n)]

            def cpu_path(b=batch) -> np.ndarray:
                arrays = list(
                    pool.map(lambda d: prepare(d, spec.preprocessing, max_pixels=10**8), b)
                )
                return backend.predict(np.stack(arrays))

            t = _sync_time(cpu_path, repeat=5)
            print(
                f"CPU decode ({threads} threads)+GPU forward batch {n:4d}: {n / t:8.0f} img/s",
                flush=True,
            )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _drive(
    url: str, files: list[bytes], *, concurrency: int, seconds: float, per_request: int
) -> tuple[int, list[float], int]:
    import httpx

    done, errors, latencies = 0, 0, []
    stop = time.perf_counter() + seconds

    async def user(i: int) -> None:
        nonlocal done, errors
        async with httpx.AsyncClient(timeout=30) as client:
            k = i
            while time.perf_counter() < stop:
                chosen = [files[(k + j) % len(files)] for j in range(per_request)]
                k += per_request
                t = time.perf_counter()
                if per_request == 1:
                    r = await client.post(url, files={"file": ("x.jpg", chosen[0], "image/jpeg")})
                else:
                    r = await client.post(
                        url,
                        files=[
                            ("files", (f"{j}.jpg", c, "image/jpeg")) for j, c in enumerate(chosen)
                        ],
                    )
                latencies.append(time.perf_counter() - t)
                if r.status_code == 200:
                    done += per_request
                else:
                    errors += 1

    await asyncio.gather(*(user(i) for i in range(concurrency)))
    return done, latencies, errors


def http(weights_dir: Path, images: list[bytes], *, workers: int) -> None:
    print(f"\n## HTTP end to end, v3-small-1.0-224, JPEG uploads, {workers} server process(es)")
    port = _free_port()
    env = {
        **os.environ,
        "MOBILENET_WEIGHTS_DIR": str(weights_dir),
        "MOBILENET_PORT": str(port),
        "MOBILENET_VARIANTS": "v3-small-1.0-224",
        "MOBILENET_DEVICE": DEVICE,
        "MOBILENET_MAX_BATCH_SIZE": "256",
        "MOBILENET_QUEUE_LIMIT": "4096",
        "MOBILENET_MAX_WAIT_MS": "2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--workers", str(workers)], env=env
    )
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        for route, per, conc in (
            ("/predict", 1, 64),
            ("/predict", 1, 256),
            ("/predict/batch?model=v3", 32, 16),
        ):
            url = f"http://127.0.0.1:{port}{route}"
            asyncio.run(
                _drive(url, images, concurrency=conc, seconds=HTTP_SECONDS / 4, per_request=per)
            )
            t = time.perf_counter()
            done, lat, errors = asyncio.run(
                _drive(url, images, concurrency=conc, seconds=8, per_request=per)
            )
            el = time.perf_counter() - t
            p = np.percentile(np.array(lat) * 1000, [50, 99]) if lat else [0, 0]
            print(
                f"{route:26s} imgs/req {per:3d} conc {conc:4d}: {done / el:8.0f} img/s, "
                f"p50 {p[0]:.1f} ms, p99 {p[1]:.1f} ms, errors {errors}",
                flush=True,
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights-dir", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=0, help="also run N server processes")
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(0) if DEVICE != "cpu" else "cpu", "torch", torch.__version__)
    torch.backends.cudnn.benchmark = True
    images = [p.read_bytes() for p in sorted(args.images.glob("**/*.JPEG"))][:64]
    images.append((args.images / "cat_720p.jpg").read_bytes())
    global BATCHES, JPEG_BATCHES, HTTP_SECONDS
    if DEVICE == "cpu":
        BATCHES, JPEG_BATCHES, HTTP_SECONDS = (1, 4), (4,), 1.0
    model_only(args.weights_dir, ["v3-small-1.0-224", "v2-1.0-224", "v1-1.0-224"])
    jpeg_pipeline(args.weights_dir, images)
    if not args.skip_http:
        http(args.weights_dir, images, workers=1)
        if args.workers > 1:
            http(args.weights_dir, images, workers=args.workers)


if __name__ == "__main__":
    main()
