"""GPU throughput and latency: the model alone, JPEG-to-answer in process, and over HTTP.

Run by ``bench/gpu_check.sh`` on a machine with an NVIDIA GPU; prints compact tables.
  python -m bench.gpu_bench --weights-dir /tmp/weights --images DIR
"""

from __future__ import annotations

import argparse
import contextlib
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
from bench import rawload

BATCHES = (1, 8, 32, 64, 128, 256)
# BENCH_DEVICE=cpu dry-runs the harness on a machine without a GPU (tiny numbers).
DEVICE = os.environ.get("BENCH_DEVICE", "cuda")
JPEG_BATCHES = (32, 64, 128, 256)
HTTP_SECONDS = 6.0
# (route, images per request, concurrency per server process)
HTTP_RUNS = (("/predict?model=v3", 1, 32), ("/predict/batch?model=v3", 32, 4))


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


def http(weights_dir: Path, images: list[bytes], *, workers: int) -> None:
    """Multipart JPEG uploads through a real server (``workers`` processes on one port),
    driven by ``bench.rawload`` on the same machine's remaining cores."""
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
        "MOBILENET_LOG_LEVEL": "warning",
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--workers", str(workers)], env=env
    )
    # One rawload process drives ~10k small requests/s, so two leave the cores to the server.
    clients = 2 if DEVICE != "cpu" else 1
    try:
        import httpx

        ready = 0
        for _ in range(900):
            with contextlib.suppress(httpx.HTTPError):
                ready += httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
            if ready >= 3 * workers:
                break
            time.sleep(0.1)
        print(f"server ready after {time.perf_counter() - t0:.1f} s; load: {clients} process(es)")
        for route, per, conc in HTTP_RUNS:
            r = rawload.run(
                port=port,
                path=route,
                images=images,
                per_request=per,
                concurrency=conc * workers,
                processes=clients,
                warmup_s=HTTP_SECONDS / 3,
                seconds=HTTP_SECONDS,
            )
            print(
                f"{route:26s} imgs/req {per:3d} conc {conc * workers:4d}: "
                f"{r['images_per_s']:8.0f} img/s, p50 {r['p50_ms']:.1f} ms, "
                f"p99 {r['p99_ms']:.1f} ms, errors {r['errors']}",
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
    parser.add_argument(
        "--workers",
        default="1,8",
        help="server process counts for the HTTP runs, comma-separated",
    )
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--http-only", action="store_true", help="skip the in-process tables")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(0) if DEVICE != "cpu" else "cpu", "torch", torch.__version__)
    torch.backends.cudnn.benchmark = True
    images = [p.read_bytes() for p in sorted(args.images.glob("**/*.JPEG"))][:64]
    images.append((args.images / "cat_720p.jpg").read_bytes())
    global BATCHES, JPEG_BATCHES, HTTP_SECONDS
    if DEVICE == "cpu":
        BATCHES, JPEG_BATCHES, HTTP_SECONDS = (1, 4), (4,), 1.0
    if not args.http_only:
        model_only(args.weights_dir, ["v3-small-1.0-224", "v2-1.0-224", "v1-1.0-224"])
        jpeg_pipeline(args.weights_dir, images)
    if not args.skip_http:
        for workers in (int(w) for w in args.workers.split(",")):
            http(args.weights_dir, images, workers=workers)


if __name__ == "__main__":
    main()
