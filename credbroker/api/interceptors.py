"""The server interceptor every RPC passes through: request id, authentication, scope check,
server-side deadline and the last-resort error mapping.

Authentication runs inside the wrapped handler (not in ``intercept_service``) so a rejection can
carry a rich ``google.rpc.Status`` and always matches the method's cardinality.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
import structlog

from credbroker.api import errors
from credbroker.domain.errors import DomainError
from credbroker.domain.models import Principal, Scope

log = structlog.get_logger("credbroker.api")

# Methods callable without a key: exact full names only (no prefixes, no case folding).
UNAUTHENTICATED_METHODS = frozenset(
    {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/List"}
)
# Methods any valid key may call, whatever its scopes.
ANY_SCOPE_METHODS = frozenset(
    {
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    }
)

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("credbroker_principal")

Authenticator = Callable[[str], Awaitable[Principal | None]]


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


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        authenticate: Authenticator,
        required_scopes: Mapping[str, Scope],
        *,
        max_rpc_seconds: float,
    ) -> None:
        self._authenticate = authenticate
        self._required_scopes = required_scopes
        self._max_rpc_seconds = max_rpc_seconds

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method in UNAUTHENTICATED_METHODS:
            return handler
        if method not in self._required_scopes and method not in ANY_SCOPE_METHODS:
            # A registered method without a scope entry is a programming error: deny it.
            log.error("method has no scope; denying", method=method)
            scope = None
        else:
            scope = self._required_scopes.get(method)
        wrapped: grpc.RpcMethodHandler[Any, Any] = self._wrap(handler, method, scope)
        return wrapped

    async def _admit(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, scope: Scope | None
    ) -> None:
        """Authenticates and authorizes the caller, or aborts the RPC."""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=uuid.uuid4().hex[:16], method=method)
        token = bearer_token(context.invocation_metadata())
        principal = await self._authenticate(token) if token is not None else None
        if principal is None:
            log.info("rpc rejected", code="UNAUTHENTICATED")
            await errors.abort(context, errors.unauthenticated_status())
        assert principal is not None
        structlog.contextvars.bind_contextvars(
            key_id=principal.key_id, environment=principal.environment_name
        )
        if method not in ANY_SCOPE_METHODS and (scope is None or scope not in principal.scopes):
            scope_name = scope.value if scope else "none"
            log.info("rpc rejected", code="PERMISSION_DENIED", scope=scope_name)
            await errors.abort(context, errors.permission_denied_status(scope_name))
        _principal.set(principal)

    async def _fail(self, context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> None:
        """Ends the RPC for an exception raised by the handler; never sends exception text."""
        if isinstance(error, DomainError):
            status = errors.status_for_domain_error(error)
            log.info(
                "rpc failed",
                code=grpc.StatusCode(errors.status_code_for(error)).name,
                reason=error.reason,
            )
        elif isinstance(error, TimeoutError):
            status = errors.deadline_status()
            log.warning("rpc exceeded the server deadline")
        else:
            request_id = structlog.contextvars.get_contextvars().get("request_id", "?")
            log.error("unexpected error", error_type=type(error).__name__, exc_info=error)
            status = errors.internal_status(str(request_id))
        await errors.abort(context, status)

    def _deadline(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        remaining = context.time_remaining()
        return self._max_rpc_seconds if remaining is None else min(remaining, self._max_rpc_seconds)

    def _wrap(self, handler: Any, method: str, scope: Scope | None) -> Any:
        """A copy of ``handler`` (a grpc RpcMethodHandler namedtuple) whose behavior admits the
        caller first and maps failures; same cardinality and serializers."""
        if handler.response_streaming:
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream

            async def streaming(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                try:
                    await self._admit(context, method, scope)
                    async for response in behavior(request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await self._fail(context, error)

            field = "stream_stream" if handler.request_streaming else "unary_stream"
            return handler._replace(**{field: streaming})

        behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                await self._admit(context, method, scope)
                async with asyncio.timeout(self._deadline(context)):
                    return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await self._fail(context, error)

        field = "stream_unary" if handler.request_streaming else "unary_unary"
        return handler._replace(**{field: unary})
