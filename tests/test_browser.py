"""The pages a person sees, in a real browser: /docs, /redoc and the classify page at /.

The real app with real weights runs as a uvicorn server in a thread; Debian's chromium
(driven by Playwright, never a downloaded browser) loads the pages. Every request the
browser makes is recorded: none may leave the server's origin. Screenshots go to
``test-output/screenshots/`` (kept by CI). Without chromium the tests skip, except in CI.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "test-output" / "screenshots"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
CAT = re.compile(r"Egyptian cat|tabby|tiger cat", re.IGNORECASE)
TIMEOUT_MS = 30_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


# ---- the server ---------------------------------------------------------------------


class _Server:
    """The app under uvicorn on a free 127.0.0.1 port, in a background thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.origin = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self, timeout: float = 240) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise RuntimeError(f"the server stopped while starting ({last})")
            try:
                with urllib.request.urlopen(self.origin + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        return self
            except urllib.error.HTTPError as exc:
                last = f"/readyz {exc.code}: {exc.read()[:300]!r}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"not ready after {timeout:.0f} s: {last}")

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.origin + path, timeout=10) as r:
            return json.load(r)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()


def _serve(weights_dir: Path, **settings) -> Iterator[_Server]:
    from app.api import create_app
    from app.settings import Settings

    app = create_app(Settings(weights_dir=weights_dir, threads=1, decode_threads=1, **settings))
    server = _Server(app).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(weights_dir: Path) -> Iterator[_Server]:
    yield from _serve(weights_dir)


@pytest.fixture(scope="module")
def keyed_server(weights_dir: Path) -> Iterator[_Server]:
    """A second server that needs an API key, with one small variant."""
    yield from _serve(weights_dir, api_key="s3cret-key", variants=["v1-0.25-128"])


# ---- the browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _unavailable(
            f"{CHROMIUM} is missing: `apt-get install -y chromium` (Debian's; never "
            "`playwright install`), or set CHROMIUM=/path/to/chromium"
        )
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Recorder:
    """Everything one page asked for, what failed, and what the console complained about."""

    origin: str
    requests: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def external(self) -> list[str]:
        own = (self.origin + "/", "data:", "blob:")
        return [u for u in self.requests if not (u == self.origin or u.startswith(own))]


@pytest.fixture
def open_page(browser):
    """``open_page(origin, path, **context options) -> (page, recorder)``."""
    contexts = []

    def _open(origin: str, path: str, **options):
        options.setdefault("viewport", {"width": 1280, "height": 860})
        context = browser.new_context(service_workers="block", **options)
        contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        rec = Recorder(origin)
        page.on("request", lambda r: rec.requests.append(r.url))
        page.on("requestfailed", lambda r: rec.failures.append(f"{r.url}: {r.failure}"))
        page.on(
            "response",
            lambda r: rec.failures.append(f"{r.url}: HTTP {r.status}") if r.status >= 400 else None,
        )
        page.on("pageerror", lambda e: rec.errors.append(f"page error: {e}"))
        page.on("console", lambda m: rec.errors.append(m.text) if m.type == "error" else None)
        page.goto(origin + path, wait_until="load")
        return page, rec

    yield _open
    for context in contexts:
        context.close()


def _shot(page, name: str, **options) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path), **options)
    return path


def _assert_clean(rec: Recorder) -> None:
    assert rec.requests, "the recorder saw no request at all"
    assert not rec.external(), f"requests left the server: {rec.external()}"
    assert not rec.failures, rec.failures
    assert not rec.errors, rec.errors


# ---- docs ---------------------------------------------------------------------------


def test_swagger_ui_renders_offline(server, open_page) -> None:
    from playwright.sync_api import expect

    page, rec = open_page(server.origin, "/docs")
    predict = page.locator('.opblock-summary-path[data-path="/predict"]')
    expect(predict).to_be_visible()
    expect(page.locator(".opblock-summary-path[data-path='/models']")).to_be_visible()
    title = page.get_by_role("heading", level=1)
    expect(title).to_contain_text("MobileNet classification service")
    page.wait_for_load_state("networkidle")
    _shot(page, "docs.png")
    _assert_clean(rec)
    assert f"{server.origin}/openapi.json" in rec.requests
    assert any("/static/vendor/swagger-ui/swagger-ui-bundle.js" in u for u in rec.requests)


def test_redoc_renders_offline(server, open_page) -> None:
    from playwright.sync_api import expect

    page, rec = open_page(server.origin, "/redoc")
    expect(page.get_by_role("heading", name="Classify one image")).to_be_visible()
    expect(page.locator("h1").first).to_contain_text("MobileNet classification service")
    page.wait_for_load_state("networkidle")
    _shot(page, "redoc.png")
    _assert_clean(rec)
    assert f"{server.origin}/redoc/redoc.standalone.js" in rec.requests


def test_docs_html_names_no_external_url(server) -> None:
    for path in ("/docs", "/redoc", "/"):
        with urllib.request.urlopen(server.origin + path, timeout=10) as r:
            html = r.read().decode()
            csp = r.headers["Content-Security-Policy"]
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", html), path
        assert "default-src 'self'" in csp, path
    # ReDoc's bundle hard-codes its logo on cdn.redoc.ly; the served copy must not.
    from app.api.ui import REDOC_CDN_LOGO, REDOC_JS

    assert REDOC_CDN_LOGO in REDOC_JS.read_text("utf-8"), "ReDoc changed: re-check app/api/ui.py"
    with urllib.request.urlopen(server.origin + "/redoc/redoc.standalone.js", timeout=10) as r:
        assert b"cdn.redoc.ly" not in r.read()


# ---- the classify page --------------------------------------------------------------


def _labels(page) -> list[str]:
    return page.locator("#predictions .label").all_inner_texts()


def test_page_classifies_with_default_and_chosen_model(server, open_page, images_dir) -> None:
    from playwright.sync_api import expect

    catalog = server.get_json("/models")
    page, rec = open_page(server.origin, "/")
    model = page.get_by_label("Model")
    expect(model).to_be_enabled()
    expect(model.locator("option")).to_have_count(1 + len(catalog["aliases"]))
    # No model: every loaded width × resolution is offered (issue 22: the server picks the
    # most accurate model that has it); "Automatic" is the default.
    width = page.get_by_label("Width × resolution")
    expect(width).to_be_enabled()
    expect(width).to_have_value("")
    values = width.locator("option").evaluate_all("os => os.map(o => o.value)")
    every = {(m["width"], m["resolution"]) for m in catalog["models"]}
    assert sorted((float(w), int(r)) for w, r in (v.split("@") for v in values if v)) == sorted(
        every
    )
    expect(page.locator("label[for=camera]")).to_be_hidden()  # no camera button on a desktop

    # Picking a file classifies it with the default (most accurate) variant.
    page.locator("#file").set_input_files(images_dir / "cat.bmp")
    expect(page.locator("#preview")).to_be_visible()
    expect(page.locator("#predictions li")).to_have_count(5)
    expect(page.locator("#predictions li").first.locator(".label")).to_have_text(CAT)
    expect(page.locator("#meta-variant")).to_contain_text(catalog["default"])
    expect(page.locator("#meta-latency")).to_contain_text(re.compile(r"ms server .* round-trip"))
    expect(page.locator("#status")).to_contain_text("Most likely")
    bar = page.locator("#predictions li").first.locator(".bar span")
    assert bar.bounding_box()["width"] > 20
    expect(page.locator("#error")).to_be_hidden()
    page.wait_for_timeout(450)  # let the bars finish growing before the screenshot
    _shot(page, "page.png")

    # A chosen model and width.
    model.select_option("v1")
    width = page.get_by_label("Width × resolution")
    expect(width).to_be_enabled()
    v1 = sorted((m["width"], m["resolution"]) for m in catalog["models"] if m["model"] == "v1")
    values = width.locator("option").evaluate_all("os => os.map(o => o.value)")
    offered = sorted((float(w), int(r)) for w, r in (v.split("@") for v in values if v))
    assert offered == v1
    width.select_option("0.25@128")
    page.get_by_role("button", name="Classify").click()
    expect(page.locator("#meta-variant")).to_contain_text("v1-0.25-128")
    expect(page.locator("#predictions li")).to_have_count(5)
    assert any(CAT.search(label) for label in _labels(page)), _labels(page)
    _assert_clean(rec)
    predicts = [u for u in rec.requests if "/predict" in u]
    assert predicts[-1].endswith("/predict?topk=5&model=v1&width=0.25&resolution=128"), predicts


def test_page_fits_a_phone(server, open_page, images_dir) -> None:
    from playwright.sync_api import expect

    page, rec = open_page(
        server.origin,
        "/",
        viewport={"width": 375, "height": 812},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        color_scheme="dark",
    )
    expect(page.get_by_label("Model")).to_be_enabled()
    expect(page.locator("label[for=camera]")).to_be_visible()  # coarse pointer: camera button
    assert page.locator("#camera").get_attribute("capture") == "environment"
    page.locator("#camera").set_input_files(images_dir / "cat.bmp")
    expect(page.locator("#predictions li").first.locator(".label")).to_have_text(CAT)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    page.wait_for_timeout(800)  # the page scrolls its results into view
    assert page.locator("#results").bounding_box()["y"] < 812 / 2, "results are off-screen"
    # Not full_page: Chromium drops the touch emulation while capturing a full page.
    _shot(page, "page-mobile-results.png")
    page.evaluate("window.scrollTo(0, 0)")
    _shot(page, "page-mobile.png")
    _assert_clean(rec)


def test_page_shows_the_servers_error(server, open_page, tmp_path) -> None:
    from playwright.sync_api import expect

    fake = tmp_path / "notes.jpg"
    fake.write_text("these are notes, not a JPEG\n")
    page, rec = open_page(server.origin, "/")
    expect(page.get_by_label("Model")).to_be_enabled()
    # Every control is reachable with the keyboard, and only visible ones take focus.
    focused = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert {"file", "model", "SUMMARY"} <= set(focused), focused
    assert "camera" not in focused, focused  # its button is hidden on a desktop
    assert focused.index("file") < focused.index("model"), focused
    page.locator("#file").set_input_files(fake)
    error = page.get_by_role("alert")
    expect(error).to_be_visible()
    expect(error).to_contain_text("unsupported format")
    expect(page.locator("#predictions li")).to_have_count(0)
    expect(page.locator("#meta")).to_be_hidden()
    expect(page.locator("#no-preview")).to_be_visible()  # no broken-image icon
    _shot(page, "page-error.png")
    assert not rec.external(), rec.external()
    assert [f for f in rec.failures if "HTTP 415" not in f] == []


def test_page_sends_the_api_key(keyed_server, open_page, images_dir) -> None:
    from playwright.sync_api import expect

    page, rec = open_page(keyed_server.origin, "/")
    expect(page.get_by_label("Model")).to_be_enabled()
    page.locator("#file").set_input_files(images_dir / "cat.bmp")
    expect(page.get_by_role("alert")).to_contain_text("API key")
    key = page.get_by_label(re.compile(r"^Key"))
    expect(key).to_be_visible()  # a 401 opens the API key section

    key.fill("s3cret-key")
    key.press("Enter")  # submits the form: keyboard only
    expect(page.locator("#meta-variant")).to_contain_text("v1-0.25-128")
    expect(page.get_by_role("alert")).to_be_hidden()

    page.reload()  # the key is remembered in this browser
    expect(page.get_by_label(re.compile(r"^Key"))).to_have_value("s3cret-key")
    assert not rec.external(), rec.external()


# ---- why and which width: the saliency overlay and the comparison table ---------------

HEAD = (260 / 512, 150 / 341)  # the cat's face in cat.bmp, as fractions of the image
CARPET = (150 / 512, 310 / 341)  # its lower body on the red carpet: little saliency there


def _alpha_at(page, fx: float, fy: float) -> int:
    """Alpha of the saliency canvas at a point given as fractions of the image."""
    return page.evaluate(
        """([fx, fy]) => {
            const c = document.getElementById("saliency-canvas");
            const x = Math.floor(fx * c.width), y = Math.floor(fy * c.height);
            return c.getContext("2d").getImageData(x, y, 1, 1).data[3];
        }""",
        [fx, fy],
    )


def test_page_shows_why_and_compares_every_variant(server, open_page, images_dir) -> None:
    from playwright.sync_api import expect

    catalog = server.get_json("/models")
    page, rec = open_page(server.origin, "/", viewport={"width": 1280, "height": 1200})
    toggle = page.get_by_label("Show why: saliency map")
    expect(page.get_by_label("Model")).to_be_enabled()
    expect(toggle).to_be_disabled()  # nothing to explain yet
    page.locator("#file").set_input_files(images_dir / "cat.bmp")
    expect(page.locator("#predictions li").first.locator(".label")).to_have_text(CAT)

    # The overlay: drawn over the preview, hottest on the cat's face.
    toggle.check()
    canvas = page.locator("#saliency-canvas")
    expect(canvas).to_be_visible()
    note = page.locator("#saliency-note")
    expect(note).to_contain_text("50 forward passes")
    expect(note).to_contain_text(CAT)
    box, img = canvas.bounding_box(), page.locator("#preview").bounding_box()
    for k in ("x", "y", "width", "height"):
        assert abs(box[k] - img[k]) <= 1, (k, box, img)
    head, carpet = _alpha_at(page, *HEAD), _alpha_at(page, *CARPET)
    assert head > carpet + 60, (head, carpet)
    assert 90 <= _alpha_at(page, 0.01, 0.5) <= 115  # outside the model's crop: dimmed (0.4)
    explains = [u for u in rec.requests if "/explain?" in u]
    assert explains and explains[-1].endswith("/explain?topk=5&format=json"), explains

    # The comparison: one row per loaded variant, cheapest first.
    page.get_by_role("button", name="Compare variants").click()
    rows = page.locator("#compare-rows tr")
    expect(rows).to_have_count(len(catalog["models"]))
    expect(page.locator("#compare-status")).to_contain_text(
        f"{len(catalog['models'])} of {len(catalog['models'])} variants answered"
    )
    names = rows.evaluate_all("rs => rs.map(r => r.dataset.variant)")
    assert sorted(names) == sorted(m["name"] for m in catalog["models"])
    from app.weights import SPECS_BY_NAME

    macs = [SPECS_BY_NAME[n].macs for n in names]
    assert macs == sorted(macs), names
    first_cells = rows.locator("td:nth-child(2)").all_inner_texts()
    assert sum(bool(CAT.search(t)) for t in first_cells) >= len(first_cells) - 1, first_cells
    accuracy = [float(t.split()[0]) for t in rows.locator("td:last-child").all_inner_texts()]
    assert len(accuracy) == len(names) and all(30 < a < 80 for a in accuracy), accuracy
    expect(page.locator("#compare-rows tr.current")).to_have_attribute(
        "data-variant", catalog["default"]
    )
    page.wait_for_timeout(450)  # the bars finish growing
    _shot(page, "page-explain.png", full_page=True)

    toggle.uncheck()
    expect(canvas).to_be_hidden()
    _assert_clean(rec)
    assert any(u.endswith("/predict/compare?topk=1") for u in rec.requests), rec.requests


def test_comparison_and_overlay_fit_a_phone(server, open_page, images_dir) -> None:
    from playwright.sync_api import expect

    page, rec = open_page(
        server.origin,
        "/",
        viewport={"width": 375, "height": 812},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    expect(page.get_by_label("Model")).to_be_enabled()
    page.locator("#file").set_input_files(images_dir / "cat.bmp")
    expect(page.locator("#predictions li").first.locator(".label")).to_have_text(CAT)
    page.get_by_label("Show why: saliency map").check()
    expect(page.locator("#saliency-canvas")).to_be_visible()
    page.get_by_role("button", name="Compare variants").click()
    expect(page.locator("#compare-rows tr")).to_have_count(
        len(server.get_json("/models")["models"])
    )
    expect(page.locator("#compare-table th.wide-only").first).to_be_hidden()  # MACs, params
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    page.locator("#compare").scroll_into_view_if_needed()
    _shot(page, "page-mobile-compare.png")
    _assert_clean(rec)


def test_overlay_waits_out_a_busy_variant(server, open_page, images_dir) -> None:
    """While another explain holds the variant, /explain answers 503 + Retry-After; the
    page says so, comes back when told to, and then draws the map."""
    from playwright.sync_api import expect

    from app.serving.explain import PLAN

    service = server.server.config.app.state.service
    page, rec = open_page(server.origin, "/")
    expect(page.get_by_label("Model")).to_be_enabled()
    page.locator("#file").set_input_files(images_dir / "cat.bmp")
    expect(page.locator("#predictions li").first.locator(".label")).to_have_text(CAT)
    busy = service.admit(service.resolve(), cost=PLAN.forwards, heavy=True)  # another explain
    busy.__enter__()
    release = threading.Timer(1.5, busy.__exit__, args=(None, None, None))
    release.start()
    try:
        page.get_by_label("Show why: saliency map").check()
        expect(page.locator("#saliency-note")).to_contain_text("busy; trying again")
        expect(page.locator("#saliency-canvas")).to_be_visible()
        expect(page.locator("#saliency-note")).to_contain_text("50 forward passes")
    finally:
        release.join()
    assert not rec.external(), rec.external()
    assert any("/explain?" in f and "HTTP 503" in f for f in rec.failures), rec.failures
    assert [f for f in rec.failures if "HTTP 503" not in f] == []
