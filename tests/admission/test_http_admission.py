"""The shared admission path seen through the HTTP adapter, on a real uvicorn socket with the
real key service and audit trail in PostgreSQL: the same keys, scopes, audit rules and error
table as gRPC, in the reference error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from credbroker.admission import Admission, Audit, Auditor, Credential, current_principal
from credbroker.domain.errors import NotFoundError
from credbroker.domain.models import Scope
from credbroker.rest.app import build_app
from credbroker.rest.endpoints import HttpCall, HttpRoutes, Reply, json_object
from credbroker.rest.server import HttpServer
from credbroker.storage.audit import PostgresAuditLog

ROUTE = "POST /things/{integration_id}"


async def _create(call: HttpCall) -> Reply:
    if call.json.get("fail") == "missing":
        raise NotFoundError("connection not found", reason="CONNECTION_NOT_FOUND")
    if call.json.get("fail") == "crash":
        raise RuntimeError("SELECT secret FROM somewhere")  # must never reach the caller
    principal = current_principal()
    return Reply(201, {"environment": principal.environment_name, "connectionId": "made-1"})


async def _read(call: HttpCall) -> Reply:
    return Reply(200, {"ok": True})


@pytest_asyncio.fixture(scope="module")
async def things(backend: Any, keys: Any) -> AsyncIterator[httpx.AsyncClient]:
    admission = Admission(
        {Credential.SECRET_KEY: keys.authenticate},
        Auditor(PostgresAuditLog(backend.db)),
        max_seconds=5,
    )
    http = HttpRoutes(admission, max_body_bytes=4096)
    app = build_app(
        [
            http.route(
                "POST",
                "/things/{integration_id}",
                _create,
                credential=Credential.SECRET_KEY,
                scope=Scope.INTEGRATIONS_WRITE,
                audit=Audit.MUTATION,
                decode=json_object,
                resources=lambda call: (call.path_params["integration_id"], ""),
                created=lambda reply: reply.body["connectionId"],
            ),
            http.route("GET", "/things", _read, credential=Credential.SECRET_KEY),
        ]
    )
    server = HttpServer(app, "127.0.0.1:0", reuse_port=False, tls=None, header_timeout=5.0)
    port = await server.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield client
    await server.stop(0)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def _events(backend: Any, environment: str) -> list[Any]:
    return list(
        await backend.db.fetch(
            "SELECT method, integration_id, connection_id, outcome, key_id FROM audit_events"
            " WHERE environment = $1 ORDER BY id",
            environment,
        )
    )


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_auth_header"),
        ({"authorization": "Basic abc"}, "malformed_auth_header"),
        ({"authorization": "Bearer a b"}, "malformed_auth_header"),
        ({"authorization": "Bearer cbsk_nope"}, "unknown_account"),
    ],
)
async def test_unauthenticated(things: httpx.AsyncClient, headers: Any, code: str) -> None:
    response = await things.post("/things/x", content=b"not json", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": {"code": code, "message": "invalid credentials"}}
    assert response.headers["www-authenticate"] == "Bearer"


async def test_same_key_as_grpc_and_its_scopes(things: httpx.AsyncClient, tenant: Any) -> None:
    read_only = await tenant.key_with(Scope.INTEGRATIONS_READ)
    token = read_only[0][1].removeprefix("Bearer ")
    response = await things.post("/things/x", json={}, headers=bearer(token))
    assert response.status_code == 403
    assert response.json()["error"] == {
        "code": "forbidden",
        "message": "missing scope integrations:write",
        "payload": {"scope": "integrations:write"},
    }


async def test_route_without_a_scope_is_denied(things: httpx.AsyncClient, tenant: Any) -> None:
    response = await things.get("/things", headers=bearer(tenant.key))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


async def test_body_is_decoded_after_authentication(things: httpx.AsyncClient, tenant: Any) -> None:
    anonymous = await things.post("/things/x", content=b"{")
    assert anonymous.status_code == 401
    response = await things.post("/things/x", content=b"{", headers=bearer(tenant.key))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_body"
    assert response.json()["error"]["errors"] == [{"path": "body", "message": "is not valid JSON"}]
    for bad in (b"[1]", b'{"a": NaN}', b"[" * 100000):
        response = await things.post("/things/x", content=bad, headers=bearer(tenant.key))
        assert response.status_code in {400, 413}, bad[:10]


async def test_mutation_is_audited_before_and_after(
    things: httpx.AsyncClient, tenant: Any, backend: Any
) -> None:
    response = await things.post("/things/int-1", json={}, headers=bearer(tenant.key))
    assert response.status_code == 201
    assert response.json() == {"environment": tenant.environment, "connectionId": "made-1"}
    missing = await things.post(
        "/things/int-1", json={"fail": "missing"}, headers=bearer(tenant.key)
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_connection"
    events = await _events(backend, tenant.environment)
    assert [
        (e["method"], e["integration_id"], e["connection_id"], e["outcome"]) for e in events
    ] == [
        (ROUTE, "int-1", "made-1", "OK"),
        (ROUTE, "int-1", "", "NOT_FOUND"),
    ]


async def test_unexpected_error_is_a_generic_500(things: httpx.AsyncClient, tenant: Any) -> None:
    response = await things.post("/things/x", json={"fail": "crash"}, headers=bearer(tenant.key))
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "server_error"
    assert "SELECT" not in response.text and "RuntimeError" not in response.text
    assert error["message"] == f"internal error (ref {error['payload']['request_id']})"


async def test_mutation_fails_closed_when_audit_cannot_be_written(
    things: httpx.AsyncClient, tenant: Any, backend: Any
) -> None:
    async with backend.db.pool.acquire() as connection:
        await connection.execute(
            """CREATE OR REPLACE FUNCTION test_refuse_http_audit() RETURNS trigger AS $$
               BEGIN RAISE EXCEPTION 'audit sink down'; END $$ LANGUAGE plpgsql"""
        )
        await connection.execute(
            f"""CREATE TRIGGER test_refuse_http_audit BEFORE INSERT ON audit_events
                FOR EACH ROW WHEN (NEW.environment = '{tenant.environment}')
                EXECUTE FUNCTION test_refuse_http_audit()"""
        )
    try:
        response = await things.post("/things/x", json={}, headers=bearer(tenant.key))
    finally:
        async with backend.db.pool.acquire() as connection:
            await connection.execute("DROP TRIGGER test_refuse_http_audit ON audit_events")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert "audit sink down" not in response.text
