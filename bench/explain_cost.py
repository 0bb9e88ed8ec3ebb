"""What one explain and one all-variants comparison cost, against a running server.

Reported, not asserted. One request at a time (the cost of a request, not throughput):
per loaded variant, the median of ``--repeats`` ``POST /explain`` calls (client wall time
and the server's ``total_ms``, with its forward count) next to the median ``POST
/predict`` of the same image; then the median ``POST /predict/compare``. The image is
sent as multipart, as ``curl -F file=@...`` does.

    python -m bench.explain_cost --url http://127.0.0.1:8000 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import httpx

from bench.loadgen import check_loopback

IMAGE = Path(__file__).resolve().parents[2] / "shared" / "images" / "cat.bmp"


def _timed(c: httpx.Client, path: str, body: bytes, repeats: int) -> tuple[float, float, dict]:
    """(median client ms, median server total_ms, last JSON body) after one warm-up call."""
    client_ms, server_ms, last = [], [], {}
    for i in range(repeats + 1):
        t = time.perf_counter()
        r = c.post(path, files={"file": ("image", body)})
        elapsed = (time.perf_counter() - t) * 1000
        r.raise_for_status()
        last = r.json()
        if i:  # the first call warms caches and pools
            client_ms.append(elapsed)
            server_ms.append(last.get("timings", last)["total_ms"])
    return statistics.median(client_ms), statistics.median(server_ms), last


def measure(url: str, body: bytes, repeats: int) -> str:
    check_loopback(url)
    lines = [
        "| variant | forwards | explain ms (client) | explain ms (server) "
        "| predict ms (client) | explain / predict |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    with httpx.Client(base_url=url, timeout=120) as c:
        models = c.get("/models").json()["models"]
        for m in models:
            name = m["name"]
            e_client, e_server, e = _timed(c, f"/explain?variant={name}", body, repeats)
            p_client, _, _ = _timed(c, f"/predict?variant={name}", body, repeats)
            lines.append(
                f"| {name} | {e['saliency']['forwards']} | {e_client:.1f} | {e_server:.1f} "
                f"| {p_client:.1f} | {e_client / p_client:.1f}x |"
            )
        c_client, c_server, cmp = _timed(c, "/predict/compare", body, repeats)
    lines += [
        "",
        f"/predict/compare with {len(cmp['results'])} variants ({cmp['decodes']} decodes): "
        f"{c_client:.1f} ms client, {c_server:.1f} ms server (median of {repeats}).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--image", type=Path, default=IMAGE)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(measure(args.url, args.image.read_bytes(), args.repeats))


if __name__ == "__main__":
    main()
