"""The benchmark harness runs end to end: server start, load, table, JSON, limits, stop.

It asserts that the harness works (every request answered, a table printed, raw results
written, no server left running), never how fast anything is: CI machines are too noisy
for that, and `make bench` on a quiet machine is where speed is judged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from test_bench_wrk import need_wrk

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 60.0
if str(REPO) not in sys.path:  # `bench` is not an installed package; pytest adds only tests/
    sys.path.insert(0, str(REPO))


def _tagged_processes(token: str) -> list[int]:
    """Processes that inherited our marker variable: servers the harness left running."""
    found = []
    for p in psutil.process_iter(["pid", "environ"]):
        if (p.info.get("environ") or {}).get("BENCH_SMOKE_TOKEN") == token:
            found.append(p.info["pid"])
    return found


@dataclass
class QuickRun:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float
    leftovers: list[int]
    results: Path
    markdown: Path
    docs_unchanged: bool


@pytest.fixture(scope="module")
def quick_bench(
    weights_dir: Path, images_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> QuickRun:
    """One ``--quick`` run of the harness (ours on the small input), shared by the tests
    that read its output: a server start, httpx and wrk cells, the limits, the report."""
    results = tmp_path_factory.mktemp("bench")
    markdown = results / "benchmarks.md"
    token = uuid.uuid4().hex
    docs = REPO / "docs" / "benchmarks.md"
    docs_before = docs.stat().st_mtime_ns if docs.exists() else None
    start = time.monotonic()
    cmd = [
        sys.executable,
        "-m",
        "bench.run",
        "--quick",
        "--servers",
        "ours",
        "--inputs",
        "small",
        "--concurrency",
        "2",
        "--weights-dir",
        str(weights_dir),
        "--results-dir",
        str(results),
        "--docs",
        str(markdown),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, "BENCH_SMOKE_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=BUDGET_S * 2)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the harness stops its servers on SIGTERM
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        leftovers = _tagged_processes(token)
        for pid in leftovers:  # a server the harness failed to stop: never leak it
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
    docs_after = docs.stat().st_mtime_ns if docs.exists() else None
    return QuickRun(
        proc.returncode,
        stdout,
        stderr,
        time.monotonic() - start,
        leftovers,
        results,
        markdown,
        docs_after == docs_before,
    )


def _report(run: QuickRun) -> dict:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (raw,) = run.results.glob("bench-*.json")
    return json.loads(raw.read_text())


@pytest.mark.slow
def test_quick_bench_runs_end_to_end(quick_bench: QuickRun) -> None:
    report, stdout = _report(quick_bench), quick_bench.stdout
    assert quick_bench.elapsed < BUDGET_S, f"quick bench took {quick_bench.elapsed:.0f}s"

    header = next(line for line in stdout.splitlines() if line.startswith("server "))
    assert header.split()[:4] == ["server", "variant", "input", "conc"]
    table = [line for line in stdout.splitlines() if line.startswith("ours ")]
    assert table, stdout

    (row,) = report["rows"]
    assert (row["server"], row["input"], row["concurrency"]) == ("ours", "small", 2)
    assert row["errors"] == {}
    assert row["ok"] == row["sent"] > 0
    assert row["rps"] > 0 and row["p50_ms"] <= row["p99_ms"]
    assert row["rss_mb"] > 0
    assert row["server_cpu_ms"] > 0 and row["client_cpu_ms"] > 0
    (null,) = report["http_alone"]  # the no-work server, same input and concurrency
    assert (null["server"], null["input"], null["concurrency"]) == ("null-http", "small", 2)
    assert null["errors"] == {} and null["ok"] == null["sent"] > 0
    assert "null-http" in stdout
    assert all(not s["failure"] for s in report["server_runs"])
    assert {"forward", "decode", "pipeline", "rtc"} <= report["limits"].keys()
    assert report["limits"]["pipeline"], "the in-process pipeline limit was not measured"
    # The headline's limit: V3's forward with the exact hard-swish rewrite, one
    # single-threaded interpreter per core, decode then forward on each core's thread.
    (rtc,) = report["limits"]["rtc"]
    assert (rtc["variant"], rtc["input"], rtc["backend"]) == ("v3-small-1.0-224", "small", "litert")
    assert rtc["exact_hard_swish"] is True
    assert rtc["threads"] == len(os.sched_getaffinity(0))
    assert rtc["images"] > 0 and rtc["img_s"] > 0 and rtc["cpu_ms"] > 0
    assert rtc["forward_ms"] > 0
    text = quick_bench.markdown.read_text()
    assert "| v3-small-1.0-224 | small | litert |" in text  # the rtc limit's table row
    assert quick_bench.docs_unchanged, "a --quick run must not rewrite docs/benchmarks.md"
    assert not quick_bench.leftovers, f"the harness left server(s) {quick_bench.leftovers} running"


@pytest.mark.slow
def test_quick_bench_drives_wrk_and_reports_it_against_the_limit(quick_bench: QuickRun) -> None:
    report = _report(quick_bench)
    need_wrk()
    assert report["wrk_client"]["path"] and "wrk" in report["wrk_client"]["version"]
    (row,) = report["wrk"]  # ours on the only input, sent as a form, at c=16
    assert (row["server"], row["variant"], row["input"], row["body"], row["concurrency"]) == (
        "ours",
        "v3-small-1.0-224",
        "small",
        "multipart",
        16,
    )
    assert row["errors"] == {}, row
    assert row["ok"] == row["sent"] > 0 and row["rps"] > 0
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert row["seconds"] == pytest.approx(report["counts"]["wrk_seconds"], abs=0.5)
    assert row["server_cpu_ms"] > 0 and row["client_cpu_ms"] >= 0
    assert report["wrk_repeats"] == []  # --quick: no repeats
    assert "wrk multipart ours" in quick_bench.stdout
    text = quick_bench.markdown.read_text()
    assert "## Headline: wrk at concurrency 16" in text
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("| ours | v3-small-1.0-224 | small | multipart |")
    )
    cells = [c.strip().strip("*") for c in line.strip("|").split("|")][1:]
    rtc = report["limits"]["rtc"][0]
    assert float(cells[4]) == pytest.approx(row["rps"], abs=0.06)
    assert float(cells[5]) == pytest.approx(rtc["img_s"], abs=0.06)
    assert float(cells[6]) == pytest.approx(row["rps"] / rtc["img_s"], abs=0.006)
    assert float(cells[9]) == pytest.approx(row["server_cpu_ms"] / rtc["cpu_ms"], abs=0.006)


def test_loadgen_refuses_non_loopback() -> None:
    from bench.loadgen import check_loopback

    check_loopback("http://127.0.0.1:8000/predict")
    check_loopback("http://localhost:1/")
    check_loopback("http://[::1]:8000/")
    for url in ("http://10.0.0.5:8000/", "http://example.com/", "http://0.0.0.0:80/"):
        with pytest.raises(ValueError, match="loopback"):
            check_loopback(url)


def test_multipart_body_is_what_starlette_parses() -> None:
    import asyncio

    from starlette.requests import Request

    from bench.loadgen import encode_multipart

    payload, ctype = encode_multipart(b"\xff\xd8\xffdata", "image/jpeg", "a.jpg")

    async def parse() -> bytes:
        sent = False

        async def receive() -> dict[str, object]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}

        scope = {
            "type": "http",
            "method": "POST",
            "headers": [(b"content-type", ctype.encode())],
        }
        form = await Request(scope, receive).form()
        upload = form["file"]
        assert upload.filename == "a.jpg"
        return await upload.read()

    assert asyncio.run(parse()) == b"\xff\xd8\xffdata"


def test_percentile_interpolates() -> None:
    from bench.loadgen import percentile

    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0


def _parse_form(raw_request: bytes) -> list[tuple[str, bytes]]:
    """What Starlette's form parser makes of one raw HTTP request from ``bench.rawload``."""
    import asyncio

    from starlette.requests import Request

    head, body = raw_request.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    pairs = [line.split(b":", 1) for line in lines[1:]]
    headers = [(name.strip().lower(), value.strip()) for name, value in pairs]
    assert int(dict(headers)[b"content-length"]) == len(body)

    async def parse() -> list[tuple[str, bytes]]:
        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": "POST", "headers": headers}
        form = await Request(scope, receive).form()
        return [(k, await v.read()) for k, v in form.multi_items()]

    return asyncio.run(parse())


@pytest.mark.parametrize(("per_request", "field"), [(1, "file"), (3, "files")])
def test_rawload_requests_are_well_formed_uploads(per_request: int, field: str) -> None:
    from bench.rawload import build_requests

    images = [b"\xff\xd8\xffone", b"\xff\xd8\xfftwo\r\n--x", b"\xff\xd8\xffthree"]
    requests = build_requests(
        host="127.0.0.1", port=8000, path="/p?x=1", images=images, per_request=per_request, count=4
    )
    assert requests[0].startswith(b"POST /p?x=1 HTTP/1.1\r\n")
    sent = [img for raw in requests for _, img in _parse_form(raw)]
    assert all(name == field for raw in requests for name, _ in _parse_form(raw))
    assert sent == [images[k % 3] for k in range(4 * per_request)]


def test_rawload_counts_answers_and_survives_dropped_connections() -> None:
    """A stub server answers 200 to one path and 503 (then hangs up) to another: the load
    generator counts only 200s as served, every other answer as an error, and reconnects."""
    import asyncio
    import threading

    from bench import rawload

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if b" /ok " in head.split(b"\r\n")[0]:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                else:
                    writer.write(b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        common = dict(port=port, images=[b"\xff\xd8\xff"], warmup_s=0.2, seconds=0.6)
        ok = rawload.run(path="/ok", per_request=4, concurrency=3, processes=2, **common)
        assert ok["errors"] == 0 and ok["requests_per_s"] > 0
        assert ok["images_per_s"] == pytest.approx(4 * ok["requests_per_s"])
        busy = rawload.run(path="/busy", concurrency=2, processes=1, **common)
        assert busy["requests_per_s"] == 0 and busy["errors"] > 2  # it kept reconnecting
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_throughput_counts_the_full_load_window_not_the_drain() -> None:
    """Answers after the window closes (the drain) count for latency, not for req/s."""
    from bench.loadgen import _summarise, _Tally

    tally = _Tally(budget=3, deadline=100.0)
    start = 10.0
    tally.issued = 3
    tally.latencies_ms = [100.0, 200.0, 900.0]
    tally.ok_times = [10.5, 11.0, 12.0]  # the last one arrives during the drain
    tally.closed_at = 11.0
    result = _summarise(4, tally, start)
    assert result.seconds == 1.0
    assert result.rps == 2.0
    assert result.ok == 3
    assert result.max_ms == 900.0  # the slow drained answer still shows in latency


def test_a_timed_window_closes_at_its_deadline_not_at_a_late_answer(monkeypatch) -> None:
    import bench.loadgen as lg

    tally = lg._Tally(budget=100, deadline=5.0)
    monkeypatch.setattr(lg.time, "perf_counter", lambda: 4.0)
    assert tally.take()
    monkeypatch.setattr(lg.time, "perf_counter", lambda: 7.5)  # first answer after time's up
    assert not tally.take()
    assert tally.closed_at == 5.0
    tally2 = lg._Tally(budget=1, deadline=50.0)
    assert tally2.take() and not tally2.take()  # closed by the budget, at that moment
    assert tally2.closed_at == 7.5


def test_http_ceiling_adds_the_cost_of_a_request_to_the_pipeline_limit() -> None:
    from bench.report import http_ceiling
    from bench.rows import Row

    null = Row("null-http", "none", "720p", 16, 700.0, 20, 25, 30, {}, 30, 1000, 1000, 4.0)
    null.server_cpu_ms, null.client_cpu_ms = 0.5, 1.0
    # 2 cores at 200 img/s: 10 ms of CPU per image, + 1.5 ms of HTTP -> 2000 / 11.5
    assert http_ceiling(200.0, null, cores=2) == pytest.approx(2000 / 11.5)
    assert math.isnan(http_ceiling(200.0, None, cores=2))


def _cell(server: str, rps: float, p99: float, *, conc: int = 16, inp: str = "720p"):
    from bench.rows import Row

    return Row(server, "v3-small-1.0-224", inp, conc, rps, 50, 80, p99, {}, 700, 500, 500, 4.0)


def test_headline_repeats_alternate_and_restart_each_server(monkeypatch, tmp_path: Path) -> None:
    import bench.cells as br
    from bench.inputs import Input
    from bench.servers import server_defs

    started: list[str] = []

    def fake_bench_server(
        defn, variant, weights, inputs, concurrencies, counts, log_dir, *, wrk_cells
    ):
        started.append(defn.name)
        assert (variant, list(inputs), concurrencies) == ("v3-small-1.0-224", ["720p"], [16])
        assert wrk_cells == [br.WrkCell("720p", "multipart", 16)]  # wrk re-measured too
        run = br.ServerRun(defn.name, variant)
        run.rows = [_cell(defn.name, 100.0, 200.0)]
        return run

    monkeypatch.setattr(br, "bench_server", fake_bench_server)
    inp = Input("720p", b"x", "image/jpeg", "a.jpg", (1280, 720))
    runs = br.headline_repeats(
        server_defs({}), tmp_path, inp, br.QUICK, tmp_path, rounds=3, wrk_cell=br.WrkCell("720p")
    )
    # peer first in round 0, so each server's runs spread evenly over the time taken
    assert started == ["litserve", "ours", "ours", "litserve", "litserve", "ours"]
    assert [r.server for run in runs for r in run.rows] == started


def test_headline_stats_take_medians_over_the_grid_and_the_repeats() -> None:
    from bench.report import headline_markdown, headline_stats

    grid = [
        _cell("ours", 150.0, 150.0),
        _cell("ours", 70.0, 10.0, conc=1),  # other cells do not count
        _cell("litserve", 100.0, 280.0),
        _cell("naive", 40.0, 900.0),
    ]
    repeats = [
        _cell("litserve", 80.0, 300.0),
        _cell("ours", 170.0, 140.0),
        _cell("ours", 120.0, 160.0),
        _cell("litserve", 90.0, 250.0),
    ]
    h = headline_stats(grid, repeats)
    assert h is not None
    assert h["measured"]["ours"]["rps"] == [150.0, 170.0, 120.0]
    assert h["median"]["ours"]["rps"] == 150.0 and h["median"]["litserve"]["rps"] == 90.0
    assert h["rps_ratio"] == pytest.approx(150 / 90)
    assert h["p99_ratio"] == pytest.approx(150 / 280)
    text = headline_markdown(h)
    assert "x1.67" in text and "x0.54" in text and "3 times" in text
    assert headline_stats(grid[:2], []) is None  # no peer measured: nothing to compare


@pytest.mark.slow
def test_protocols_bench_runs_each_protocol_against_one_server(weights_dir: Path) -> None:
    """bench/protocols.py answers every request on all three rows (speed not judged)."""
    from bench import protocols

    args = protocols.argparse.Namespace(
        variant="v1-0.25-128",
        input="small",
        concurrency=2,
        seconds=1.0,
        warmup=0.3,
        repeats=1,
        weights=str(weights_dir),
    )
    report = protocols.run(args)
    assert list(report["rows"]) == ["/predict multipart", "OIP v2 REST binary", "OIP v2 gRPC"]
    for name, row in report["rows"].items():
        assert row["ok"] > 0 and not row["errors"], (name, row)
    assert "| OIP v2 gRPC |" in protocols.markdown(report)
