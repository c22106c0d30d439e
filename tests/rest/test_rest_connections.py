"""The reference-shaped connection routes over a real HTTP listener (the suite's shared server):
shapes, scopes, reveals, filters, keyset pages, metadata, tags, deletes and error bodies."""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx
import pytest

from credbroker.domain.models import Scope
from credbroker.v1 import audit_service_pb2, audit_service_pb2_grpc

SECRET = "sk-rest-canary-7f3e9a"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def scoped(tenant: Any, *scopes: Scope) -> dict[str, str]:
    token, _ = await tenant.keys.create_key(tenant.environment, frozenset(scopes))
    return bearer(token)


async def seed(http: httpx.AsyncClient, tenant: Any, *connection_ids: str) -> None:
    headers = bearer(tenant.key)
    created = await http.post(
        "/integrations", json={"unique_key": "openai", "provider": "openai"}, headers=headers
    )
    assert created.status_code == 200, created.text
    for connection_id in connection_ids:
        imported = await http.post(
            "/connections",
            headers=headers,
            json={
                "provider_config_key": "openai",
                "connection_id": connection_id,
                "credentials": {"type": "API_KEY", "apiKey": SECRET},
                "metadata": {"plan": "free"},
                "tags": {"End_User_Id": "u-" + connection_id},
                "skip_verification": True,
            },
        )
        assert imported.status_code == 201, imported.text
        assert SECRET not in imported.text


async def test_get_with_credentials_read_reveals_and_is_audited(
    http: httpx.AsyncClient, tenant: Any, channel: grpc.aio.Channel
) -> None:
    await seed(http, tenant, "user-1")
    response = await http.get(
        "/connections/user-1", params={"provider_config_key": "openai"}, headers=bearer(tenant.key)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["credentials"] == {"type": "API_KEY", "apiKey": SECRET}
    assert body["connection_id"] == "user-1" and body["provider"] == "openai"
    assert body["provider_config_key"] == "openai"
    assert body["tags"] == {"end_user_id": "u-user-1"}  # keys lowercased like the reference
    assert body["metadata"] == {"plan": "free"}
    assert body["credbroker"]["headers"] == {"authorization": f"Bearer {SECRET}"}
    assert body["credbroker"]["base_url"] == "https://api.openai.com"
    assert body["created_at"].endswith("+00:00") and body["last_fetched_at"] is None
    assert response.headers["cache-control"] == "no-store"

    stub = audit_service_pb2_grpc.AuditServiceStub(channel)
    listed = await stub.ListAuditEvents(
        audit_service_pb2.ListAuditEventsRequest(connection_id="user-1"), metadata=tenant.metadata
    )
    methods = [(e.method, e.outcome) for e in listed.audit_events]
    assert ("GET /connections/{connection_id}", "OK") in methods
    # Every record names the call it came from (the id admission gave it).
    assert all(len(e.request_id) >= 16 for e in listed.audit_events)


async def test_get_without_credentials_read_has_no_credentials_field(
    http: httpx.AsyncClient, tenant: Any
) -> None:
    await seed(http, tenant, "user-1")
    headers = await scoped(tenant, Scope.CONNECTIONS_READ)
    for path in ("/connections/user-1", "/connection/user-1"):
        response = await http.get(path, params={"provider_config_key": "openai"}, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert "credentials" not in body and body["connection_config"] == {}
        assert "headers" not in body["credbroker"] and SECRET not in response.text


async def test_reference_sdk_query_flags_are_accepted(http: httpx.AsyncClient, tenant: Any) -> None:
    await seed(http, tenant, "user-1")
    params = {
        "provider_config_key": "openai",
        "force_refresh": "false",
        "refresh_token": "false",
        "refresh_github_app_jwt_token": "false",
    }
    ok = await http.get("/connections/user-1", params=params, headers=bearer(tenant.key))
    assert ok.status_code == 200
    bad = await http.get(
        "/connections/user-1",
        params={**params, "force_refresh": "yes"},
        headers=bearer(tenant.key),
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_query_params"


async def test_errors_use_the_reference_codes_and_never_echo_input(
    http: httpx.AsyncClient, tenant: Any, make_tenant: Any
) -> None:
    await seed(http, tenant, "user-1")
    headers = bearer(tenant.key)

    async def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
        assert response.status_code == status, response.text
        body: dict[str, Any] = response.json()
        assert body["error"]["code"] == code
        assert SECRET not in response.text and "cbsk_" not in response.text
        return body

    await error(await http.get("/connections/user-1"), 401, "missing_auth_header")
    await error(
        await http.get("/connections/user-1", headers={"Authorization": "Basic abc"}),
        401,
        "malformed_auth_header",
    )
    await error(
        await http.get("/connections/user-1", headers=bearer("cbsk_" + "x" * 40)),
        401,
        "unknown_account",
    )
    await error(
        await http.get(
            "/connections/nope", params={"provider_config_key": "openai"}, headers=headers
        ),
        404,
        "unknown_connection",
    )
    await error(await http.get("/connections/user-1", headers=headers), 400, "invalid_query_params")
    await error(
        await http.get(
            "/connections/user-1",
            params={"provider_config_key": "openai", "apiKey": SECRET},
            headers=headers,
        ),
        400,
        "invalid_query_params",
    )
    body = await error(
        await http.post(
            "/connections",
            headers=headers,
            json={
                "provider_config_key": "openai",
                "credentials": {"type": "API_KEY", "apiKey": ""},
            },
        ),
        400,
        "invalid_body",
    )
    assert body["error"]["errors"][0]["path"] == "credentials.apiKey"
    await error(
        await http.post(
            "/connections",
            headers=headers,
            json={
                "provider_config_key": "missing",
                "credentials": {"type": "API_KEY", "apiKey": SECRET},
            },
        ),
        404,
        "unknown_provider_config",
    )
    await error(
        await http.post(
            "/connections",
            headers=headers,
            json={
                "provider_config_key": "openai",
                "credentials": {"type": "BASIC", "username": SECRET, "password": SECRET},
                "skip_verification": True,
            },
        ),
        400,
        "invalid_auth_mode",
    )
    await error(
        await http.post(
            "/connections",
            headers={**headers, "Content-Type": "text/plain"},
            content=json.dumps({"provider_config_key": "openai"}),
        ),
        400,
        "invalid_body",
    )
    await error(
        await http.post("/connections", headers=headers, content=b"{" * 10 + SECRET.encode()),
        400,
        "invalid_body",
    )
    big = await http.post(
        "/connections", headers=headers, content=b'{"x":"' + b"a" * (5 * 1024 * 1024) + b'"}'
    )
    assert big.status_code == 413
    # Scope: a read-only key cannot write.
    read_only = await scoped(tenant, Scope.CONNECTIONS_READ)
    forbidden = await error(
        await http.delete(
            "/connections/user-1", params={"provider_config_key": "openai"}, headers=read_only
        ),
        403,
        "forbidden",
    )
    assert forbidden["error"]["payload"] == {"scope": "connections:write"}


async def test_another_environments_connection_is_answered_like_a_missing_one(
    http: httpx.AsyncClient, tenant: Any, make_tenant: Any
) -> None:
    await seed(http, tenant, "user-1")
    other = await make_tenant()
    await seed(http, other, "mine")
    params = {"provider_config_key": "openai"}
    theirs = await http.get("/connections/user-1", params=params, headers=bearer(other.key))
    missing = await http.get("/connections/absent", params=params, headers=bearer(other.key))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.content == missing.content
    listed = await http.get("/connections", headers=bearer(other.key))
    assert [c["connection_id"] for c in listed.json()["connections"]] == ["mine"]


async def test_list_filters_and_keyset_pages(http: httpx.AsyncClient, tenant: Any) -> None:
    await seed(http, tenant, *(f"c-{i:02d}" for i in range(7)), "other-x")
    headers = bearer(tenant.key)
    seen: list[str] = []
    params: dict[str, str] = {"limit": "3", "search": "C-"}
    for _ in range(5):
        page = await http.get("/connections", params=params, headers=headers)
        assert page.status_code == 200, page.text
        body = page.json()
        assert all("credentials" not in c for c in body["connections"])
        seen += [c["connection_id"] for c in body["connections"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert seen == [f"c-{i:02d}" for i in range(7)]
    # A cursor replayed with other filters is refused.
    replay = await http.get(
        "/connections", params={"cursor": params["cursor"], "search": "x"}, headers=headers
    )
    assert replay.status_code == 400 and replay.json()["error"]["code"] == "invalid_query_params"

    by_tag = await http.get("/connections", params={"tags[END_USER_ID]": "u-c-03"}, headers=headers)
    assert [c["connection_id"] for c in by_tag.json()["connections"]] == ["c-03"]
    exact = await http.get(
        "/connections",
        params={"connectionId": "other-x", "integrationId": "openai,x"},
        headers=headers,
    )
    item = exact.json()["connections"][0]
    assert set(item) == {
        "id",
        "connection_id",
        "provider_config_key",
        "provider",
        "created",
        "metadata",
        "tags",
        "errors",
        "end_user",
    }
    assert item["provider"] == "openai"
    page = await http.get("/connections", params={"page": "2"}, headers=headers)
    assert page.status_code == 400


async def test_tags_patch_metadata_replace_and_merge_and_delete(
    http: httpx.AsyncClient, tenant: Any
) -> None:
    await seed(http, tenant, "a", "b")
    headers = bearer(tenant.key)
    key = {"provider_config_key": "openai"}
    patched = await http.patch(
        "/connections/a", params=key, json={"tags": {"Team": "blue"}}, headers=headers
    )
    assert patched.status_code == 200 and patched.json() == {"success": True}

    body = {"connection_id": ["a", "b"], "provider_config_key": "openai", "metadata": {"x": 1}}
    merged = await http.patch("/connections/metadata", json=body, headers=headers)
    assert merged.status_code == 200 and merged.json() == body
    replaced = await http.post(
        "/connections/metadata",
        json={"connection_id": "b", "provider_config_key": "openai", "metadata": {"y": 2}},
        headers=headers,
    )
    assert replaced.status_code == 201
    unknown = await http.post(
        "/connections/metadata",
        json={"connection_id": ["a", "zz"], "provider_config_key": "openai", "metadata": {}},
        headers=headers,
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_connection"

    a = (await http.get("/connections/a", params=key, headers=headers)).json()
    b = (await http.get("/connections/b", params=key, headers=headers)).json()
    assert a["tags"] == {"team": "blue"} and a["metadata"] == {"plan": "free", "x": 1}
    assert b["metadata"] == {"y": 2}

    deleted = await http.delete("/connections/a", params=key, headers=headers)
    assert deleted.status_code == 200 and deleted.json() == {"success": True}
    again = await http.delete("/connections/a", params=key, headers=headers)
    assert again.status_code == 404 and again.json()["error"]["code"] == "unknown_connection"


async def test_import_replaces_an_existing_connection(http: httpx.AsyncClient, tenant: Any) -> None:
    await seed(http, tenant, "a")
    headers = bearer(tenant.key)
    replaced = await http.post(
        "/connections",
        headers=headers,
        json={
            "provider_config_key": "openai",
            "connection_id": "a",
            "credentials": {"type": "API_KEY", "apiKey": "sk-new"},
            "skip_verification": True,
        },
    )
    assert replaced.status_code == 201, replaced.text
    assert replaced.json()["metadata"] == {"plan": "free"}  # not given: kept
    got = await http.get(
        "/connections/a", params={"provider_config_key": "openai"}, headers=headers
    )
    assert got.json()["credentials"]["apiKey"] == "sk-new"
    generated = await http.post(
        "/connections",
        headers=headers,
        json={
            "provider_config_key": "openai",
            "credentials": {"type": "API_KEY", "apiKey": "sk-2"},
            "skip_verification": True,
        },
    )
    assert generated.status_code == 201 and len(generated.json()["connection_id"]) == 36


@pytest.mark.parametrize("field", ["end_user", "webhook_url_override", "surprise"])
async def test_import_refuses_fields_it_does_not_support(
    http: httpx.AsyncClient, tenant: Any, field: str
) -> None:
    await seed(http, tenant)
    response = await http.post(
        "/connections",
        headers=bearer(tenant.key),
        json={
            "provider_config_key": "openai",
            "credentials": {"type": "API_KEY", "apiKey": SECRET},
            field: {"id": "x"},
        },
    )
    assert response.status_code == 400
    expected = "body" if field == "surprise" else field  # unknown names are never echoed
    assert response.json()["error"]["errors"][0]["path"] == expected
    assert "surprise" not in response.text or field != "surprise"


async def test_unknown_names_are_not_echoed(http: httpx.AsyncClient, tenant: Any) -> None:
    """A secret pasted where a parameter or field name belongs never comes back."""
    await seed(http, tenant, "a")
    headers = bearer(tenant.key)
    responses = [
        await http.get(f"/connections?{SECRET}=1", headers=headers),
        await http.get(
            "/connections/a", params={"provider_config_key": "openai", SECRET: "x"}, headers=headers
        ),
        await http.post(
            "/connections", json={"provider_config_key": "openai", SECRET: 1}, headers=headers
        ),
        await http.post(
            "/connections",
            json={
                "provider_config_key": "openai",
                "credentials": {"type": "API_KEY", "apiKey": "k", SECRET: "x"},
            },
            headers=headers,
        ),
        await http.get("/connections", params={"tags[a]": "1", "tags[A]": SECRET}, headers=headers),
    ]
    for response in responses:
        assert response.status_code == 400, response.text
        assert SECRET not in response.text


async def _connect(http: httpx.AsyncClient, tenant: Any, end_user: dict[str, str], org: str) -> str:
    """A connection made through a connect session (the only way an end user is stored)."""
    made = await http.post(
        "/connect/sessions",
        json={"end_user": end_user, "organization": {"id": org}},
        headers=bearer(tenant.key),
    )
    assert made.status_code == 201, made.text
    token = made.json()["data"]["token"]
    connected = await http.post(
        "/api-auth/api-key/openai", json={"apiKey": SECRET}, headers=bearer(token)
    )
    assert connected.status_code == 200, connected.text
    return str(connected.json()["connectionId"])


async def test_end_user_is_shown_and_filters_and_search_reach_it(
    http: httpx.AsyncClient, tenant: Any
) -> None:
    await seed(http, tenant, "plain")
    ada = await _connect(
        http, tenant, {"id": "eu-ada", "email": "ada@example.com", "display_name": "Ada L"}, "org-1"
    )
    bob = await _connect(http, tenant, {"id": "eu-bob", "email": "bob@example.com"}, "org-2")
    headers = bearer(tenant.key)

    async def ids(**params: str) -> list[str]:
        response = await http.get("/connections", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [c["connection_id"] for c in response.json()["connections"]]

    assert await ids(endUserId="eu-ada") == [ada]
    assert await ids(endUserOrganizationId="org-2") == [bob]
    assert await ids(search="ADA@example") == [ada]
    assert sorted(await ids(search="example.com")) == sorted([ada, bob])
    assert await ids(endUserId="eu-ada", endUserOrganizationId="org-2") == []
    got = await http.get(
        f"/connections/{ada}", params={"provider_config_key": "openai"}, headers=headers
    )
    assert got.json()["end_user"] == {
        "id": "eu-ada",
        "display_name": "Ada L",
        "email": "ada@example.com",
        "tags": {},
        "organization": {"id": "org-1", "display_name": None},
    }
    plain = await http.get(
        "/connections/plain", params={"provider_config_key": "openai"}, headers=headers
    )
    assert plain.json()["end_user"] is None
