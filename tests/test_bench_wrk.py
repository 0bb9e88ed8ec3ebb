"""The wrk load path of the benchmark (``bench/wrk.py``) and the headline it feeds.

wrk itself is exercised against a stub server (what it sends, how every status is
counted); the headline's arithmetic on made-up cells. The end-to-end wrk run of the
harness is in ``test_bench_smoke.py``. Like there, nothing here asserts a speed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def need_wrk() -> str:
    """wrk's path; in CI (``CI=true``, where .ci/run installs it) a missing wrk fails."""
    exe = shutil.which("wrk")
    if exe is not None:
        return exe
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("wrk is missing in CI: .ci/run installs it (apt-get install wrk)")
    pytest.skip("wrk is not installed (apt-get install wrk): the wrk load path is not tested")


def test_wrk_posts_the_body_and_counts_every_status(tmp_path: Path) -> None:
    """Against a stub server that answers 200 and 503 in turn: wrk sends the exact body
    and content type, every answer is counted, and only 2xx count as served."""
    import asyncio
    import threading

    from bench import wrk

    need_wrk()
    seen: list[tuple[bytes, bytes]] = []
    answers = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answers
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(
                    line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line
                )
                lower = {k.lower(): v for k, v in fields.items()}
                body = await reader.readexactly(int(lower[b"content-length"]))
                seen.append((lower[b"content-type"], body))
                answers += 1
                status = b"200 OK" if answers % 2 else b"503 Busy"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        body = b"\xff\xd8\xff" + bytes(range(256)) * 40
        spec = wrk.WrkSpec(
            url=f"http://127.0.0.1:{port}/predict?x=1",
            body=body,
            content_type="image/jpeg",
            concurrency=2,
            seconds=1,
            warmup_s=0,
        )
        result = wrk.run(spec, tmp_path, cpu=lambda: 0.0)
    finally:

        async def shutdown() -> None:
            server.close()
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert seen and all(s == (b"image/jpeg", body) for s in seen)
    assert result.answered > 2 and result.ok > 0
    assert result.ok + result.errors["503"] == result.answered
    assert set(result.errors) == {"503"}
    assert result.rps == pytest.approx(result.ok / result.seconds)
    assert result.client_cpu_s >= 0 and result.server_cpu_s == 0.0
    assert (tmp_path / "wrk.txt").read_text().count("Latency Distribution") == 1


def test_wrk_output_is_parsed_into_served_answers_and_errors() -> None:
    from bench.wrk import parse

    text = (
        "Running 6s test @ http://127.0.0.1:1/predict\n"
        'WRK_JSON {"duration_us": 2000000, "requests": 410, "bytes": 1, "errors": '
        '{"connect": 0, "read": 2, "write": 0, "timeout": 1}, "statuses": {"200": 400, '
        '"503": 8, "422": 2}, "latency_us": {"p50": 1500, "p90": 2000, "p95": 2500, '
        '"p99": 9000, "max": 12000, "mean": 1600.5}}\n'
    )
    r = parse(text, 16)
    assert (r.answered, r.ok, r.seconds, r.rps) == (410, 400, 2.0, 200.0)
    assert r.errors == {"422": 2, "503": 8, "read": 2, "timeout": 1}
    assert (r.p50_ms, r.p95_ms, r.p99_ms, r.max_ms) == (1.5, 2.5, 9.0, 12.0)
    with pytest.raises(RuntimeError, match="WRK_JSON"):
        parse("wrk: connection refused\n", 16)


def test_headline_compares_wrk_cells_with_the_limit_of_the_same_input() -> None:
    from bench.headline import headline_stats, servers_cells
    from bench.rows import WrkRow

    def wrk_row(server: str, rps: float, cpu: float, *, inp: str = "720p", body: str = "multipart"):
        row = WrkRow(server, "v3-small-1.0-224", inp, 16, rps, 60, 80, 90, {}, 700, 900, 900, 6.0)
        row.server_cpu_ms, row.client_cpu_ms, row.body = cpu, 0.02, body
        return row

    rtc = [  # the headline cell's limit measured three times: medians are used
        {"variant": "v3-small-1.0-224", "input": "720p", "img_s": 300.0, "cpu_ms": 5.0},
        {"variant": "v3-small-1.0-224", "input": "720p", "img_s": 250.0, "cpu_ms": 5.5},
        {"variant": "v3-small-1.0-224", "input": "720p", "img_s": 500.0, "cpu_ms": 4.5},
        {"variant": "v3-small-1.0-224", "input": "small", "img_s": 500.0, "cpu_ms": 2.0},
    ]
    grid = [
        wrk_row("ours", 240.0, 6.0),
        wrk_row("ours", 400.0, 3.0, inp="small"),
        wrk_row("ours", 270.0, 5.5, body="raw"),
        wrk_row("litserve", 80.0, 20.0),
    ]
    repeats = [
        wrk_row("litserve", 90.0, 19.0),
        wrk_row("ours", 210.0, 6.5),
        wrk_row("ours-per-core", 280.0, 5.8),  # one worker process per core
    ]
    all_stats = headline_stats(grid, repeats, rtc)
    stats = {(s["input"], s["body"]): s for s in all_stats if s["server"] == "ours"}
    head = stats[("720p", "multipart")]
    (per_core,) = [s for s in all_stats if s["server"] == "ours-per-core"]
    assert per_core["limit_ratio"] == pytest.approx(280 / 300)
    assert per_core["cpu_ratio"] == pytest.approx(5.8 / 5.0)
    assert head["rps"] == [240.0, 210.0] and head["rps_median"] == 225.0
    assert head["limit_img_s_runs"] == [300.0, 250.0, 500.0] and head["limit_img_s"] == 300.0
    assert head["limit_ratio"] == pytest.approx(225 / 300)
    assert head["cpu_ratio"] == pytest.approx(6.25 / 5.0)
    assert stats[("small", "multipart")]["cpu_ratio"] == pytest.approx(1.5)
    assert stats[("720p", "raw")]["limit_ratio"] == pytest.approx(0.9)  # same limit, raw body
    table = {cells[0]: cells for cells in servers_cells(grid, repeats)}
    assert table["litserve"][1:3] == ["80.0, 90.0", "85.0"]
    assert table["litserve"][7] == f"{225 / 85:.2f}"  # ours / litserve, medians
    assert table["ours"][7] == "-"
