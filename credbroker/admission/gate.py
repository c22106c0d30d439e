"""Admission of one call, whatever the transport: request id and log context, authentication,
scope check, request decoding, audit (before/after, fail closed), the server-side deadline,
metrics and the mapping of every failure to a :class:`~credbroker.admission.errors.Failure`.

A transport builds one :class:`Operation` per callable thing (a gRPC method, an HTTP route) when
it registers it, then for each call hands :meth:`Admission.run` the operation, the presented
token, the request and its handler. ``run`` returns the handler's response or raises
:class:`~credbroker.admission.errors.Refused`, which the transport turns into its wire format
(``credbroker.api.errors``, ``credbroker.rest.errors``). Handlers read the caller with
:func:`current_principal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from credbroker import metrics
from credbroker.admission import errors
from credbroker.admission.audit import Audit, Auditor, CreatedId, ResourceIds
from credbroker.admission.audit import no_created_id as _no_created_id
from credbroker.admission.audit import no_resources as _no_resources
from credbroker.admission.deadlines import Deadlines
from credbroker.admission.limits import FirstMessageTimeout, Limits, LimitSettings
from credbroker.admission.ratelimit import current_peer
from credbroker.domain.models import Principal, Scope
from credbroker.logs import call_fields

log = structlog.get_logger("credbroker.api")

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("credbroker_principal")

Authenticator = Callable[[str], Awaitable[Principal | None]]
Handler = Callable[[Any, Any], Awaitable[Any]]
# (request, context) -> the request message, once the caller is authenticated.
Receive = Callable[[Any, Any], Awaitable[Any]]
_NO_RESOURCES = ("", "")


def current_request_id() -> str:
    """The id of the current call (set by :func:`start_request`); '' outside a call."""
    fields = call_fields.get(None)
    return str(fields.get("request_id", "")) if fields else ""


def current_principal() -> Principal:
    """The caller of the current call (set by :meth:`Admission.run` before the handler runs)."""
    return _principal.get()


class Credential(enum.Enum):
    """What a caller presents to be admitted to an operation, and the reason given when it is
    refused (the message is the same for all of them)."""

    NONE = ("none", "")
    SECRET_KEY = ("secret_key", "UNAUTHENTICATED")
    SESSION_TOKEN = ("session_token", "UNKNOWN_CONNECT_SESSION_TOKEN")

    def __init__(self, label: str, refusal_reason: str) -> None:
        self.label = label
        self.refusal_reason = refusal_reason


def _identity(request: Any) -> Any:
    return request


@dataclass(eq=False)
class Operation:
    """One callable thing, resolved once at registration: what admits a caller to it, the scope
    it needs, how it is audited, and its metric children.

    ``scope`` None means no scope grants it (always PERMISSION_DENIED) unless ``any_scope``.
    ``decode`` turns the transport's request into the handler's (raising InvalidArgumentError);
    it runs after authentication, so unauthenticated callers learn nothing about parsing.
    """

    name: str
    credential: Credential
    scope: Scope | None = None
    any_scope: bool = False
    audit: Audit = Audit.NONE
    resources: ResourceIds = _no_resources
    created: CreatedId = _no_created_id
    decode: Callable[[Any], Any] = _identity
    stats: metrics.CallStats = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.stats = metrics.CallStats(self.name)


class Admission:
    """Shared by every transport of one server. ``passthrough`` exceptions (a transport's own
    way of ending a call, e.g. grpc's AbortError) are re-raised untouched."""

    def __init__(
        self,
        authenticators: Mapping[Credential, Authenticator],
        auditor: Auditor,
        *,
        max_seconds: float,
        passthrough: tuple[type[BaseException], ...] = (),
        limits: Limits | None = None,
    ) -> None:
        self._authenticators = dict(authenticators)
        self._auditor = auditor
        self._max_seconds = max_seconds
        self._passthrough = passthrough
        self.limits = limits or Limits(LimitSettings())
        self._first_message = self.limits.settings.first_message_seconds
        self._deadlines = Deadlines()

    @property
    def auditor(self) -> Auditor:
        return self._auditor

    async def _authenticated(
        self, op: Operation, token: str | None, absent_reason: str
    ) -> Principal:
        authenticate = self._authenticators.get(op.credential)
        principal = None
        if token is not None and authenticate is not None:
            principal = await authenticate(token)
        if principal is None:
            reason = op.credential.refusal_reason if token is not None else absent_reason
            log.info("rpc rejected", code="UNAUTHENTICATED")
            raise errors.Refused(errors.unauthenticated(reason or "UNAUTHENTICATED"))
        fields = call_fields.get(None)
        if fields is not None:
            fields["key_id"] = principal.key_id
            fields["environment"] = principal.environment_name
        return principal

    @staticmethod
    def _authorize(op: Operation, principal: Principal) -> None:
        if not op.any_scope and (op.scope is None or op.scope not in principal.scopes):
            # An operation without a scope is denied, never allowed.
            scope_name = op.scope.value if op.scope else "none"
            log.info("rpc rejected", code="PERMISSION_DENIED", scope=scope_name)
            raise errors.Refused(errors.permission_denied(scope_name))
        _principal.set(principal)

    async def admit(
        self,
        op: Operation,
        token: str | None,
        *,
        absent_reason: str = "UNAUTHENTICATED",
        peer: str = "",
    ) -> Principal:
        """Authenticates and authorizes only (for streams); raises Refused, or whatever the
        authenticator raised (map it with :func:`~credbroker.admission.errors.failure_for`)."""
        current_peer.set(peer)
        principal = await self._authenticated(op, token, absent_reason)
        self._authorize(op, principal)
        return principal

    async def run(
        self,
        op: Operation,
        token: str | None,
        request: Any,
        context: Any,
        handler: Handler,
        *,
        remaining: float | None = None,
        absent_reason: str = "UNAUTHENTICATED",
        receive: Receive | None = None,
        peer: str = "",
    ) -> Any:
        """Admits the caller, runs ``handler(request, context)`` and returns its response, or
        raises Refused. ``remaining`` is the client's own deadline in seconds, if any.

        ``receive``, when given, turns ``request`` into the request message once the caller is
        authenticated (``await receive(request, context)``; a transport that has only the headers
        so far: a caller without a valid key is refused before any message is read), within
        ``first_message_seconds`` of the limits. ``peer`` (the client's address) limits calls
        that need no credential per address; authenticated calls take a slot of
        ``max_concurrent_rpcs`` once their message arrived (:mod:`credbroker.admission.limits`).
        """
        request_id = start_request(op.name)
        current_peer.set(peer)
        principal: Principal | None = None
        event_id: int | None = None
        resources = _NO_RESOURCES
        started = time.perf_counter()
        code = "OK"
        deadline = self._max_seconds if remaining is None else min(remaining, self._max_seconds)
        task: Any = asyncio.current_task()
        deadlines = self._deadlines
        receiving = receive is not None and self._first_message < deadline
        slot = deadlines.arm(task, self._first_message if receiving else deadline)
        limits = self.limits
        held = expired = False
        try:
            try:
                if op.credential is Credential.NONE:
                    with self._unauthenticated(peer):
                        if receive is not None:
                            request = await receive(request, context)
                            if receiving:
                                receiving = False
                                deadlines.disarm(task, slot)
                                slot = deadlines.arm(task, deadline - _since(started))
                        return await handler(op.decode(request), context)
                principal = await self._authenticated(op, token, absent_reason)
                if receive is not None:
                    request = await receive(request, context)
                    if receiving:
                        receiving = False
                        deadlines.disarm(task, slot)
                        slot = deadlines.arm(task, deadline - _since(started))
                self._authorize(op, principal)
                request = op.decode(request)
                limits.take_admitted()
                held = True
                if op.audit is Audit.NONE:
                    return await handler(request, context)
                resources = op.resources(request)
                if op.audit is Audit.MUTATION:
                    event_id = await self._auditor.before(
                        op.audit, request_id, principal, op.name, resources
                    )
                    response = await handler(request, context)
                    await self._auditor.succeeded(
                        op.audit,
                        event_id,
                        request_id,
                        principal,
                        op.name,
                        resources,
                        op.created(response),
                    )
                    return response
                response = await handler(request, context)
                await self._auditor.revealed(request_id, principal, op.name, resources)
                return response
            finally:
                if held:
                    limits.release_admitted()
                expired = deadlines.disarm(task, slot)
        except asyncio.CancelledError:
            if not expired:
                raise
            task.uncancel()
            timeout = FirstMessageTimeout() if receiving else TimeoutError()
            failure = await self._refuse(timeout, op, request_id, principal, event_id, resources)
            code = failure.code.label
            raise errors.Refused(failure) from None
        except Exception as error:  # last-resort mapping (re-raises passthrough exceptions)
            if self._passthrough and isinstance(error, self._passthrough):
                code = "HANDLER_ABORT"
                raise
            failure = await self._refuse(error, op, request_id, principal, event_id, resources)
            code = failure.code.label
            raise errors.Refused(failure) from None
        finally:
            op.stats.record(code, time.perf_counter() - started)

    async def _refuse(
        self,
        error: Exception,
        op: Operation,
        request_id: str,
        principal: Principal | None,
        event_id: int | None,
        resources: tuple[str, str],
    ) -> errors.Failure:
        """The failure for ``error``, recorded (best effort) if the call is audited."""
        failure = errors.failure_for(error, request_id)
        if principal is not None and op.audit is not Audit.NONE:
            await self._auditor.failed(
                op.audit, event_id, request_id, principal, op.name, resources, failure.code.label
            )
        return failure

    def _unauthenticated(self, peer: str) -> contextlib.AbstractContextManager[None]:
        """The per-address cap on calls without a credential (none without an address)."""
        return self.limits.unauthenticated(peer) if peer else contextlib.nullcontext()


def start_request(name: str) -> str:
    """A new request id, and a fresh log context naming it and the operation (one context
    variable holding this call's fields, merged into every log line by
    :func:`credbroker.logs.merge_call_fields`)."""
    request_id = f"{_request_prefix}{next(_request_numbers):08x}"
    call_fields.set({"request_id": request_id, "method": name})
    return request_id


def _since(started: float) -> float:
    return time.perf_counter() - started


# Request ids: unique in a process (a counter) and across processes (a random prefix, drawn again
# in a forked child); correlation ids, not secrets, so no system call per call.
_request_prefix = os.urandom(4).hex()
_request_numbers = itertools.count(1)


def _new_request_prefix() -> None:
    global _request_prefix, _request_numbers  # per-process state by design
    _request_prefix = os.urandom(4).hex()
    _request_numbers = itertools.count(1)


os.register_at_fork(after_in_child=_new_request_prefix)
