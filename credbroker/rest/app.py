"""The ASGI application: every route group, JSON errors for unknown routes and methods, and
headers every response carries (``Cache-Control: no-store`` first: tokens and credentials pass
through these responses, so nothing may be cached by browsers or proxies)."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from credbroker.admission import ErrorCode, Failure
from credbroker.rest.errors import error_response

SECURITY_HEADERS = (
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
_OVERRIDDEN = {name for name, _ in SECURITY_HEADERS}


class SecurityHeaders:
    """Pure ASGI middleware (no per-request objects beyond the header list): sets
    :data:`SECURITY_HEADERS` on every response, replacing any value a handler chose."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0] not in _OVERRIDDEN]
                headers.extend(SECURITY_HEADERS)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


_ROUTE_FAILURES = {
    404: Failure(ErrorCode.NOT_FOUND, "no such route", "UNKNOWN_ROUTE"),
    405: Failure(ErrorCode.NOT_FOUND, "method not allowed on this route", "METHOD_NOT_ALLOWED"),
}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    failure = _ROUTE_FAILURES.get(
        exc.status_code, Failure(ErrorCode.INVALID_ARGUMENT, "bad request", "INVALID_ARGUMENT")
    )
    response = error_response(failure, dict(exc.headers or {}))
    response.status_code = exc.status_code
    return response


def build_app(routes: Sequence[BaseRoute]) -> ASGIApp:
    app = Starlette(routes=list(routes), exception_handlers={HTTPException: _http_error})
    return SecurityHeaders(app)
