"""The HTTP adapter of the admission path: :meth:`HttpRoutes.route` turns a handler into a
Starlette route whose every call goes through :meth:`credbroker.admission.Admission.run`
(built once per route: its :class:`~credbroker.admission.Operation`, metric children and
token extraction).

A handler takes an :class:`HttpCall` and returns a :class:`Reply`; it reads the caller with
:func:`credbroker.admission.current_principal` and raises domain errors, which become the
reference error body (``credbroker.rest.errors``). As on the gRPC port, a request is admitted
on its headers: one without a valid credential is refused before its body is read; the body is
then read (up to a limit) within the first-message bound of the admission limits
(``CREDBROKER_FIRST_MESSAGE_TIMEOUT``), and JSON is decoded after authentication
(``decode=json_object``), so unauthenticated callers learn nothing about parsing.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from credbroker.admission import (
    Admission,
    Audit,
    Credential,
    ErrorCode,
    Failure,
    Operation,
    Refused,
    no_created_id,
    no_resources,
)
from credbroker.admission.audit import CreatedId, ResourceIds
from credbroker.domain.errors import InvalidArgumentError
from credbroker.domain.models import Scope
from credbroker.rest.errors import error_response

SESSION_TOKEN_PARAM = "connect_session_token"  # noqa: S105 - a parameter name


@dataclass(eq=False)
class HttpCall:
    """One HTTP request as a handler sees it; ``json`` is set by ``decode=json_object``."""

    request: Request
    body: bytes
    json: Any = None

    @property
    def path_params(self) -> Mapping[str, Any]:
        return self.request.path_params

    @property
    def query(self) -> QueryParams:
        return self.request.query_params

    @property
    def origin(self) -> str | None:
        return self.request.headers.get("origin")


@dataclass(frozen=True)
class Reply:
    """What a handler answers: a status, a JSON body (None for no body) and extra headers."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    response: Response | None = None
    """A ready response (e.g. an HTML page) instead of ``body``."""


RouteHandler = Callable[[HttpCall], Awaitable[Reply]]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_object(call: HttpCall) -> HttpCall:
    """Decodes the body as one JSON object into ``call.json`` (INVALID_ARGUMENT otherwise)."""
    content_type = call.request.headers.get("content-type", "application/json")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise InvalidArgumentError.single("body", "must be application/json")
    try:
        document = json.loads(call.body or b"{}", parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidArgumentError.single("body", "is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidArgumentError.single("body", "must be a JSON object")
    call.json = document
    return call


def no_body(call: HttpCall) -> HttpCall:
    return call


def _authorization(request: Request) -> tuple[str | None, str]:
    """(bearer token, reason if there is none) from the single Authorization header."""
    values = request.headers.getlist("authorization")
    if not values:
        return None, "MISSING_AUTH_HEADER"
    scheme, _, token = values[0].partition(" ")
    if len(values) != 1 or scheme.lower() != "bearer" or not token or " " in token:
        return None, "MALFORMED_AUTH_HEADER"
    return token, ""


def session_token(request: Request) -> tuple[str | None, str]:
    """A connect-session token from ``Authorization: Bearer`` or the ``connect_session_token``
    query parameter (what the reference frontend SDK sends); two different ones are refused."""
    header, reason = _authorization(request)
    if reason == "MALFORMED_AUTH_HEADER":
        return None, reason
    candidates = set(request.query_params.getlist(SESSION_TOKEN_PARAM))
    if header is not None:
        candidates.add(header)
    if len(candidates) > 1:
        return None, "MALFORMED_AUTH_HEADER"
    if not candidates:
        return None, "MISSING_AUTH_HEADER"
    return candidates.pop(), ""


def _too_large(limit: int) -> Failure:
    return Failure(
        ErrorCode.RESOURCE_EXHAUSTED,
        f"request body larger than {limit} bytes",
        "PAYLOAD_TOO_LARGE",
        http_status=413,
    )


_BODY_CUT_SHORT = Failure(
    ErrorCode.INVALID_ARGUMENT, "the request body ended early", "INVALID_ARGUMENT"
)


def _declared_too_large(request: Request, limit: int) -> bool:
    declared = request.headers.get("content-length")
    return declared is not None and (not declared.isdigit() or int(declared) > limit)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None if it is larger than ``limit`` bytes (read no further than that)."""
    headers = request.headers
    declared = headers.get("content-length")
    if declared is None and "transfer-encoding" not in headers:
        return b""  # no framing, no body (RFC 9112 6.3): nothing to wait for (most GETs)
    if _declared_too_large(request, limit):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def render(reply: Reply) -> Response:
    if reply.response is not None:
        for name, value in reply.headers.items():
            reply.response.headers[name] = value
        return reply.response
    if reply.body is None:
        return Response(status_code=reply.status, headers=dict(reply.headers))
    return JSONResponse(reply.body, status_code=reply.status, headers=dict(reply.headers))


class HttpRoutes:
    """Builds admitted routes for one server (``max_body_bytes``: the largest request body)."""

    def __init__(self, admission: Admission, *, max_body_bytes: int) -> None:
        self._admission = admission
        self._max_body = max_body_bytes

    def route(
        self,
        method: str,
        path: str,
        handler: RouteHandler,
        *,
        credential: Credential,
        scope: Scope | None = None,
        any_scope: bool = False,
        audit: Audit = Audit.NONE,
        decode: Callable[[HttpCall], HttpCall] = no_body,
        resources: ResourceIds = no_resources,
        created: CreatedId = no_created_id,
        name: str | None = None,
        error_headers: Callable[[HttpCall], Awaitable[Mapping[str, str]]] | None = None,
    ) -> Route:
        """A route for ``method path``. The operation is named ``"METHOD /path/{param}"`` in
        metrics, logs and audit records (never the concrete URL: query strings carry tokens).
        ``error_headers`` adds headers to error responses too (e.g. CORS)."""
        op = Operation(
            name or f"{method} {path}",
            credential,
            scope=scope,
            any_scope=any_scope,
            audit=audit,
            resources=resources,
            created=created,
            decode=decode,
        )
        run = self._admission.run
        limit = self._max_body
        extract = session_token if credential is Credential.SESSION_TOKEN else _authorization

        async def invoke(call: HttpCall, _: Any) -> Reply:
            return await handler(call)

        async def receive(call: HttpCall, _: Any) -> HttpCall:
            """The body, once the caller is admitted (within the first-message bound)."""
            try:
                body = await read_body(call.request, limit)
            except ClientDisconnect:
                raise Refused(_BODY_CUT_SHORT) from None
            if body is None:
                raise Refused(_too_large(limit))
            call.body = body
            return call

        async def endpoint(request: Request) -> Response:
            if _declared_too_large(request, limit):  # refused before anything, as before
                return error_response(_too_large(limit))
            call = HttpCall(request, b"")
            token, absent_reason = (None, "") if credential is Credential.NONE else extract(request)
            try:
                reply: Reply = await run(
                    op,
                    token,
                    call,
                    call,
                    invoke,
                    absent_reason=absent_reason,
                    receive=receive,
                    peer=request.client.host if request.client else "",
                )
            except Refused as refused:
                headers = dict(await error_headers(call)) if error_headers is not None else None
                return error_response(refused.failure, headers)
            return render(reply)

        return Route(path, endpoint, methods=[method], name=op.name)

    @staticmethod
    def unadmitted(
        method: str, path: str, endpoint: Callable[[Request], Awaitable[Response]]
    ) -> Route:
        """A route outside admission, for what precedes it (CORS preflights): it must not
        read secrets or change anything."""
        return Route(path, endpoint, methods=[method], name=f"{method} {path}")
