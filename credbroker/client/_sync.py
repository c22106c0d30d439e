"""The synchronous client, over ``grpc.insecure_channel`` / ``grpc.secure_channel``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from credbroker.client import _convert, _retry
from credbroker.client._base import CHANNEL_OPTIONS, PageRequest, PageResponse, Settings
from credbroker.client._errors import from_sync_error
from credbroker.client._models import (
    AccessedCredentials,
    AuditEvent,
    AuthMode,
    Connection,
    Integration,
    Provider,
    VerificationState,
)
from credbroker.v1 import audit_service_pb2_grpc as agrpc
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc as cgrpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as igrpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")
PReq = TypeVar("PReq", bound=PageRequest)
PResp = TypeVar("PResp", bound=PageResponse)
M = TypeVar("M")
T = TypeVar("T")


class CredBroker:
    """A blocking credbroker client. Thread-safe; open one per process and share it.

    Args:
        target: ``host:port`` of the server, e.g. ``"localhost:50051"``.
        secret_key: a secret key (``cbsk_...``), sent as ``authorization: Bearer`` on every call.
        tls: ``False`` for plaintext, ``True`` for TLS with gRPC's default root certificates, or
            ``grpc.ChannelCredentials`` (e.g. ``grpc.ssl_channel_credentials(root_ca, key,
            chain)`` for a private CA or mutual TLS).
        timeout: default deadline of every call in seconds, retries included (``None``: none).
            Each method also takes ``timeout=`` for that call; list methods apply it per page.
        retries: extra attempts after UNAVAILABLE, with exponential backoff and jitter.

    Every method raises a :class:`~credbroker.client.CredBrokerError` subclass on failure.
    """

    def __init__(
        self,
        target: str,
        secret_key: str,
        *,
        tls: bool | grpc.ChannelCredentials = False,
        timeout: float | None = 5.0,
        retries: int = 3,
    ) -> None:
        self._settings = Settings(target, secret_key, tls=tls, timeout=timeout, retries=retries)
        if self._settings.credentials is None:
            self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.secure_channel(
                target, self._settings.credentials, options=CHANNEL_OPTIONS
            )
        self._integrations = igrpc.IntegrationServiceStub(self._channel)
        self._connections = cgrpc.ConnectionServiceStub(self._channel)
        self._audit = agrpc.AuditServiceStub(self._channel)

    def __repr__(self) -> str:
        return self._settings.describe(type(self).__name__)

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -----------------------------------------------------------------------------------------
    # plumbing

    def _call(
        self,
        rpc: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float | None,
    ) -> Resp:
        metadata = self._settings.metadata

        def attempt(remaining: float | None) -> Resp:
            try:
                return rpc(request, timeout=remaining, metadata=metadata)
            except grpc.RpcError as error:
                raise from_sync_error(error) from error

        return _retry.call(attempt, self._settings.backoff, self._settings.call_timeout(timeout))

    def _items(
        self,
        rpc: grpc.UnaryUnaryMultiCallable[PReq, PResp],
        request: PReq,
        timeout: float | None,
        items: Callable[[PResp], Iterable[M]],
        convert: Callable[[M], T],
    ) -> Iterator[T]:
        """Checks the arguments now; fetches the pages lazily, one call (and deadline) each."""
        timeout = self._settings.call_timeout(timeout)

        def iterate() -> Iterator[T]:
            while True:
                response = self._call(rpc, request, timeout)
                for item in items(response):
                    yield convert(item)
                if not response.next_page_token:
                    return
                request.page_token = response.next_page_token

        return iterate()

    # -----------------------------------------------------------------------------------------
    # integrations

    def create_integration(
        self,
        integration_id: str,
        provider: str,
        *,
        display_name: str = "",
        integration_config: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Integration:
        """Creates an integration of a catalog ``provider`` (e.g. ``"openai"``).
        Raises AlreadyExists when the id is taken, InvalidArgument for an unknown provider."""
        request = _convert.create_integration(
            integration_id, provider, display_name, integration_config
        )
        return _convert.integration(
            self._call(self._integrations.CreateIntegration, request, timeout)
        )

    def get_integration(self, integration_id: str, *, timeout: float | None = None) -> Integration:
        """Returns one integration. Raises NotFound."""
        request = ipb.GetIntegrationRequest(integration_id=integration_id)
        return _convert.integration(self._call(self._integrations.GetIntegration, request, timeout))

    def list_integrations(
        self, *, page_size: int | None = None, timeout: float | None = None
    ) -> Iterator[Integration]:
        """Iterates over all integrations, ordered by id, fetching ``page_size`` per call."""
        request = ipb.ListIntegrationsRequest(page_size=page_size or 0)
        return self._items(
            self._integrations.ListIntegrations,
            request,
            timeout,
            lambda page: page.integrations,
            _convert.integration,
        )

    def update_integration(
        self,
        integration_id: str,
        *,
        display_name: str | None = None,
        integration_config: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Integration:
        """Replaces the fields passed (not ``None``); an empty ``integration_config`` clears it."""
        request = _convert.update_integration(integration_id, display_name, integration_config)
        return _convert.integration(
            self._call(self._integrations.UpdateIntegration, request, timeout)
        )

    def delete_integration(
        self, integration_id: str, *, force: bool = False, timeout: float | None = None
    ) -> None:
        """Deletes an integration. Raises FailedPrecondition while it has connections, unless
        ``force`` (which deletes them too)."""
        request = ipb.DeleteIntegrationRequest(integration_id=integration_id, force=force)
        self._call(self._integrations.DeleteIntegration, request, timeout)

    def list_providers(
        self,
        auth_mode: AuthMode | str | None = None,
        *,
        page_size: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[Provider]:
        """Iterates over the provider catalog, ordered by name, optionally of one auth mode."""
        request = _convert.list_providers(auth_mode, page_size)
        return self._items(
            self._integrations.ListProviders,
            request,
            timeout,
            lambda page: page.providers,
            _convert.provider,
        )

    def get_provider(self, name: str, *, timeout: float | None = None) -> Provider:
        """Returns one catalog entry, e.g. ``"openai"``. Raises NotFound."""
        request = ipb.GetProviderRequest(name=name)
        return _convert.provider(self._call(self._integrations.GetProvider, request, timeout))

    # -----------------------------------------------------------------------------------------
    # connections

    def create_connection(
        self,
        integration_id: str,
        *,
        connection_id: str = "",
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        connection_config: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        skip_verification: bool = False,
        timeout: float | None = None,
    ) -> Connection:
        """Stores an end user's credentials: ``api_key``, or ``username``/``password`` (exactly
        one kind, matching the integration's auth mode; ValueError otherwise). An empty
        ``connection_id`` lets the server generate one. Raises NotFound (integration),
        AlreadyExists, InvalidArgument, FailedPrecondition (``CREDENTIALS_REJECTED``)."""
        request = _convert.create_connection(
            integration_id,
            connection_id,
            api_key,
            username,
            password,
            metadata,
            connection_config,
            tags,
            skip_verification,
        )
        return _convert.connection(self._call(self._connections.CreateConnection, request, timeout))

    def get_connection(
        self, integration_id: str, connection_id: str, *, timeout: float | None = None
    ) -> Connection:
        """Returns one connection, without its credentials. Raises NotFound."""
        request = cpb.GetConnectionRequest(
            integration_id=integration_id, connection_id=connection_id
        )
        return _convert.connection(self._call(self._connections.GetConnection, request, timeout))

    def list_connections(
        self,
        integration_id: str = "",
        *,
        tags: Mapping[str, str] | None = None,
        verification_state: VerificationState | str | None = None,
        page_size: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[Connection]:
        """Iterates over all matching connections (of one integration if given, carrying all
        ``tags``, in a verification state), ordered by integration id, then connection id."""
        request = _convert.list_connections(integration_id, tags, verification_state, page_size)
        return self._items(
            self._connections.ListConnections,
            request,
            timeout,
            lambda page: page.connections,
            _convert.connection,
        )

    def update_connection(
        self,
        integration_id: str,
        connection_id: str,
        *,
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        connection_config: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        etag: str = "",
        allow_missing: bool = False,
        skip_verification: bool = False,
        timeout: float | None = None,
    ) -> Connection:
        """Replaces the fields passed (not ``None``): credentials, ``metadata``,
        ``connection_config``, ``tags`` (an empty mapping clears it). ``etag`` updates only an
        unchanged connection (Aborted otherwise); ``allow_missing`` creates it if missing."""
        request = _convert.update_connection(
            integration_id,
            connection_id,
            api_key,
            username,
            password,
            metadata,
            connection_config,
            tags,
            etag,
            allow_missing,
            skip_verification,
        )
        return _convert.connection(self._call(self._connections.UpdateConnection, request, timeout))

    def delete_connection(
        self, integration_id: str, connection_id: str, *, timeout: float | None = None
    ) -> None:
        """Deletes a connection and its credentials. Raises NotFound."""
        request = cpb.DeleteConnectionRequest(
            integration_id=integration_id, connection_id=connection_id
        )
        self._call(self._connections.DeleteConnection, request, timeout)

    def access_credentials(
        self, integration_id: str, connection_id: str, *, timeout: float | None = None
    ) -> AccessedCredentials:
        """Returns the decrypted credentials with the ``base_url``, ``headers`` and
        ``query_params`` to call the provider with. Needs the ``credentials:read`` scope."""
        request = cpb.AccessCredentialsRequest(
            integration_id=integration_id, connection_id=connection_id
        )
        return _convert.accessed_credentials(
            self._call(self._connections.AccessCredentials, request, timeout)
        )

    def verify_connection(
        self, integration_id: str, connection_id: str, *, timeout: float | None = None
    ) -> Connection:
        """Checks the stored credentials with the provider now; the outcome is in
        ``verification``. Raises FailedPrecondition (``VERIFICATION_NOT_AVAILABLE``) when the
        provider has no verification request."""
        request = cpb.VerifyConnectionRequest(
            integration_id=integration_id, connection_id=connection_id
        )
        return _convert.connection(self._call(self._connections.VerifyConnection, request, timeout))

    # -----------------------------------------------------------------------------------------
    # audit

    def list_audit_events(
        self,
        *,
        integration_id: str = "",
        connection_id: str = "",
        page_size: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[AuditEvent]:
        """Iterates over the audit trail, newest first. Needs the ``audit:read`` scope."""
        request = _convert.list_audit_events(integration_id, connection_id, page_size)
        return self._items(
            self._audit.ListAuditEvents,
            request,
            timeout,
            lambda page: page.audit_events,
            _convert.audit_event,
        )
