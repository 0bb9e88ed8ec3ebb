"""deploy/nginx/nginx.conf: `nginx -t` on a rendered copy, and a short loopback run with
stub replicas proving that POST /predict is retried on another replica and that all
replicas down is a JSON 503."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.deploy_files import (
    NGINX_CONF,
    UPLOAD_LIMIT,
    need,
)

# ---------------------------------------------------------------------------
# (4) nginx


NGINX_TEXT = NGINX_CONF.read_text()
UPSTREAM_RE = re.compile(r"^(\s*)server api:8000 (.*);$", re.M)
LISTEN_RE = re.compile(r"^(\s*)listen 8080;$", re.M)


def _directives(text: str) -> list[str]:
    return [ln.split("#", 1)[0].strip() for ln in text.splitlines() if ln.split("#", 1)[0].strip()]


def test_nginx_conf_retry_design() -> None:
    d = _directives(NGINX_TEXT)
    joined = "\n".join(d)
    nu = [x for x in d if x.startswith("proxy_next_upstream ")]
    assert nu and set(["error", "timeout", "http_502", "http_503", "non_idempotent"]) <= set(
        nu[0].rstrip(";").split()[1:]
    ), nu
    tries = [x for x in d if x.startswith("proxy_next_upstream_tries ")]
    assert tries and int(tries[0].split()[1].rstrip(";")) >= 2
    connect = re.search(r"^proxy_connect_timeout (\d+)(ms|s);", joined, re.M)
    assert connect and (int(connect.group(1)) <= 2 if connect.group(2) == "s" else True)
    assert "proxy_request_buffering on;" in d
    body = re.search(r"^client_max_body_size (\d+)([kmg]?);", joined, re.M)
    assert body
    mult = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[body.group(2)]
    assert int(body.group(1)) * mult == UPLOAD_LIMIT
    assert re.search(r"^keepalive \d+;", joined, re.M)
    assert "proxy_http_version 1.1;" in d and 'proxy_set_header Connection "";' in d
    assert "proxy_set_header X-Request-ID $req_id;" in d
    assert "proxy_hide_header X-Request-ID;" in d, "one X-Request-ID per response"
    assert re.search(r"default\s+\$request_id;", joined), "generate an id when none (or junk) sent"
    # the placeholders the loopback tests substitute: exactly one of each
    assert len(UPSTREAM_RE.findall(NGINX_TEXT)) == 1
    assert "max_fails=" in UPSTREAM_RE.search(NGINX_TEXT).group(2)
    assert "fail_timeout=" in UPSTREAM_RE.search(NGINX_TEXT).group(2)
    assert len(LISTEN_RE.findall(NGINX_TEXT)) == 1
    assert not re.search(r"^\s*(include|user|pid)\s", NGINX_TEXT, re.M), "keep it self-contained"
    assert "idempotent" in NGINX_TEXT.split("worker_processes")[0], "explain why retry is safe"


def render_nginx(directory: Path, upstreams: list[str], port: int) -> Path:
    """A copy of deploy/nginx/nginx.conf for loopback use (see its PLACEHOLDERS)."""

    def servers(m: re.Match[str]) -> str:
        return "\n".join(f"{m.group(1)}server {u} {m.group(2)};" for u in upstreams)

    text = UPSTREAM_RE.sub(servers, NGINX_TEXT, count=1)
    text = LISTEN_RE.sub(lambda m: f"{m.group(1)}listen 127.0.0.1:{port};", text, count=1)
    conf = directory / "nginx.conf"
    conf.write_text(text)
    return conf


def _nginx_argv(conf: Path, *extra: str, daemon: bool = True) -> list[str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    user = ""
    if os.geteuid() == 0:
        # workers would otherwise run as `nobody` and not enter pytest's 0700 tmp dirs
        user = " user root root;"
    glob = f"pid {conf.parent / 'nginx.pid'};{user}" + ("" if daemon else " daemon off;")
    return [nginx, *extra, "-p", f"{conf.parent}/", "-c", str(conf), "-e", "stderr", "-g", glob]


def _have_nginx() -> bool:
    return shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()


def test_nginx_config_test(tmp_path: Path) -> None:
    need("nginx", _have_nginx(), "apt-get install -y nginx (Debian)")
    conf = render_nginx(tmp_path, ["127.0.0.1:18001", "127.0.0.1:18002"], 18080)
    proc = subprocess.run(_nginx_argv(conf, "-t"), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Stub(http.server.BaseHTTPRequestHandler):
    """A fake replica: echoes who answered, the body size and the request id."""

    protocol_version = "HTTP/1.1"
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.hits += 1  # type: ignore[attr-defined]
        out = json.dumps(
            {
                "replica": self.server.server_address[1],  # type: ignore[attr-defined]
                "bytes": len(body),
                "request_id": self.headers.get("X-Request-ID"),
            }
        ).encode()
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        if self.headers.get("X-Request-ID"):  # the service echoes it, like this stub
            self.send_header("X-Request-ID", self.headers["X-Request-ID"])
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _stub_replica(status: int) -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    srv.status = status  # type: ignore[attr-defined]
    srv.hits = 0  # type: ignore[attr-defined]
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv  # type: ignore[misc]
    finally:
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def _nginx(tmp_path: Path, upstreams: list[str]) -> Iterator[int]:
    port = _free_port()
    conf = render_nginx(tmp_path, upstreams, port)
    proc = subprocess.Popen(
        _nginx_argv(conf, daemon=False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr else ""
                raise AssertionError(f"nginx did not start: {err}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _post(
    port: int, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            "/predict",
            body=body,
            headers={"Content-Type": "application/octet-stream", **(headers or {})},
        )
        resp = conn.getresponse()
        ids = [v for k, v in resp.getheaders() if k.lower() == "x-request-id"]
        assert len(ids) == 1, f"expected exactly one X-Request-ID, got {ids}"
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_nginx_retries_post_predict_on_another_replica(tmp_path: Path) -> None:
    """A dead replica (refused) and a draining one (503): POST still succeeds, once."""
    need("nginx", _have_nginx(), "apt-get install -y nginx (Debian)")
    dead = f"127.0.0.1:{_free_port()}"  # nothing listens there: connection refused
    with _stub_replica(503) as draining, _stub_replica(200) as good:
        ups = [
            dead,
            f"127.0.0.1:{draining.server_address[1]}",
            f"127.0.0.1:{good.server_address[1]}",
        ]
        with _nginx(tmp_path, ups) as port:
            body = os.urandom(3 * 1024 * 1024)  # > client_body_buffer_size: replayed from disk
            for _ in range(4):
                status, headers, out = _post(port, body)
                assert status == 200, out
                answer = json.loads(out)
                assert answer["replica"] == good.server_address[1]
                assert answer["bytes"] == len(body)
                assert re.fullmatch(r"[0-9a-f]{32}", answer["request_id"])  # generated
                assert headers["x-request-id"] == answer["request_id"]
            assert good.hits == 4  # exactly once per request on the healthy replica
            status, headers, out = _post(port, b"x", {"X-Request-ID": "client-id-1"})
            assert status == 200 and json.loads(out)["request_id"] == "client-id-1"
            assert headers["x-request-id"] == "client-id-1"
            status, headers, out = _post(port, b"x", {"X-Request-ID": 'bad"id'})
            assert status == 200 and json.loads(out)["request_id"] != 'bad"id'
            status, headers, out = _post(port, b"\0" * (UPLOAD_LIMIT + 1))
            assert status == 413
            assert json.loads(out)["error"]["code"] == "payload_too_large"
            assert json.loads(out)["error"]["request_id"] == headers["x-request-id"]
            status, _, _ = _post(port, b"\0" * UPLOAD_LIMIT)  # exactly the limit: accepted
            assert status == 200


def test_nginx_all_replicas_down_is_a_json_503(tmp_path: Path) -> None:
    need("nginx", _have_nginx(), "apt-get install -y nginx (Debian)")
    with _nginx(tmp_path, [f"127.0.0.1:{_free_port()}"]) as port:
        status, headers, out = _post(port, b"x")
    assert status == 503
    assert headers["retry-after"] == "1" and headers["x-request-id"]
    error = json.loads(out)["error"]
    assert error["code"] == "upstream_unavailable"
    assert error["request_id"] == headers["x-request-id"]
