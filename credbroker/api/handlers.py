"""The gRPC adapter of the admission path: every servicer is registered through
:class:`GrpcRegistry`, which wraps each of its method handlers once, at registration, so that each
call goes through :meth:`credbroker.admission.Admission.run` (no grpc interceptor, nothing built
per call). A wrapped handler keeps the method's cardinality and serializers; its request parser
never raises: an unparsable request reaches admission as ``UNDECODABLE`` and is refused there,
after authentication, with INVALID_ARGUMENT.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import grpc

from credbroker.admission import (
    Admission,
    Credential,
    Operation,
    Refused,
    failure_for,
    start_request,
)
from credbroker.admission.limits import aged
from credbroker.api import errors
from credbroker.api.audit import audit_rule, created_connection_id, resource_ids_of
from credbroker.domain.errors import InvalidArgumentError
from credbroker.domain.models import Scope

# Methods callable without a key: exact full names only (no prefixes, no case folding).
UNAUTHENTICATED_METHODS = frozenset(
    {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/List"}
)
# Methods any valid key may call, whatever its scopes.
ANY_SCOPE_METHODS = frozenset({"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"})

Context = grpc.aio.ServicerContext[Any, Any]
AddToServer = Callable[[Any, Any], None]


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


async def _read_message(_requests: Any, context: Context) -> Any:
    """The one message of a unary call served as request-streaming. ``context.read()`` rather
    than the request iterator: grpc builds that as an async generator (and asyncio tracks every
    one in a WeakSet), which costs more than the read itself. Admission bounds the wait."""
    message = await context.read()
    if message is grpc.aio.EOF:
        raise InvalidArgumentError.single("request", "is missing (no message)")
    return message


class _Recorder:
    """Stands in for the server while a generated ``add_*_to_server`` runs, to learn its
    method handlers."""

    def __init__(self) -> None:
        self.services: dict[str, Mapping[str, Any]] = {}
        self.generic = 0

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        self.generic += 1  # the same handlers also arrive through the registered form below

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        self.services[service] = handlers


class GrpcRegistry(grpc.GenericRpcHandler):
    """Registers servicers on ``server`` with every method handler admitted by ``admission``;
    ``required_scopes`` maps full method names to their scope (absent: denied).

    The server knows one generic handler, this registry, which finds every method in one dict;
    no method is registered with grpc (``add_registered_method_handlers``): grpc.aio's server
    keeps one pending call request per registered method and, for every call it accepts, waits
    on all of them again (``asyncio.wait``), which with credbroker's fifty methods cost about a
    third of a no-op call (bench/README.md)."""

    def __init__(
        self, server: grpc.aio.Server, admission: Admission, required_scopes: Mapping[str, Scope]
    ) -> None:
        self._admission = admission
        self._scopes = required_scopes
        self._methods: dict[str, Any] = {}
        server.add_generic_rpc_handlers((self,))

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return self._methods.get(handler_call_details.method)

    def add(self, add_to_server: AddToServer, servicer: Any) -> None:
        recorder = _Recorder()
        add_to_server(servicer, recorder)
        if recorder.generic != len(recorder.services):
            raise RuntimeError("a servicer registered handlers this registry cannot wrap")
        for service, handlers in recorder.services.items():
            for name, handler in handlers.items():
                method = f"/{service}/{name}"
                self._methods[method] = self._wrap(handler, method)

    def operation(self, method: str, request_class: Any = None) -> Operation:
        """The operation of ``method``, whose requests are ``request_class`` messages."""
        if method in UNAUTHENTICATED_METHODS:
            return Operation(method, Credential.NONE, decode=_checked)
        return Operation(
            method,
            Credential.SECRET_KEY,
            scope=self._scopes.get(method),
            any_scope=method in ANY_SCOPE_METHODS,
            audit=audit_rule(method),
            resources=resource_ids_of(request_class),
            created=created_connection_id,
            decode=_checked,
        )

    def _wrap(self, handler: Any, method: str) -> Any:
        """A copy of ``handler`` (a grpc RpcMethodHandler namedtuple) whose behavior admits the
        caller first; same serializers. A unary request is served as a request stream (same
        wire format): admission then runs on the headers, and the message is read only for an
        authenticated caller, within the first-message bound (credbroker.admission.limits)."""
        parse = handler.request_deserializer  # a generated message class's FromString
        op = self.operation(method, getattr(parse, "__self__", None))
        handler = handler._replace(request_deserializer=_tolerant(handler.request_deserializer))
        if handler.response_streaming:
            return self._wrap_streaming(handler, op)
        behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
        run = self._admission.run
        receive = None if handler.request_streaming else _read_message

        async def unary(request: Any, context: Context) -> Any:
            try:
                return await run(
                    op,
                    bearer_token(context.invocation_metadata()),
                    request,
                    context,
                    behavior,
                    remaining=context.time_remaining(),
                    receive=receive,
                    peer=context.peer(),
                )
            except Refused as refused:
                await errors.abort(context, refused.failure)

        return handler._replace(request_streaming=True, unary_unary=None, stream_unary=unary)

    def _wrap_streaming(self, handler: Any, op: Operation) -> Any:
        """Streams: Health/Watch (no key) takes a slot of the global and per-address Watch caps;
        a stream with a key (WatchConnections, reflection) a slot of the per-address stream cap
        (WatchConnections also has per-key and total caps), and ends at its next message once
        the key no longer admits (revoked, expired). Every stream ends after the stream age
        limit."""
        unary_request = not handler.request_streaming
        behavior = handler.unary_stream if unary_request else handler.stream_stream
        admission = self._admission
        limits = admission.limits
        exempt = op.credential is Credential.NONE
        max_age = limits.stream_max_age

        async def streaming(requests: Any, context: Context) -> AsyncIterator[Any]:
            request_id = start_request(op.name)
            peer = context.peer()
            try:
                with contextlib.ExitStack() as held:
                    still_admitted = None
                    if exempt:
                        held.enter_context(limits.watch(peer))
                    else:
                        token = bearer_token(context.invocation_metadata())
                        await admission.admit(op, token, peer=peer)
                        held.enter_context(limits.authenticated_stream(peer))

                        async def still_admitted() -> None:
                            await admission.admit(op, token, peer=peer)

                    if unary_request:
                        request = _checked(await limits.first_message(requests))
                    else:
                        request = _checked_stream(requests)
                    async for response in aged(behavior(request, context), max_age, still_admitted):
                        yield response
            except grpc.aio.AbortError:
                raise
            except Refused as refused:
                await errors.abort(context, refused.failure)
            except Exception as error:  # noqa: BLE001 - last-resort mapping
                await errors.abort(context, failure_for(error, request_id))

        return handler._replace(request_streaming=True, unary_stream=None, stream_stream=streaming)
