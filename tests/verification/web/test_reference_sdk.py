"""The real ``@nangohq/frontend`` 0.71.10, unchanged, in headless Chromium on an app's own origin
against a real credbroker: ``openConnectUI()`` embedding the hosted page (its postMessage
protocol), and the headless ``auth()`` for API key and Basic, with the refusals an app meets."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

AUTH = """async ({host, token, integration, options}) => {
  const nango = new window.Nango({ host, connectSessionToken: token });
  try {
    return { ok: true, result: await nango.auth(integration, options) };
  } catch (error) {
    return { ok: false, name: error.name, type: error.type, message: error.message };
  }
}"""

OPEN_CONNECT_UI = """({host, token}) => {
  const nango = new window.Nango({ host, connectSessionToken: token });
  nango.openConnectUI({
    baseURL: `${host}/connect`,
    apiURL: host,
    onEvent: (event) => window.events.push(JSON.parse(JSON.stringify(event))),
  });
}"""


async def connect_link(server: Any, client: Any, **body: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.public_url) as http:
        response = await http.post(
            "/connect/sessions", json=body, headers={"authorization": f"Bearer {client.key}"}
        )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def _integration(client: Any, provider: str, display_name: str = "") -> str:
    integration_id = f"{provider}-{uuid.uuid4().hex[:6]}"
    await client.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(
                integration_id=integration_id, provider=provider, display_name=display_name
            )
        ),
        metadata=client.metadata,
    )
    return integration_id


async def _app(context: Any, origin: str) -> Any:
    page = await context.new_page()
    page.problems = []
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    await page.goto(f"{origin}/app.html")
    await page.wait_for_function("window.sdkLoaded === true")
    return page


async def _events(page: Any, kind: str) -> list[dict[str, Any]]:
    await page.wait_for_function(f"window.events.some((e) => e.type === {kind!r})", timeout=15000)
    events: list[dict[str, Any]] = await page.evaluate("window.events")
    return events


async def test_open_connect_ui_embeds_the_page_and_reports_the_connection(
    page_server: Any, apps: Any, vclient: Any, fake: Any, context: Any, shots: Any
) -> None:
    integration_id = await _integration(vclient, "openai", "OpenAI")
    link = await connect_link(
        page_server,
        vclient,
        end_user={"id": "u-sdk", "display_name": "Sam"},
        allowed_integrations=[integration_id],
        allowed_origins=[apps[0].origin],
    )
    page = await _app(context, apps[0].origin)
    await page.evaluate(OPEN_CONNECT_UI, {"host": page_server.public_url, "token": link["token"]})
    frame = page.frame_locator("#connect-ui")
    await frame.get_by_label("API key").wait_for()
    assert [e["type"] for e in await page.evaluate("window.events")] == ["ready"]
    await shots.take(page, "1-embedded-form")
    fake.accept("sk-embedded")
    await frame.get_by_label("API key").fill("sk-embedded")
    await frame.get_by_role("button", name="Connect").click()
    events = await _events(page, "connect")
    connected = next(e for e in events if e["type"] == "connect")
    assert connected["payload"]["providerConfigKey"] == integration_id
    connection_id = connected["payload"]["connectionId"]
    await shots.take(page, "2-embedded-success")
    await frame.get_by_role("button", name="Done").click()
    await _events(page, "close")
    assert await page.locator("#connect-ui").count() == 0  # the SDK removed its iframe
    await shots.take(page, "3-closed")
    assert page.problems == []
    access = await vclient.access(integration_id, connection_id)
    assert access.credentials.api_key.api_key == "sk-embedded"
    connection = await vclient.get(integration_id, connection_id)
    assert connection.end_user.id == "u-sdk" and connection.tags["end_user_id"] == "u-sdk"


async def test_embedded_errors_reach_the_app(
    page_server: Any, apps: Any, vclient: Any, fake: Any, context: Any, shots: Any
) -> None:
    integration_id = await _integration(vclient, "openai", "OpenAI")
    link = await connect_link(page_server, vclient, allowed_integrations=[integration_id])
    page = await _app(context, apps[0].origin)
    await page.evaluate(OPEN_CONNECT_UI, {"host": page_server.public_url, "token": link["token"]})
    frame = page.frame_locator("#connect-ui")
    await frame.get_by_label("API key").fill("sk-refused-embedded")
    await frame.get_by_role("button", name="Connect").click()
    events = await _events(page, "error")
    error = next(e for e in events if e["type"] == "error")
    assert error["payload"]["errorType"] == "connection_test_failed"
    assert "did not accept" in error["payload"]["errorMessage"]
    assert "sk-refused-embedded" not in str(events)
    await shots.take(page, "1-embedded-key-refused")
    await frame.locator("input").press("Escape")  # keyboard: Escape closes the embedded page
    await _events(page, "close")
    assert await page.locator("#connect-ui").count() == 0


async def test_an_origin_not_allowed_cannot_embed_or_submit(
    page_server: Any, apps: Any, vclient: Any, context: Any, shots: Any
) -> None:
    integration_id = await _integration(vclient, "openai")
    link = await connect_link(
        page_server,
        vclient,
        allowed_integrations=[integration_id],
        allowed_origins=[apps[0].origin],
    )
    page = await _app(context, apps[1].origin)  # not in any allowed list
    await page.evaluate(OPEN_CONNECT_UI, {"host": page_server.public_url, "token": link["token"]})
    await asyncio.sleep(2)
    assert await page.evaluate("window.events") == []  # framing refused: no "ready", no token sent
    frame = page.frame(url=lambda url: url.startswith(f"{page_server.public_url}/connect"))
    assert frame is None or await frame.locator("#app").count() == 0
    await shots.take(page, "1-framing-refused")
    result = await page.evaluate(
        AUTH,
        {
            "host": page_server.public_url,
            "token": link["token"],
            "integration": integration_id,
            "options": {"credentials": {"apiKey": "sk-from-elsewhere"}},
        },
    )
    assert result["ok"] is False and result["name"] == "TypeError"  # CORS refused the call
    listed = await vclient.connections.ListConnections(
        cpb.ListConnectionsRequest(integration_id=integration_id), metadata=vclient.metadata
    )
    assert list(listed.connections) == []


async def test_headless_auth_api_key_basic_and_refusals(
    page_server: Any, apps: Any, vclient: Any, fake: Any, context: Any
) -> None:
    openai = await _integration(vclient, "openai")
    twilio = await _integration(vclient, "twilio")
    datadog = await _integration(vclient, "datadog")
    page = await _app(context, apps[0].origin)
    host = page_server.public_url

    async def auth(token: str, integration: str, options: dict[str, Any]) -> dict[str, Any]:
        arguments = {"host": host, "token": token, "integration": integration, "options": options}
        result: dict[str, Any] = await page.evaluate(AUTH, arguments)
        return result

    fake.accept("sk-headless")
    fake.accept("AC9:secret")
    fake.accept("dd-headless")
    sessions = [
        await connect_link(page_server, vclient, allowed_origins=[apps[0].origin]) for _ in range(5)
    ]
    api_key = await auth(sessions[0]["token"], openai, {"credentials": {"apiKey": "sk-headless"}})
    assert api_key["ok"], api_key
    assert api_key["result"]["providerConfigKey"] == openai
    access = await vclient.access(openai, api_key["result"]["connectionId"])
    assert access.credentials.api_key.api_key == "sk-headless"

    reused = await auth(sessions[0]["token"], openai, {"credentials": {"apiKey": "sk-headless"}})
    assert (reused["ok"], reused["name"], reused["type"]) == (
        False,
        "Error",
        "connect_session_consumed",
    )

    basic = await auth(
        sessions[1]["token"], twilio, {"credentials": {"username": "AC9", "password": "secret"}}
    )
    assert basic["ok"], basic
    access = await vclient.access(twilio, basic["result"]["connectionId"])
    assert access.credentials.basic.username == "AC9"

    with_params = await auth(
        sessions[2]["token"],
        datadog,
        {"params": {"site": "datadoghq.eu"}, "credentials": {"apiKey": "dd-headless"}},
    )
    assert with_params["ok"], with_params
    access = await vclient.access(datadog, with_params["result"]["connectionId"])
    assert dict(access.connection_config) == {"site": "datadoghq.eu"}

    refused = await auth(sessions[3]["token"], openai, {"credentials": {"apiKey": "sk-nope"}})
    assert (refused["ok"], refused["type"]) == (False, "connection_test_failed")

    limited = await connect_link(
        page_server, vclient, allowed_integrations=[openai], allowed_origins=[apps[0].origin]
    )
    not_allowed = await auth(
        limited["token"], twilio, {"credentials": {"username": "AC9", "password": "secret"}}
    )
    assert (not_allowed["ok"], not_allowed["type"]) == (False, "integration_not_allowed")
    assert page.problems == []
