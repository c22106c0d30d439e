"""Connect sessions over HTTP against a real server: the backend's routes (secret key) and the
browser's API (session token only), in the reference product's shapes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import resources_pb2 as rpb

APP = "https://app.example.com"


def session_auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def _http_session(connect: Any, **body: Any) -> dict[str, Any]:
    response = await connect.http.post(
        "/connect/sessions", json=body, headers=connect.secret_headers()
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def _access(connect: Any, integration_id: str, connection_id: str) -> Any:
    return await connect.tenant.connections.AccessCredentials(
        cpb.AccessCredentialsRequest(integration_id=integration_id, connection_id=connection_id),
        metadata=connect.metadata,
    )


# ---------------------------------------------------------------------------------------------
# the backend's routes


async def test_post_connect_sessions_reference_shape(connect: Any, server: Any) -> None:
    data = await _http_session(
        connect,
        end_user={"id": "u1", "email": "u1@example.com", "display_name": "U One"},
        organization={"id": "org-9", "display_name": "Org"},
        tags={"plan": "pro"},
        allowed_integrations=["openai"],
        allowed_origins=[APP],
        ttl=600,
    )
    assert set(data) == {"token", "connect_link", "expires_at", "session_id"}
    assert data["connect_link"] == f"{server.public_url}/connect?session_token={data['token']}"
    assert data["expires_at"].endswith("Z")
    response = await connect.http.get("/connect/session", headers=session_auth(data["token"]))
    assert response.status_code == 200, response.text
    view = response.json()["data"]
    assert view["end_user"] == {"id": "u1", "email": "u1@example.com", "display_name": "U One"}
    assert view["organization"] == {"id": "org-9", "display_name": "Org"}
    assert view["allowed_integrations"] == ["openai"]
    assert view["integrations"][0]["credentials"] == [
        {"name": "apiKey", "title": "API key", "secret": True}
    ]
    assert view["isReconnecting"] is False
    assert APP in view["allowed_origins"]
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"overrides": {}}, "overrides"),
        ({"end_user": {"id": "x", "tags": {}}}, "end_user.tags"),
        ({"end_user": "x"}, "end_user"),
        ({"ttl": "30m"}, "ttl"),
        ({"ttl": 5}, "ttl"),
        ({"tags": {"a": 1}}, "tags[a]"),
        ({"allowed_integrations": "openai"}, "allowed_integrations"),
        ({"allowed_integrations": ["nope"]}, "allowed_integrations[0]"),
        (
            {"integrations_config_defaults": {"jira": {"authorization_params": {}}}},
            "integrations_config_defaults[jira].authorization_params",
        ),
    ],
)
async def test_post_connect_sessions_strict_body(
    connect: Any, body: dict[str, Any], path: str
) -> None:
    response = await connect.http.post(
        "/connect/sessions", json=body, headers=connect.secret_headers()
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_body"
    assert path in [e["path"] for e in error["errors"]]


async def test_post_connect_sessions_needs_the_scope(connect: Any) -> None:
    for headers, status, code in (
        ({}, 401, "missing_auth_header"),
        ({"authorization": "Bearer cbcs_x"}, 401, "unknown_account"),
        (dict(await connect.tenant.key_with()), 403, "forbidden"),
    ):
        response = await connect.http.post("/connect/sessions", json={}, headers=headers)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)


async def test_a_session_token_is_no_secret_key(connect: Any) -> None:
    data = await _http_session(connect)
    response = await connect.http.post(
        "/connect/sessions", json={}, headers=session_auth(data["token"])
    )
    assert response.status_code == 401
    response = await connect.http.get("/connect/session", headers=connect.secret_headers())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unknown_connect_session_token"


# ---------------------------------------------------------------------------------------------
# the browser's API


async def test_api_key_submission_stores_a_tagged_connection(connect: Any) -> None:
    data = await _http_session(
        connect,
        end_user={"id": "u-7", "email": "u7@example.com", "display_name": "Seven"},
        organization={"id": "org-7"},
        tags={"plan": "pro"},
    )
    response = await connect.http.post(
        f"/api-auth/api-key/openai?connect_session_token={data['token']}",
        json={"apiKey": "sk-browser-key"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"connectionId", "providerConfigKey"}
    assert body["providerConfigKey"] == "openai"
    uuid.UUID(body["connectionId"])  # server-generated
    access = await _access(connect, "openai", body["connectionId"])
    assert access.credentials.api_key.api_key == "sk-browser-key"
    connection = await connect.tenant.connections.GetConnection(
        cpb.GetConnectionRequest(integration_id="openai", connection_id=body["connectionId"]),
        metadata=connect.metadata,
    )
    assert connection.end_user == rpb.EndUser(
        id="u-7", email="u7@example.com", display_name="Seven"
    )
    assert connection.organization_id == "org-7"
    assert dict(connection.tags) == {
        "plan": "pro",
        "end_user_id": "u-7",
        "end_user_email": "u7@example.com",
        "organization_id": "org-7",
    }
    # Consumed: the token admits nobody any more.
    again = await connect.http.post(
        f"/api-auth/api-key/openai?connect_session_token={data['token']}", json={"apiKey": "sk-2"}
    )
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "connect_session_consumed"


async def test_basic_submission_with_params_merged_under_defaults(connect: Any) -> None:
    data = await _http_session(
        connect,
        allowed_integrations=["jira"],
        integrations_config_defaults={"jira": {"connection_config": {"subdomain": "acme"}}},
    )
    view = (await connect.http.get("/connect/session", headers=session_auth(data["token"]))).json()
    assert view["data"]["integrations"][0]["connection_config"] == []  # the session fixes it
    response = await connect.http.post(
        "/api-auth/basic/jira?params[subdomain]=evil&params[extra]=1",
        json={"username": "ada@example.com", "password": "tok"},
        headers=session_auth(data["token"]),
    )
    assert response.status_code == 200, response.text
    access = await _access(connect, "jira", response.json()["connectionId"])
    assert access.base_url == "https://acme.atlassian.net"  # the session wins
    assert dict(access.connection_config) == {"subdomain": "acme", "extra": "1"}
    assert access.credentials.basic.username == "ada@example.com"


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (
            "/api-auth/api-key/openai?connection_id=mine",
            {"apiKey": "k"},
            400,
            "invalid_query_params",
        ),
        ("/api-auth/api-key/openai?hmac=x", {"apiKey": "k"}, 400, "invalid_query_params"),
        ("/api-auth/api-key/openai", {"apiKey": ""}, 400, "invalid_body"),
        ("/api-auth/api-key/openai", {"apiKey": "k", "extra": 1}, 400, "invalid_body"),
        ("/api-auth/api-key/twilio", {"apiKey": "k"}, 400, "invalid_auth_mode"),
        ("/api-auth/basic/openai", {"username": "u", "password": "p"}, 400, "invalid_auth_mode"),
        ("/api-auth/basic/jira", {"username": "u", "password": "p"}, 400, "invalid_query_params"),
        ("/api-auth/api-key/missing", {"apiKey": "k"}, 404, "unknown_provider_config"),
    ],
)
async def test_submission_errors_use_reference_codes(
    connect: Any, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    data = await _http_session(connect)
    response = await connect.http.post(path, json=body, headers=session_auth(data["token"]))
    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
    assert "sk-echo" not in response.text


async def test_integration_not_allowed(connect: Any) -> None:
    data = await _http_session(connect, allowed_integrations=["openai"])
    response = await connect.http.post(
        "/api-auth/basic/twilio",
        json={"username": "a", "password": "b"},
        headers=session_auth(data["token"]),
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "integration_not_allowed"


async def test_expired_session(connect: Any, backend: Any) -> None:
    data = await _http_session(connect)
    await backend.db.execute(
        "UPDATE connect_sessions SET expire_time = now() - interval '1 second' WHERE id = $1",
        uuid.UUID(data["session_id"]),
    )
    for response in (
        await connect.http.get("/connect/session", headers=session_auth(data["token"])),
        await connect.http.post(
            "/api-auth/api-key/openai", json={"apiKey": "k"}, headers=session_auth(data["token"])
        ),
    ):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "connect_session_expired"


@pytest.mark.parametrize(
    "token", ["", "cbcs_", "cbcs_" + "a" * 49, "nango_connect_session_" + "0" * 64]
)
async def test_unknown_tokens(connect: Any, token: str) -> None:
    response = await connect.http.get(f"/connect/session?connect_session_token={token}")
    assert response.status_code == 401
    assert response.json()["error"]["code"] in {
        "unknown_connect_session_token",
        "missing_auth_header",
    }


async def test_two_different_tokens_are_refused(connect: Any) -> None:
    one, two = await _http_session(connect), await _http_session(connect)
    response = await connect.http.get(
        f"/connect/session?connect_session_token={one['token']}", headers=session_auth(two["token"])
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "malformed_auth_header"


async def test_failed_submissions_are_capped(connect: Any) -> None:
    data = await _http_session(connect)
    auth = session_auth(data["token"])
    for _ in range(5):
        response = await connect.http.post(
            "/api-auth/api-key/openai", json={"apiKey": ""}, headers=auth
        )
        assert response.status_code == 400
    response = await connect.http.post(
        "/api-auth/api-key/openai", json={"apiKey": "good"}, headers=auth
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "too_many_request"


async def test_delete_connect_session_ends_it(connect: Any) -> None:
    data = await _http_session(connect)
    auth = session_auth(data["token"])
    response = await connect.http.delete("/connect/session", headers=auth)
    assert response.status_code == 204 and response.content == b""
    response = await connect.http.get("/connect/session", headers=auth)
    assert response.status_code == 401


async def test_reconnect_replaces_only_the_credentials(connect: Any) -> None:
    from google.protobuf import struct_pb2

    metadata = struct_pb2.Struct()
    metadata.update({"plan": "gold", "seats": 3})
    created = await connect.tenant.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id="jira",
                connection_id="acct-1",
                credentials=rpb.Credentials(
                    basic=rpb.BasicCredentials(username="old", password="o")
                ),
                connection_config={"subdomain": "acme"},
                metadata=metadata,
                tags={"team": "core"},
            )
        ),
        metadata=connect.metadata,
    )
    response = await connect.http.post(
        "/connect/sessions/reconnect",
        json={
            "integration_id": "jira",
            "connection_id": created.connection_id,
            "end_user": {"id": "u"},
        },
        headers=connect.secret_headers(),
    )
    assert response.status_code == 201, response.text
    token = response.json()["data"]["token"]
    view = (await connect.http.get("/connect/session", headers=session_auth(token))).json()["data"]
    assert view["isReconnecting"] is True
    assert view["reconnect"] == {"integration_id": "jira", "connection_id": "acct-1"}
    refused = await connect.http.post(
        "/api-auth/basic/jira?params[subdomain]=x",
        json={"username": "new", "password": "n"},
        headers=session_auth(token),
    )
    assert refused.json()["error"]["code"] == "invalid_query_params"
    response = await connect.http.post(
        "/api-auth/basic/jira",
        json={"username": "new", "password": "n"},
        headers=session_auth(token),
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"connectionId": "acct-1", "providerConfigKey": "jira"}
    access = await _access(connect, "jira", "acct-1")
    assert (access.credentials.basic.username, access.credentials.basic.password) == ("new", "n")
    assert dict(access.connection_config) == {"subdomain": "acme"}
    after = await connect.tenant.connections.GetConnection(
        cpb.GetConnectionRequest(integration_id="jira", connection_id="acct-1"),
        metadata=connect.metadata,
    )
    assert dict(after.tags) == {"team": "core"}
    assert dict(after.metadata) == {"plan": "gold", "seats": 3}


async def test_submissions_are_audited_under_the_session(connect: Any, backend: Any) -> None:
    data = await _http_session(connect)
    auth = session_auth(data["token"])
    await connect.http.post("/api-auth/api-key/openai", json={"apiKey": ""}, headers=auth)
    ok = await connect.http.post("/api-auth/api-key/openai", json={"apiKey": "sk-a"}, headers=auth)
    rows = await backend.db.fetch(
        "SELECT key_id, method, integration_id, connection_id, outcome FROM audit_events"
        " WHERE environment = $1 ORDER BY id",
        connect.tenant.environment,
    )
    events = [tuple(r) for r in rows]
    key = f"connect_session:{data['session_id']}"
    route = "POST /api-auth/api-key/{integration_id}"
    assert (connect.tenant.key.split("_")[1], "POST /connect/sessions", "", "", "OK") in events
    assert (key, route, "openai", "", "INVALID_ARGUMENT") in events
    assert (key, route, "openai", ok.json()["connectionId"], "OK") in events


# ---------------------------------------------------------------------------------------------
# CORS and origins


async def test_cors_only_for_the_sessions_origins(connect: Any) -> None:
    data = await _http_session(connect, allowed_origins=[APP])
    path = f"/api-auth/api-key/openai?connect_session_token={data['token']}"
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    allowed = await connect.http.options(path, headers={"origin": APP, **preflight})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == APP
    assert "content-type" in allowed.headers["access-control-allow-headers"]
    assert allowed.headers["cache-control"] == "no-store"
    denied = await connect.http.options(
        path, headers={"origin": "https://evil.example", **preflight}
    )
    assert denied.status_code == 403
    assert "access-control-allow-origin" not in denied.headers
    # The request itself is refused from another origin, whatever the browser does with CORS.
    evil = await connect.http.post(
        path, json={"apiKey": "k"}, headers={"origin": "https://evil.example"}
    )
    assert evil.status_code == 403
    assert evil.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in evil.headers
    good = await connect.http.post(path, json={"apiKey": "k"}, headers={"origin": APP})
    assert good.status_code == 200
    assert good.headers["access-control-allow-origin"] == APP
    assert good.headers["vary"] == "Origin"


async def test_errors_carry_cors_for_allowed_origins(connect: Any, backend: Any) -> None:
    data = await _http_session(connect, allowed_origins=[APP])
    await backend.db.execute(
        "UPDATE connect_sessions SET expire_time = now() WHERE id = $1",
        uuid.UUID(data["session_id"]),
    )
    response = await connect.http.get(
        f"/connect/session?connect_session_token={data['token']}", headers={"origin": APP}
    )
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == APP


async def test_own_origin_is_always_allowed(connect: Any, server: Any) -> None:
    data = await _http_session(connect)
    response = await connect.http.get(
        "/connect/session", headers={"origin": server.public_url, **session_auth(data["token"])}
    )
    assert response.status_code == 200


async def test_tokens_in_query_strings_reach_no_log(
    connect: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level("DEBUG")
    data = await _http_session(connect)
    await connect.http.post(
        f"/api-auth/api-key/openai?connect_session_token={data['token']}", json={"apiKey": "sk-log"}
    )
    await connect.http.get(f"/nowhere?connect_session_token={data['token']}")
    captured = capsys.readouterr()
    # The test's own httpx client logs its request lines; everything else is the server's.
    server_records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    everything = "\n".join(r.getMessage() + str(r.__dict__) for r in server_records)
    everything += captured.out + captured.err
    assert data["token"] not in everything
    assert "sk-log" not in everything
