"""The committed OpenAPI 3.1 document against the live server: it is a valid document, it is
what ``/openapi.json`` serves, every served route and method is described and every described
one is served, and real answers (successes and errors) validate against its schemas with
openapi-core."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from starlette.routing import Route

from credbroker.app import RunningServer
from credbroker.domain.models import Scope
from credbroker.rest import openapi

SERVER = "http://127.0.0.1:8080"  # the document's server URL; requests go to the test server


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    return OpenAPI.from_dict(openapi.document())  # validates the document itself (3.1)


def served_routes(server: RunningServer) -> set[tuple[str, str]]:
    assert server.http is not None
    app: Any = server.http.app
    routes = app.app.routes  # SecurityHeaders -> Starlette
    return {
        (route.path, method.lower())
        for route in routes
        if isinstance(route, Route)
        for method in set(route.methods or ()) - {"HEAD"}
    }


def described_routes() -> set[tuple[str, str]]:
    methods = {"get", "post", "put", "patch", "delete", "options"}
    return {
        (path, method)
        for path, item in openapi.document()["paths"].items()
        for method in item
        if method in methods
    }


def test_every_served_route_is_described_and_every_described_one_is_served(
    server: RunningServer,
) -> None:
    served, described = served_routes(server), described_routes()
    assert served - described == set(), (
        "routes served but missing from credbroker/rest/openapi.yaml (describe them there)"
    )
    assert described - served == set(), "routes described in openapi.yaml but not served"


async def test_openapi_json_serves_the_committed_document(http: httpx.AsyncClient) -> None:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == openapi.document()
    assert response.json()["openapi"] == "3.1.0"


class Recorder:
    """Sends requests, validates each request and answer against the document, and remembers
    which (path template, method, status) were seen."""

    def __init__(self, http: httpx.AsyncClient, spec: OpenAPI, token: str) -> None:
        self.http = http
        self.spec = spec
        self.token = token
        self.seen: set[tuple[str, str, int]] = set()

    async def call(
        self,
        method: str,
        template: str,
        *,
        path: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        body: Any = None,
        token: str | None = None,
        expect: int = 200,
        extra_headers: dict[str, str] | None = None,
    ) -> Any:
        concrete = template.format(**(path or {}))
        headers = {"Authorization": f"Bearer {token or self.token}", **(extra_headers or {})}
        if method == "OPTIONS":  # a browser's preflight carries no credentials
            del headers["Authorization"]
        response = await self.http.request(
            method, concrete, params=params, json=body, headers=headers
        )
        assert response.status_code == expect, response.text
        if method == "OPTIONS" or response.status_code == 204:
            self.seen.add((template, method.lower(), response.status_code))
            return None
        request = MockRequest(
            SERVER,
            method,
            concrete,
            path_pattern=template,
            args=params,
            view_args=path,
            headers=headers,
            data=response.request.content,
        )
        if expect < 400:
            self.spec.validate_request(request)
        self.spec.validate_response(
            request,
            MockResponse(
                response.content,
                status_code=response.status_code,
                headers=dict(response.headers),
                content_type=response.headers["content-type"],
            ),
        )
        self.seen.add((template, method.lower(), response.status_code))
        if not response.headers["content-type"].startswith("application/json"):
            return response.text
        return response.json()


async def test_answers_validate_against_the_document(
    http: httpx.AsyncClient, spec: OpenAPI, tenant: Any
) -> None:
    r = Recorder(http, spec, tenant.key)
    read_only, _ = await tenant.keys.create_key(
        tenant.environment, frozenset({Scope.CONNECTIONS_READ, Scope.INTEGRATIONS_READ})
    )
    unscoped, _ = await tenant.keys.create_key(tenant.environment, frozenset())
    await r.call("GET", "/healthz")
    await r.call("GET", "/openapi.json")
    await r.call("POST", "/integrations", body={"unique_key": "ai", "provider": "openai"})
    await r.call(
        "POST", "/integrations", body={"unique_key": "ai", "provider": "openai"}, expect=409
    )
    await r.call("GET", "/integrations")
    await r.call(
        "GET",
        "/integrations/{unique_key}",
        path={"unique_key": "ai"},
        params={"include": "webhook,credentials"},
    )
    await r.call("GET", "/integrations/{unique_key}", path={"unique_key": "no"}, expect=404)
    await r.call(
        "PATCH",
        "/integrations/{unique_key}",
        path={"unique_key": "ai"},
        body={"display_name": "AI"},
    )
    await r.call("GET", "/providers", params={"search": "open"})
    await r.call("GET", "/providers", token=unscoped, expect=403)
    await r.call("GET", "/providers/{provider}", path={"provider": "twilio"})
    await r.call("GET", "/providers/{provider}", path={"provider": "nope"}, expect=404)
    key = {"provider_config_key": "ai"}
    imported = await r.call(
        "POST",
        "/connections",
        body={
            "provider_config_key": "ai",
            "connection_id": "c1",
            "credentials": {"type": "API_KEY", "apiKey": "sk-x"},
            "metadata": {"a": {"b": [1, 2]}},
            "tags": {"team": "x"},
            "skip_verification": True,
        },
        expect=201,
    )
    assert "credentials" not in imported
    await r.call("POST", "/connections", body={"provider_config_key": "ai"}, expect=400)
    await r.call("GET", "/connections", params={"limit": "1", "tags[team]": "x"})
    await r.call("GET", "/connections", params={"limit": "0"}, expect=400)
    for template in ("/connections/{connection_id}", "/connection/{connection_id}"):
        await r.call("GET", template, path={"connection_id": "c1"}, params=key)
        await r.call("GET", template, path={"connection_id": "c1"}, params=key, token=read_only)
        await r.call("GET", template, path={"connection_id": "zz"}, params=key, expect=404)
    await r.call(
        "GET",
        "/connections/{connection_id}",
        path={"connection_id": "c1"},
        token="cbsk_" + "0" * 40,
        params=key,
        expect=401,
    )
    meta = {"connection_id": ["c1"], "provider_config_key": "ai", "metadata": {"m": 1}}
    await r.call("POST", "/connections/metadata", body=meta, expect=201)
    await r.call("PATCH", "/connections/metadata", body=meta)
    await r.call("PATCH", "/connections/metadata", body={**meta, "connection_id": "no"}, expect=404)
    await r.call(
        "PATCH",
        "/connections/{connection_id}",
        path={"connection_id": "c1"},
        params=key,
        body={"tags": {"a": "b"}},
    )
    await r.call("DELETE", "/integrations/{unique_key}", path={"unique_key": "ai"}, expect=400)
    await r.call("DELETE", "/connections/{connection_id}", path={"connection_id": "c1"}, params=key)
    await r.call(
        "DELETE",
        "/connections/{connection_id}",
        path={"connection_id": "c1"},
        params=key,
        expect=404,
    )
    await r.call("DELETE", "/integrations/{unique_key}", path={"unique_key": "ai"})
    await _connect_sessions(r)

    exercised = {(path, method) for path, method, _ in r.seen}
    assert described_routes() - exercised == set(), "every described operation is exercised"


async def _connect_sessions(r: Recorder) -> None:
    """The connect-session routes: the backend's (secret key) and the browser's (token)."""
    await r.call("POST", "/integrations", body={"unique_key": "cs", "provider": "openai"})
    await r.call("POST", "/integrations", body={"unique_key": "cb", "provider": "twilio"})
    origin = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    body = {"end_user": {"id": "u1"}, "allowed_origins": ["https://app.example.com"]}
    made = await r.call("POST", "/connect/sessions", body=body, expect=201)
    token = made["data"]["token"]
    await r.call("POST", "/connect/sessions", body={"ttl": 1}, expect=400)
    await r.call("GET", "/connect/session", token=token)
    await r.call("GET", "/connect/session", token="cbcs_x", expect=401)
    for template, path in (
        ("/connect/session", None),
        ("/api-auth/api-key/{integration_id}", {"integration_id": "cs"}),
        ("/api-auth/basic/{integration_id}", {"integration_id": "cb"}),
    ):
        await r.call(
            "OPTIONS",
            template,
            path=path,
            params={"connect_session_token": token},
            extra_headers=origin,
            expect=204,
        )
    key = {"integration_id": "cs"}
    await r.call(
        "POST", "/api-auth/api-key/{integration_id}", path=key, body={}, token=token, expect=400
    )
    connected = await r.call(
        "POST", "/api-auth/api-key/{integration_id}", path=key, body={"apiKey": "k"}, token=token
    )
    await r.call(
        "POST",
        "/connect/sessions/reconnect",
        body={"integration_id": "cs", "connection_id": connected["connectionId"]},
        expect=201,
    )
    basic = await r.call("POST", "/connect/sessions", body={}, expect=201)
    await r.call(
        "POST",
        "/api-auth/basic/{integration_id}",
        path={"integration_id": "cb"},
        body={"username": "u", "password": "p"},
        token=basic["data"]["token"],
    )
    await r.call("GET", "/connect", params={"session_token": token})
    await r.call("GET", "/connect/", params={"apiURL": "http://127.0.0.1:8080"})
    await r.call("GET", "/connect/static/{name}", path={"name": "connect.js"})
    await r.call("GET", "/connect/static/{name}", path={"name": "nope.js"}, expect=404)
    ended = await r.call("POST", "/connect/sessions", body={}, expect=201)
    await r.call("DELETE", "/connect/session", token=ended["data"]["token"], expect=204)
