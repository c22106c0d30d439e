"""One contract that the gRPC and the HTTP transports both pass where they overlap: the same
use cases behind the same admission path, so the same keys, environments, scopes and audit.

Each case runs once per transport (``transport`` parameter): isolation between environments,
a byte-identical NOT_FOUND for another environment's connection, scopes, reveals audited (and
nothing audited as a reveal that revealed nothing), and no secret echoed outside a reveal.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import httpx
import pytest

from credbroker.domain.models import Scope
from credbroker.v1 import audit_service_pb2, audit_service_pb2_grpc
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc as cpb_grpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as ipb_grpc
from credbroker.v1 import resources_pb2 as rpb


@dataclass(frozen=True)
class Outcome:
    """A call's result, transport-neutral: ``kind`` is ok, not_found, permission_denied or
    unauthenticated; ``wire`` is every byte the caller got back (to compare and to search)."""

    kind: str
    wire: bytes
    api_key: str | None = None


class Transport(Protocol):
    name: str

    async def create(
        self, key: str, integration_id: str, connection_id: str, secret: str
    ) -> Outcome: ...

    async def read(self, key: str, integration_id: str, connection_id: str) -> Outcome: ...

    async def reveal(self, key: str, integration_id: str, connection_id: str) -> Outcome: ...

    async def ids(self, key: str) -> list[str]: ...

    async def delete(self, key: str, integration_id: str, connection_id: str) -> Outcome: ...


_GRPC_KINDS = {
    grpc.StatusCode.NOT_FOUND: "not_found",
    grpc.StatusCode.PERMISSION_DENIED: "permission_denied",
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
}
_HTTP_KINDS = {404: "not_found", 403: "permission_denied", 401: "unauthenticated"}


class GrpcTransport:
    name = "grpc"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._connections = cpb_grpc.ConnectionServiceStub(channel)
        self._integrations = ipb_grpc.IntegrationServiceStub(channel)

    @staticmethod
    def _md(key: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {key}"),)

    async def _call(self, call: Any) -> tuple[Any, Outcome | None]:
        try:
            return await call, None
        except grpc.aio.AioRpcError as error:
            trailer = b"".join(
                v for k, v in error.trailing_metadata() or () if isinstance(v, bytes)
            )
            wire = f"{error.code()}|{error.details()}".encode() + trailer
            return None, Outcome(_GRPC_KINDS.get(error.code(), str(error.code())), wire)

    async def create(
        self, key: str, integration_id: str, connection_id: str, secret: str
    ) -> Outcome:
        await self._call(
            self._integrations.CreateIntegration(
                ipb.CreateIntegrationRequest(
                    integration=rpb.Integration(integration_id=integration_id, provider="openai")
                ),
                metadata=self._md(key),
            )
        )
        credentials = rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=secret))
        response, failed = await self._call(
            self._connections.CreateConnection(
                cpb.CreateConnectionRequest(
                    connection=rpb.Connection(
                        integration_id=integration_id,
                        connection_id=connection_id,
                        credentials=credentials,
                    ),
                    skip_verification=True,
                ),
                metadata=self._md(key),
            )
        )
        return failed or Outcome("ok", response.SerializeToString())

    async def read(self, key: str, integration_id: str, connection_id: str) -> Outcome:
        request = cpb.GetConnectionRequest(
            integration_id=integration_id, connection_id=connection_id
        )
        response, failed = await self._call(
            self._connections.GetConnection(request, metadata=self._md(key))
        )
        return failed or Outcome("ok", response.SerializeToString())

    async def reveal(self, key: str, integration_id: str, connection_id: str) -> Outcome:
        request = cpb.AccessCredentialsRequest(
            integration_id=integration_id, connection_id=connection_id
        )
        response, failed = await self._call(
            self._connections.AccessCredentials(request, metadata=self._md(key))
        )
        if failed:
            return failed
        return Outcome("ok", response.SerializeToString(), response.credentials.api_key.api_key)

    async def ids(self, key: str) -> list[str]:
        response = await self._connections.ListConnections(
            cpb.ListConnectionsRequest(), metadata=self._md(key)
        )
        return [c.connection_id for c in response.connections]

    async def delete(self, key: str, integration_id: str, connection_id: str) -> Outcome:
        request = cpb.DeleteConnectionRequest(
            integration_id=integration_id, connection_id=connection_id
        )
        _, failed = await self._call(
            self._connections.DeleteConnection(request, metadata=self._md(key))
        )
        return failed or Outcome("ok", b"")


class HttpTransport:
    name = "http"

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    @staticmethod
    def _outcome(response: httpx.Response) -> Outcome:
        if response.is_success:
            body = response.json()
            api_key = body.get("credentials", {}).get("apiKey") if isinstance(body, dict) else None
            return Outcome("ok", response.content, api_key)
        kind = _HTTP_KINDS.get(response.status_code, str(response.status_code))
        return Outcome(kind, f"{response.status_code}|".encode() + response.content)

    @staticmethod
    def _headers(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def create(
        self, key: str, integration_id: str, connection_id: str, secret: str
    ) -> Outcome:
        await self._http.post(
            "/integrations",
            json={"unique_key": integration_id, "provider": "openai"},
            headers=self._headers(key),
        )
        response = await self._http.post(
            "/connections",
            json={
                "provider_config_key": integration_id,
                "connection_id": connection_id,
                "credentials": {"type": "API_KEY", "apiKey": secret},
                "skip_verification": True,
            },
            headers=self._headers(key),
        )
        return self._outcome(response)

    async def _get(self, key: str, integration_id: str, connection_id: str) -> Outcome:
        response = await self._http.get(
            f"/connections/{connection_id}",
            params={"provider_config_key": integration_id},
            headers=self._headers(key),
        )
        return self._outcome(response)

    read = _get
    reveal = _get  # the same route: credentials come with credentials:read

    async def ids(self, key: str) -> list[str]:
        response = await self._http.get("/connections", headers=self._headers(key))
        return [c["connection_id"] for c in response.json()["connections"]]

    async def delete(self, key: str, integration_id: str, connection_id: str) -> Outcome:
        response = await self._http.delete(
            f"/connections/{connection_id}",
            params={"provider_config_key": integration_id},
            headers=self._headers(key),
        )
        return self._outcome(response)


@pytest.fixture(params=["grpc", "http"])
def transport(
    request: pytest.FixtureRequest, channel: grpc.aio.Channel, http: httpx.AsyncClient
) -> Transport:
    return GrpcTransport(channel) if request.param == "grpc" else HttpTransport(http)


def canary() -> str:
    return f"sk-contract-{uuid.uuid4().hex}"


async def _reveal_events(channel: grpc.aio.Channel, tenant: Any, connection_id: str) -> list[Any]:
    stub = audit_service_pb2_grpc.AuditServiceStub(channel)
    response = await stub.ListAuditEvents(
        audit_service_pb2.ListAuditEventsRequest(connection_id=connection_id),
        metadata=tenant.metadata,
    )
    reveal_methods = {
        "/credbroker.v1.ConnectionService/AccessCredentials",
        "GET /connections/{connection_id}",
    }
    return [e for e in response.audit_events if e.method in reveal_methods]


async def test_isolation_between_environments(transport: Transport, make_tenant: Any) -> None:
    a, b = await make_tenant(), await make_tenant()
    secret = canary()
    assert (await transport.create(a.key, "shared", "u1", secret)).kind == "ok"
    assert (await transport.create(b.key, "shared", "mine", canary())).kind == "ok"
    assert (await transport.read(b.key, "shared", "u1")).kind == "not_found"
    foreign = await transport.reveal(b.key, "shared", "u1")
    assert foreign.kind == "not_found" and secret.encode() not in foreign.wire
    assert (await transport.delete(b.key, "shared", "u1")).kind == "not_found"
    assert await transport.ids(b.key) == ["mine"]
    revealed = await transport.reveal(a.key, "shared", "u1")
    assert revealed.kind == "ok" and revealed.api_key == secret  # untouched by b's attempts


async def test_identical_not_found_for_another_environments_connection(
    transport: Transport, make_tenant: Any
) -> None:
    a, b = await make_tenant(), await make_tenant()
    await transport.create(a.key, "shared", "u1", canary())
    await transport.create(b.key, "shared", "own", canary())  # b has the integration too
    for call in (transport.read, transport.reveal, transport.delete):
        foreign = await call(b.key, "shared", "u1")
        missing = await call(b.key, "shared", "never-existed")
        assert foreign.kind == missing.kind == "not_found"
        assert foreign.wire == missing.wire  # byte for byte: nothing tells them apart


async def test_scopes(transport: Transport, tenant: Any) -> None:
    secret = canary()
    await transport.create(tenant.key, "svc", "u1", secret)

    async def key(*scopes: Scope) -> str:
        token, _ = await tenant.keys.create_key(tenant.environment, frozenset(scopes))
        return str(token)

    no_read = await key(Scope.CONNECTIONS_WRITE)
    assert (await transport.read(no_read, "svc", "u1")).kind == "permission_denied"
    read_only = await key(Scope.CONNECTIONS_READ)
    assert (await transport.create(read_only, "svc", "u2", canary())).kind == "permission_denied"
    assert (await transport.delete(read_only, "svc", "u1")).kind == "permission_denied"
    without_reveal = await transport.reveal(read_only, "svc", "u1")
    # gRPC refuses AccessCredentials; HTTP answers the connection without its credentials.
    assert without_reveal.kind in {"permission_denied", "ok"}
    assert without_reveal.api_key is None and secret.encode() not in without_reveal.wire
    both = await key(Scope.CONNECTIONS_READ, Scope.CREDENTIALS_READ)
    assert (await transport.reveal(both, "svc", "u1")).api_key == secret
    assert (await transport.read("cbsk_" + "2" * 40, "svc", "u1")).kind == "unauthenticated"


async def test_reveals_are_audited_and_non_reveals_are_not(
    transport: Transport, tenant: Any, channel: grpc.aio.Channel
) -> None:
    await transport.create(tenant.key, "svc", "audited", canary())
    read_only, _ = await tenant.keys.create_key(
        tenant.environment, frozenset({Scope.CONNECTIONS_READ})
    )
    await transport.read(tenant.key if transport.name == "grpc" else read_only, "svc", "audited")
    assert await _reveal_events(channel, tenant, "audited") == []
    assert (await transport.reveal(tenant.key, "svc", "audited")).kind == "ok"
    await transport.reveal(tenant.key, "svc", "missing-one")
    revealed = await _reveal_events(channel, tenant, "audited")
    assert [(e.outcome, e.integration_id) for e in revealed] == [("OK", "svc")]
    failed = await _reveal_events(channel, tenant, "missing-one")
    assert [e.outcome for e in failed] == ["NOT_FOUND"]


async def test_no_secret_echoed_outside_a_reveal(transport: Transport, make_tenant: Any) -> None:
    tenant, stranger = await make_tenant(), await make_tenant()
    secret = canary()
    created = await transport.create(tenant.key, "svc", "u1", secret)
    assert created.kind == "ok" and secret.encode() not in created.wire
    assert secret.encode() not in (await transport.read(tenant.key, "svc", "u1")).wire or (
        transport.name == "http"  # the HTTP read of an all-scopes key is the reveal itself
    )
    for outcome in (
        await transport.reveal(stranger.key, "svc", "u1"),
        await transport.reveal("cbsk_" + "3" * 40, "svc", "u1"),
        await transport.create(tenant.key, "svc", "u1", secret),  # already exists / replaced
    ):
        assert secret.encode() not in outcome.wire


async def test_one_store_behind_both_transports(
    channel: grpc.aio.Channel, http: httpx.AsyncClient, tenant: Any
) -> None:
    grpc_side, http_side = GrpcTransport(channel), HttpTransport(http)
    via_http, via_grpc = canary(), canary()
    await http_side.create(tenant.key, "svc", "from-http", via_http)
    await grpc_side.create(tenant.key, "svc", "from-grpc", via_grpc)
    assert (await grpc_side.reveal(tenant.key, "svc", "from-http")).api_key == via_http
    assert (await http_side.reveal(tenant.key, "svc", "from-grpc")).api_key == via_grpc
    assert sorted(await grpc_side.ids(tenant.key)) == sorted(await http_side.ids(tenant.key))
