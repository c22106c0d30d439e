"""The HTTP listener: uvicorn serving an ASGI app inside the running event loop (the gRPC
server's), on a socket bound here so that ``serve --workers`` processes share the port with
SO_REUSEPORT exactly like the gRPC port.

uvicorn's own access log is off: URLs carry connect-session tokens in their query strings, so
no request line is ever logged (calls are logged by the admission path, by route name only).
uvicorn's signal handling is not used either: the server's own SIGTERM/SIGINT handling drains
both listeners.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

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
        limit_concurrency: int,
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
            limit_concurrency=limit_concurrency,
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
