"""The HTTP listener: uvicorn serving an ASGI app inside the running event loop (the gRPC
server's), on a socket bound here so that ``serve --workers`` processes share the port with
SO_REUSEPORT exactly like the gRPC port.

uvicorn's own access log is off: URLs carry connect-session tokens in their query strings, so
no request line is ever logged (calls are logged by the admission path, by route name only).
uvicorn's signal handling is not used either: the server's own SIGTERM/SIGINT handling drains
both listeners.

No client can hold the listener (issue 9, finding 3, on this port): a connection must complete
each request's headers within the first-message bound of its opening or of its previous
response, and in at most ``MAX_HEADER_BYTES``, or it is closed (:class:`BoundedHttpProtocol`);
uvicorn's ``limit_concurrency`` is not used, since it counts open connections, so idle ones
would turn every request away with 503. What a request may hold once its headers are in is the
admission path's business (``credbroker.rest.endpoints``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from credbroker.bootstrap import StartupError


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def bind_socket(address: str, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on ``address``; SO_REUSEPORT when several processes share it."""
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise StartupError(f"cannot listen on {address} (in use or not permitted)") from None
    return sock


def tls_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """TLS 1.2+ with the server's certificate; client certificates required with a CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return context


MAX_HEADER_BYTES = 16 * 1024  # as gRPC's hard metadata limit


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit on request headers. The
    deadline is armed when the connection opens, and again once a request has been read whole
    and answered; only complete headers disarm it (partial bytes do not, unlike uvicorn's
    keep-alive timer)."""

    header_timeout = 5.0  # replaced per server (see HttpServer)
    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0
    _reading_request = False  # from a request's first byte to the end of its body

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        awaiting = self._header_timer is not None
        super().data_received(data)
        if awaiting and self._header_timer is not None:  # still no complete headers
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._close_waiting()

    def on_message_begin(self) -> None:
        self._reading_request = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading_request = False
        super().on_message_complete()
        if self.cycle is not None and self.cycle.response_complete:
            self._arm_header_timer()  # answered before its body was in (e.g. refused)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._reading_request and not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(self.header_timeout, self._close_waiting)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _close_waiting(self) -> None:
        """Closes the connection unless a request on it is being answered."""
        self._disarm_header_timer()
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()


class HttpServer:
    """uvicorn in the current event loop: :meth:`start` binds and serves, :meth:`stop` stops
    accepting, lets in-flight requests finish for ``grace`` seconds, then closes."""

    def __init__(
        self,
        app: ASGIApp,
        address: str,
        *,
        reuse_port: bool,
        tls: ssl.SSLContext | None,
        header_timeout: float,
    ) -> None:
        self.app = app
        """The served application (the OpenAPI test lists its routes)."""
        self._address = address
        self._reuse_port = reuse_port
        self._tls = tls
        self._socket: socket.socket | None = None
        self._config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            proxy_headers=False,
            server_header=False,
            date_header=False,
            http=type("HttpProtocol", (BoundedHttpProtocol,), {"header_timeout": header_timeout}),
            timeout_keep_alive=5,
            ssl_context_factory=self._ssl_context if tls is not None else None,
        )
        self._server = uvicorn.Server(self._config)
        self.port = 0

    def _ssl_context(self, _config: Any, _default: Any) -> ssl.SSLContext:
        assert self._tls is not None
        return self._tls

    async def start(self) -> int:
        # Defence in depth: even if some configuration re-enabled it, the access logger
        # (request lines with query strings) never emits.
        logging.getLogger("uvicorn.access").disabled = True
        self._socket = bind_socket(self._address, reuse_port=self._reuse_port)
        self.port = int(self._socket.getsockname()[1])
        self._config.load()
        server = self._server
        server.lifespan = self._config.lifespan_class(self._config)
        await server.startup(sockets=[self._socket])
        # No uvicorn main loop (it only refreshes the Date header, which is off): headers once.
        server.server_state.default_headers = list(self._config.encoded_headers)
        return self.port

    async def stop(self, grace: float) -> None:
        if not self._server.started:
            if self._socket is not None:
                self._socket.close()
            return
        server = self._server
        if grace > 0:
            self._config.timeout_graceful_shutdown = math.ceil(grace)
        else:  # no grace: cancel what runs and drop every connection now
            server.force_exit = True
            for task in list(server.server_state.tasks):
                task.cancel()
            for connection in list(server.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.close()
        await server.shutdown(sockets=[self._socket] if self._socket else None)
        self._server.started = False
