"""What the connect-page end-to-end tests need besides servers and a webhook receiver: headless
Chromium (Debian's ``chromium``, driven by Playwright, launched like the browser tests of
``tests/verification/web``) and a stand-in provider on 127.0.0.1 that a generic ``api-key``
integration verifies keys with.

Without chromium or Playwright the tests skip, saying how to install them; with
``CREDBROKER_REQUIRE_BROWSER`` set (CI) they fail instead.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

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


def require_browser() -> None:
    """Skips (fails under ``CREDBROKER_REQUIRE_BROWSER``) without chromium or Playwright."""
    reason = None
    if not CHROMIUM.exists():
        reason = f"no chromium at {CHROMIUM}: apt-get install chromium (or set CREDBROKER_CHROMIUM)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            reason = "Playwright for Python is missing: pip install -e '.[dev]'"
    if reason and os.environ.get("CREDBROKER_REQUIRE_BROWSER"):
        pytest.fail(f"browser tests required (CREDBROKER_REQUIRE_BROWSER) but {reason}")
    if reason:
        pytest.skip(reason)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    provider: StandInProvider

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A killed server leaves a broken pipe behind: not interesting."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self.server.provider.handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StandInProvider:
    """``http://127.0.0.1:<port>/check`` answers 200 to ``Authorization: Bearer <key>`` for
    accepted keys, 401 otherwise; requests with a held key wait until :meth:`release`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accepted: set[str] = set()
        self._held: set[str] = set()
        self._release = threading.Event()
        self._arrivals: Counter[str] = Counter()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.provider = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def accept(self, key: str) -> None:
        with self._lock:
            self._accepted.add(key)

    def hold(self, key: str) -> None:
        with self._lock:
            self._held.add(key)

    def release(self) -> None:
        with self._lock:
            self._held.clear()
            self._release.set()
            self._release = threading.Event()

    def arrivals(self, key: str) -> int:
        """Requests that presented ``key`` (answered or still held)."""
        with self._lock:
            return self._arrivals[key]

    def handle(self, request: _Handler) -> None:
        authorization = request.headers.get("authorization", "")
        key = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else ""
        with self._lock:
            self._arrivals[key] += 1
            held, release = key in self._held, self._release
            accepted = key in self._accepted
        if held:
            release.wait(60)
        status = 200 if accepted and request.path == "/check" else 401
        body = b'{"ok": true}' if status == 200 else b'{"error": "unauthorized"}'
        request.send_response(status)
        request.send_header("content-type", "application/json")
        request.send_header("content-length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
