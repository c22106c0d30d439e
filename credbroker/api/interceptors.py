"""The server interceptor every RPC passes through: request id, authentication, scope check,
audit, server-side deadline and the last-resort error mapping.

Authentication runs inside the wrapped handler (not in ``intercept_service``) so a rejection can
carry a rich ``google.rpc.Status`` and always matches the method's cardinality.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
import structlog
from google.rpc import status_pb2

from credbroker import metrics
from credbroker.api import errors
from credbroker.api.audit import Auditor
from credbroker.domain.errors import DomainError, InvalidArgumentError
from credbroker.domain.models import Principal, Scope

log = structlog.get_logger("credbroker.api")

# Methods callable without a key: exact full names only (no prefixes, no case folding).
UNAUTHENTICATED_METHODS = frozenset(
    {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/List"}
)
# Methods any valid key may call, whatever its scopes.
ANY_SCOPE_METHODS = frozenset({"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"})

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("credbroker_principal")

Authenticator = Callable[[str], Awaitable[Principal | None]]
Context = grpc.aio.ServicerContext[Any, Any]


def current_principal() -> Principal:
    """The caller of the current RPC (set by :class:`ServerInterceptor` before the handler runs)."""
    return _principal.get()


def bearer_token(metadata: Any) -> str | None:
    """The token of the single ``authorization: Bearer <token>`` entry; None if absent,
    duplicated or malformed. Never ``dict(metadata)``: that would let the last duplicate win."""
    values = [value for key, value in (metadata or ()) if key == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


class _Rejected(Exception):
    """Ends the call with ``status`` (an expected outcome, not an error)."""

    def __init__(self, status: status_pb2.Status) -> None:
        self.status = status


_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def _code_name(status: status_pb2.Status) -> str:
    """``NOT_FOUND`` for a status with code 5: the outcome recorded in audit and metrics."""
    return _CODES_BY_VALUE[status.code].name


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        authenticate: Authenticator,
        required_scopes: Mapping[str, Scope],
        auditor: Auditor,
        *,
        max_rpc_seconds: float,
    ) -> None:
        self._authenticate = authenticate
        self._required_scopes = required_scopes
        self._auditor = auditor
        self._max_rpc_seconds = max_rpc_seconds
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        # Registered handlers are fixed per method, so each is wrapped once, not per call.
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped: grpc.RpcMethodHandler[Any, Any] = self._wrap(
            handler, method, exempt=method in UNAUTHENTICATED_METHODS
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    async def _authenticated(self, context: Context) -> Principal:
        """The caller behind the call's secret key; raises _Rejected if there is none."""
        token = bearer_token(context.invocation_metadata())
        principal = await self._authenticate(token) if token is not None else None
        if principal is None:
            log.info("rpc rejected", code="UNAUTHENTICATED")
            raise _Rejected(errors.unauthenticated_status())
        structlog.contextvars.bind_contextvars(
            key_id=principal.key_id, environment=principal.environment_name
        )
        return principal

    def _authorize(self, principal: Principal, method: str) -> None:
        """Checks the method's scope; raises _Rejected if the key lacks it."""
        if method not in ANY_SCOPE_METHODS:
            scope = self._required_scopes.get(method)
            if scope is None or scope not in principal.scopes:
                # A registered method missing from the scope table is denied, never allowed.
                scope_name = scope.value if scope else "none"
                log.info("rpc rejected", code="PERMISSION_DENIED", scope=scope_name)
                raise _Rejected(errors.permission_denied_status(scope_name))
        _principal.set(principal)

    def _status_for(self, error: Exception, request_id: str) -> status_pb2.Status:
        """The status ending a failed call; never carries exception text."""
        if isinstance(error, _Rejected):
            return error.status
        if isinstance(error, DomainError):
            log.info("rpc failed", code=errors.status_code_for(error).name, reason=error.reason)
            return errors.status_for_domain_error(error)
        if isinstance(error, TimeoutError):
            log.warning("rpc exceeded the server deadline")
            return errors.deadline_status()
        if isinstance(error, NotImplementedError):  # e.g. grpc.health.v1.Health/List
            return errors.unimplemented_status()
        log.error("unexpected error", error_type=type(error).__name__, exc_info=error)
        return errors.internal_status(request_id)

    def _deadline(self, context: Context) -> float:
        remaining = context.time_remaining()
        return self._max_rpc_seconds if remaining is None else min(remaining, self._max_rpc_seconds)

    def _wrap(self, handler: Any, method: str, *, exempt: bool) -> Any:
        """A copy of ``handler`` (a grpc RpcMethodHandler namedtuple) whose behavior admits the
        caller first (unless ``exempt``) and maps failures; same cardinality and serializers.
        Its request parser never raises: an unparsable request reaches the behavior as
        ``UNDECODABLE`` and is refused there, after authentication, with INVALID_ARGUMENT."""
        handler = handler._replace(request_deserializer=_tolerant(handler.request_deserializer))
        if handler.response_streaming:
            return self._wrap_streaming(handler, method, exempt)
        behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary

        async def unary(request: Any, context: Context) -> Any:
            request_id = _start_request(method)
            principal: Principal | None = None
            event_id: int | None = None
            started = time.perf_counter()
            code = "OK"
            try:
                async with asyncio.timeout(self._deadline(context)):
                    if exempt:
                        return await behavior(_checked(request), context)
                    principal = await self._authenticated(context)
                    self._authorize(principal, method)
                    request = _checked(request)
                    event_id = await self._auditor.before(request_id, principal, method, request)
                    response = await behavior(request, context)
                    await self._auditor.succeeded(
                        event_id, request_id, principal, method, request, response
                    )
                    return response
            except grpc.aio.AbortError:
                raise
            except Exception as error:  # noqa: BLE001 - last-resort mapping
                status = self._status_for(error, request_id)
                code = _code_name(status)
                if principal is not None:
                    await self._auditor.failed(
                        event_id, request_id, principal, method, request, code
                    )
                await errors.abort(context, status)
            finally:
                metrics.RPCS.labels(method, code).inc()
                metrics.RPC_SECONDS.labels(method).observe(time.perf_counter() - started)

        field = "stream_unary" if handler.request_streaming else "unary_unary"
        return handler._replace(**{field: unary})

    def _wrap_streaming(self, handler: Any, method: str, exempt: bool) -> Any:
        behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream

        async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            request_id = _start_request(method)
            try:
                if not exempt:
                    self._authorize(await self._authenticated(context), method)
                request = (
                    _checked_stream(request) if handler.request_streaming else _checked(request)
                )
                result = behavior(request, context)
                if inspect.isawaitable(result):  # a handler that streams with context.write()
                    await result
                    return
                async for response in result:
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as error:  # noqa: BLE001 - last-resort mapping
                await errors.abort(context, self._status_for(error, request_id))

        field = "stream_stream" if handler.request_streaming else "unary_stream"
        return handler._replace(**{field: streaming})


class _Undecodable:
    """Stands for a request message that failed to parse."""


UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - any parse failure is refused later, after auth
            return UNDECODABLE

    return parse


def _checked(request: Any) -> Any:
    if request is UNDECODABLE:
        raise InvalidArgumentError.single("request", "is not a valid message for this method")
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _checked(request)


def _start_request(method: str) -> str:
    request_id = os.urandom(8).hex()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id, method=method)
    return request_id
