"""Real-browser fixtures for the hosted connect page: headless Chromium (Debian's ``chromium``)
driven by Playwright, a credbroker server with verification on against the fake provider, and
an "app" on another origin that loads the real ``@nangohq/frontend`` 0.71.10 from
``tests/reference_sdk/node_modules`` (its published ESM ``dist/`` runs in browsers as is).

Without chromium, Playwright or the npm packages the tests skip, saying how to install them.
Screenshots of every page state go to ``test-artifacts/connect-page/`` (gitignored); the path is
printed at the end of the run.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from credbroker.app import RunningServer, start_server

CHROMIUM = Path(os.environ.get("CREDBROKER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[3]
SDK_DIST = REPO / "tests/reference_sdk/node_modules/@nangohq/frontend/dist"
ARTIFACTS = (
    Path(os.environ.get("CREDBROKER_TEST_ARTIFACTS", REPO / "test-artifacts")) / "connect-page"
)
_shots: list[Path] = []

APP_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Example app</title></head>
<body style="font-family: sans-serif; margin: 2rem">
<h1>Example app</h1><p>Your app's own page, on its own origin.</p>
<script type="module">
import Nango from "/sdk/index.js";
window.Nango = Nango;
window.events = [];
window.sdkLoaded = true;
</script>
</body></html>
"""


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"no chromium at {CHROMIUM}: apt-get install chromium (or set CREDBROKER_CHROMIUM)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is missing: pip install -e '.[dev]'"
    if not (SDK_DIST / "index.js").exists():
        return "the reference SDK is not installed: (cd tests/reference_sdk && npm ci)"
    return None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _shots:
        terminalreporter.write_line(f"connect page screenshots ({len(_shots)}): {ARTIFACTS}")


class _AppHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/app.html":
            body, kind = APP_PAGE, "text/html; charset=utf-8"
        elif re.fullmatch(r"/sdk/[A-Za-z0-9_.]+\.js", path) and (SDK_DIST / path[5:]).is_file():
            body, kind = (SDK_DIST / path[5:]).read_bytes(), "text/javascript"
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class App:
    """An app's frontend on its own origin (another port of 127.0.0.1)."""

    origin: str
    server: ThreadingHTTPServer


def _start_app() -> tuple[App, threading.Thread]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AppHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    return App(f"http://127.0.0.1:{server.server_address[1]}", server), thread


@pytest.fixture(scope="session")
def apps() -> Iterator[tuple[App, App]]:
    """Two app origins: the first may embed the connect page, the second may not."""
    reason = _missing()
    if reason and os.environ.get("CREDBROKER_REQUIRE_BROWSER"):
        pytest.fail(f"browser tests required (CREDBROKER_REQUIRE_BROWSER) but {reason}")
    if reason:
        pytest.skip(reason)
    first, t1 = _start_app()
    second, t2 = _start_app()
    yield first, second
    for app, thread in ((first, t1), (second, t2)):
        app.server.shutdown()
        app.server.server_close()
        thread.join(timeout=5)


@pytest_asyncio.fixture(scope="session")
async def page_server(
    apps: tuple[App, App], verify_settings: Any, vbackend: Any, keyring: Any, test_catalog: Any
) -> AsyncIterator[RunningServer]:
    """credbroker with verification on (fake provider), the first app's origin allowed."""
    settings = verify_settings(connect_allowed_origins=apps[0].origin)
    running = await start_server(settings, vbackend, keyring, catalog=test_catalog)
    yield running
    await running.stop(0)


@pytest_asyncio.fixture(scope="session")
async def browser(apps: tuple[App, App]) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture
async def context(browser: Any) -> AsyncIterator[Any]:
    opened = await browser.new_context(viewport={"width": 760, "height": 640})
    yield opened
    await opened.close()


class Shots:
    """Writes screenshots named after the test and the page state."""

    def __init__(self, test: str) -> None:
        self._test = re.sub(r"[^A-Za-z0-9_-]+", "_", test)

    async def take(self, page: Any, state: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self._test}--{state}.png"
        await page.screenshot(path=str(path), full_page=True)
        _shots.append(path)
        return path


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    return Shots(request.node.name.removeprefix("test_"))
