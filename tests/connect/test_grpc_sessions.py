"""ConnectSessionService over gRPC against a real server: tokens, TTLs, validation, reads,
deletion, reconnect targets, environment isolation and the audit trail."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from credbroker.domain.connect_sessions import token_hash
from credbroker.v1 import connect_session_service_pb2 as spb
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import resources_pb2 as rpb

TOKEN = re.compile(r"cbcs_[0-9A-Za-z]{49}")


def _reason(error: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    status = rpc_status.from_call(error)
    assert status is not None
    reason, fields = "", []
    for detail in status.details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    return reason, fields


async def _fails(call: Any, code: grpc.StatusCode) -> tuple[str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return _reason(caught.value)


async def test_create_returns_token_link_and_expiry_once(
    connect: Any, end_user: rpb.EndUser, server: Any, backend: Any
) -> None:
    before = datetime.now(UTC)
    session = await connect.session(
        end_user=end_user, organization_id="org-1", tags={"plan": "pro"}
    )
    assert TOKEN.fullmatch(session.token)
    assert session.connect_url == f"{server.public_url}/connect?session_token={session.token}"
    expires = session.expire_time.ToDatetime(tzinfo=UTC)
    assert timedelta(minutes=29) < expires - before < timedelta(minutes=31)
    assert session.state == spb.ConnectSession.STATE_ACTIVE
    assert session.end_user == end_user
    assert session.organization_id == "org-1"
    # Only a hash is stored, and reads never show the token again.
    row = await backend.db.fetchrow(
        "SELECT * FROM connect_sessions WHERE id = $1", uuid.UUID(session.session_id)
    )
    assert bytes(row["token_hash"]) == token_hash(session.token)
    assert session.token.encode() not in repr(dict(row)).encode()
    assert hashlib.sha256(session.token.encode()).digest() != bytes(row["token_hash"])
    got = await connect.sessions.GetConnectSession(
        spb.GetConnectSessionRequest(session_id=session.session_id), metadata=connect.metadata
    )
    assert got.token == "" and got.connect_url == ""
    assert got.session_id == session.session_id and got.tags == {"plan": "pro"}


@pytest.mark.parametrize(("ttl", "ok"), [(60, True), (86400, True), (59, False), (86401, False)])
async def test_ttl_bounds(connect: Any, ttl: int, ok: bool) -> None:
    if ok:
        session = await connect.session(ttl=ttl)
        lifetime = session.expire_time.ToDatetime() - session.create_time.ToDatetime()
        assert lifetime == timedelta(seconds=ttl)
    else:
        _, fields = await _fails(connect.session(ttl=ttl), grpc.StatusCode.INVALID_ARGUMENT)
        assert fields == ["ttl"]


@pytest.mark.parametrize(
    ("fields", "violated"),
    [
        ({"end_user": rpb.EndUser(email="a@b.c")}, ["end_user.id"]),
        ({"end_user": rpb.EndUser(id="x", email="not-an-email")}, ["end_user.email"]),
        ({"end_user": rpb.EndUser(id="x\n")}, ["end_user.id"]),
        ({"allowed_integrations": ["openai", "openai"]}, ["allowed_integrations"]),
        ({"allowed_integrations": ["missing"]}, ["allowed_integrations[0]"]),
        ({"allowed_origins": ["https://a.example/path"]}, ["allowed_origins[0]"]),
        ({"allowed_origins": ["javascript:alert(1)"]}, ["allowed_origins[0]"]),
        ({"allowed_origins": ["https://user:pw@a.example"]}, ["allowed_origins[0]"]),
        ({"tags": {"Bad Key": "x"}}, ["tags"]),
        (
            {
                "allowed_integrations": ["openai"],
                "integrations_config_defaults": {
                    "jira": spb.ConnectionConfigDefaults(connection_config={"subdomain": "acme"})
                },
            },
            ["integrations_config_defaults[jira]"],
        ),
    ],
)
async def test_invalid_requests_name_the_field(
    connect: Any, fields: dict[str, Any], violated: list[str]
) -> None:
    _, names = await _fails(connect.session(**fields), grpc.StatusCode.INVALID_ARGUMENT)
    assert names == violated


async def test_origins_are_normalized(connect: Any) -> None:
    session = await connect.session(
        allowed_origins=[
            "HTTPS://App.Example.COM:443",
            "http://localhost:5173/",
            "https://app.example.com",
        ]
    )
    assert list(session.allowed_origins) == ["https://app.example.com", "http://localhost:5173"]


async def test_too_many_tags_once_end_user_tags_are_added(
    connect: Any, end_user: rpb.EndUser
) -> None:
    tags = {f"t{i}": "v" for i in range(9)}
    _, names = await _fails(
        connect.session(end_user=end_user, tags=tags), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert names == ["tags"]


async def test_reconnect_needs_an_existing_connection(connect: Any) -> None:
    target = spb.ReconnectTarget(integration_id="openai", connection_id="nope")
    reason, _ = await _fails(connect.session(reconnect=target), grpc.StatusCode.NOT_FOUND)
    assert reason == "CONNECTION_NOT_FOUND"
    created = await connect.tenant.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id="openai",
                credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key="sk-old")),
            )
        ),
        metadata=connect.metadata,
    )
    target.connection_id = created.connection_id
    session = await connect.session(reconnect=target)
    assert list(session.allowed_integrations) == ["openai"]
    assert session.connection_id == created.connection_id
    _, names = await _fails(
        connect.session(reconnect=target, allowed_integrations=["twilio"]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert names == ["allowed_integrations"]


async def test_list_pages_newest_first_and_delete(connect: Any) -> None:
    made = [await connect.session(tags={"n": str(i)}) for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await connect.sessions.ListConnectSessions(
            spb.ListConnectSessionsRequest(page_size=2, page_token=token), metadata=connect.metadata
        )
        seen += [s.session_id for s in page.connect_sessions]
        assert all(s.token == "" and s.connect_url == "" for s in page.connect_sessions)
        token = page.next_page_token
        if not token:
            break
    assert seen == [s.session_id for s in reversed(made)]
    await connect.sessions.DeleteConnectSession(
        spb.DeleteConnectSessionRequest(session_id=made[0].session_id), metadata=connect.metadata
    )
    reason, _ = await _fails(
        connect.sessions.GetConnectSession(
            spb.GetConnectSessionRequest(session_id=made[0].session_id), metadata=connect.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert reason == "CONNECT_SESSION_NOT_FOUND"
    reason, fields = await _fails(
        connect.sessions.GetConnectSession(
            spb.GetConnectSessionRequest(session_id="not-a-uuid"), metadata=connect.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert fields == ["session_id"]


async def test_sessions_of_another_environment_are_not_found(
    connect: Any, make_tenant: Any
) -> None:
    session = await connect.session()
    other = await make_tenant()
    for call in (
        connect.sessions.GetConnectSession(
            spb.GetConnectSessionRequest(session_id=session.session_id), metadata=other.metadata
        ),
        connect.sessions.DeleteConnectSession(
            spb.DeleteConnectSessionRequest(session_id=session.session_id), metadata=other.metadata
        ),
    ):
        reason, _ = await _fails(call, grpc.StatusCode.NOT_FOUND)
        assert reason == "CONNECT_SESSION_NOT_FOUND"
    listed = await connect.sessions.ListConnectSessions(
        spb.ListConnectSessionsRequest(), metadata=other.metadata
    )
    assert list(listed.connect_sessions) == []


async def test_create_and_delete_are_audited(connect: Any, backend: Any) -> None:
    session = await connect.session()
    await connect.sessions.DeleteConnectSession(
        spb.DeleteConnectSessionRequest(session_id=session.session_id), metadata=connect.metadata
    )
    rows = await backend.db.fetch(
        "SELECT method, outcome FROM audit_events WHERE environment = $1 ORDER BY id",
        connect.tenant.environment,
    )
    methods = [(r["method"], r["outcome"]) for r in rows]
    service = "/credbroker.v1.ConnectSessionService/"
    assert (service + "CreateConnectSession", "OK") in methods
    assert (service + "DeleteConnectSession", "OK") in methods
