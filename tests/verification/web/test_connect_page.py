"""The hosted connect page in a real headless Chromium against a real server (verification on,
against the local fake provider): opened top-level from a connect link, in every state an end
user can meet, with markup in every displayed name staying text."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

MARKUP_USER = 'Ada <img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
MARKUP_NAME = '<b id="injected">OpenAI</b> <img src=x onerror="window.pwned=3">'


async def integration(client: Any, provider: str, display_name: str = "") -> str:
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


async def connect_link(server: Any, client: Any, **body: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.public_url) as http:
        response = await http.post(
            "/connect/sessions", json=body, headers={"authorization": f"Bearer {client.key}"}
        )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def open_page(context: Any, url: str) -> Any:
    page = await context.new_page()
    page.problems = []
    page.on("console", lambda m: m.type in {"error", "warning"} and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    await page.goto(url)
    return page


async def assert_inert(page: Any) -> None:
    assert await page.evaluate("window.pwned") is None
    assert await page.locator("#injected").count() == 0
    assert await page.locator("main img, main script").count() == 0


async def test_api_key_top_level_from_the_link_to_success(
    page_server: Any, vclient: Any, fake: Any, context: Any, shots: Any
) -> None:
    integration_id = await integration(vclient, "openai", MARKUP_NAME)
    link = await connect_link(
        page_server,
        vclient,
        end_user={"id": "u-1", "email": "ada@example.com", "display_name": MARKUP_USER},
        allowed_integrations=[integration_id],
    )
    page = await open_page(context, link["connect_link"])
    await page.get_by_label("API key").wait_for()
    assert "session_token" not in page.url  # dropped from the address bar
    assert page.url == f"{page_server.public_url}/connect"
    assert MARKUP_USER in await page.locator("main").inner_text()
    assert MARKUP_NAME in await page.get_by_role("heading").inner_text()
    await assert_inert(page)
    await shots.take(page, "1-form")

    fake.accept("sk-browser-ok")
    await page.get_by_label("API key").fill("sk-browser-ok")
    await page.get_by_role("button", name="Connect").click()
    await page.get_by_text("is connected").wait_for()
    await shots.take(page, "2-success")
    assert "sk-browser-ok" not in await page.content()
    await assert_inert(page)
    assert page.problems == []

    listed = await vclient.connections.ListConnections(
        cpb.ListConnectionsRequest(integration_id=integration_id, tags={"end_user_id": "u-1"}),
        metadata=vclient.metadata,
    )
    (connection,) = listed.connections
    assert connection.end_user.display_name == MARKUP_USER
    assert connection.verification.state == rpb.Verification.VERIFIED
    access = await vclient.access(integration_id, connection.connection_id)
    assert access.credentials.api_key.api_key == "sk-browser-ok"


async def test_list_then_basic_form_by_keyboard(
    page_server: Any, vclient: Any, fake: Any, context: Any, shots: Any
) -> None:
    await integration(vclient, "openai")
    twilio = await integration(vclient, "twilio", "Twilio")
    link = await connect_link(page_server, vclient, end_user={"id": "u-2", "display_name": "Bo"})
    page = await open_page(context, link["connect_link"])
    await page.get_by_role("heading", name="Choose a service").wait_for()
    await shots.take(page, "1-list")
    # Keyboard only: the first choice has focus; Tab to Twilio, Enter, type, Enter.
    while await page.evaluate("document.activeElement.dataset.integration") != twilio:
        await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await page.get_by_label("Username").wait_for()
    assert await page.evaluate("document.activeElement.name") == "username"
    await shots.take(page, "2-basic-form")
    fake.accept("AC123:tok")
    await page.keyboard.type("AC123")
    await page.keyboard.press("Tab")
    await page.keyboard.type("tok")
    assert await page.get_by_label("Password").get_attribute("type") == "password"
    await page.keyboard.press("Enter")
    await page.get_by_text("is connected").wait_for()
    await shots.take(page, "3-success")
    assert page.problems == []


async def test_refused_key_and_unreachable_provider_in_words(
    page_server: Any, vclient: Any, fake: Any, context: Any, shots: Any
) -> None:
    integration_id = await integration(vclient, "openai", MARKUP_NAME)
    link = await connect_link(page_server, vclient, allowed_integrations=[integration_id])
    page = await open_page(context, link["connect_link"])
    await page.get_by_label("API key").fill("sk-refused")
    await page.get_by_role("button", name="Connect").click()
    alert = page.locator("#form-message")
    await alert.wait_for()
    assert await alert.get_attribute("data-error-code") == "connection_test_failed"
    assert "did not accept these credentials" in await alert.inner_text()
    assert MARKUP_NAME in await alert.inner_text()
    await assert_inert(page)
    await shots.take(page, "1-key-refused")
    assert fake.requests_with("sk-refused")

    fake.fail("/openai/v1/models", 503)
    await page.get_by_label("API key").fill("sk-other")
    await page.get_by_role("button", name="Connect").click()
    await page.locator("#form-message[data-error-code=provider_unavailable]").wait_for()
    assert "could not be reached" in await alert.inner_text()
    await shots.take(page, "2-provider-unreachable")

    await page.get_by_label("API key").fill("")
    await page.get_by_role("button", name="Connect").click()
    await page.locator("#form-message[data-error-code=invalid_body]").wait_for()
    invalid = page.get_by_label("API key")
    assert await invalid.get_attribute("aria-invalid") == "true"
    await shots.take(page, "3-field-error")
    listed = await vclient.connections.ListConnections(
        cpb.ListConnectionsRequest(integration_id=integration_id), metadata=vclient.metadata
    )
    assert list(listed.connections) == []


async def test_config_fields_with_labels_hints_and_defaults(
    page_server: Any, vclient: Any, fake: Any, context: Any, shots: Any
) -> None:
    integration_id = await integration(vclient, "datadog", "Datadog")
    link = await connect_link(page_server, vclient, allowed_integrations=[integration_id])
    page = await open_page(context, link["connect_link"])
    site = page.get_by_label("Datadog site (the host after app. in your Datadog URL)")
    await site.wait_for()
    assert await site.input_value() == "datadoghq.com"  # the catalog's default
    application_key = page.get_by_label("Application key (optional)")
    assert await application_key.get_attribute("type") == "password"  # a secret config field
    await shots.take(page, "1-config-form")
    await site.fill("not a site")
    await page.get_by_label("API key").fill("dd-key")
    await page.get_by_role("button", name="Connect").click()
    await page.locator("[aria-invalid=true][name='params[site]']").wait_for()
    await shots.take(page, "2-config-refused-by-server")
    fake.accept("dd-key")
    await site.fill("datadoghq.eu")
    await application_key.fill("dd-app-key")
    await page.get_by_role("button", name="Connect").click()
    await page.get_by_text("is connected").wait_for()
    listed = await vclient.connections.ListConnections(
        cpb.ListConnectionsRequest(integration_id=integration_id), metadata=vclient.metadata
    )
    access = await vclient.access(integration_id, listed.connections[0].connection_id)
    assert dict(access.connection_config) == {
        "site": "datadoghq.eu",
        "application_key": "dd-app-key",
    }


async def test_reused_expired_and_invalid_links(
    page_server: Any, vclient: Any, fake: Any, context: Any, shots: Any, vbackend: Any
) -> None:
    integration_id = await integration(vclient, "openai")
    used = await connect_link(page_server, vclient, allowed_integrations=[integration_id])
    page = await open_page(context, used["connect_link"])
    fake.accept("sk-once")
    await page.get_by_label("API key").fill("sk-once")
    await page.get_by_role("button", name="Connect").click()
    await page.get_by_text("is connected").wait_for()
    again = await open_page(context, used["connect_link"])
    await again.locator("[data-error-code=connect_session_consumed]").wait_for()
    assert "already used" in await again.locator("main").inner_text()
    await shots.take(again, "1-already-used")

    expired = await connect_link(page_server, vclient)
    await vbackend.db.execute(
        "UPDATE connect_sessions SET expire_time = now() WHERE id = $1",
        uuid.UUID(expired["session_id"]),
    )
    page = await open_page(context, expired["connect_link"])
    await page.locator("[data-error-code=connect_session_expired]").wait_for()
    assert "has expired" in await page.locator("main").inner_text()
    await shots.take(page, "2-expired")

    page = await open_page(context, f"{page_server.public_url}/connect?session_token=cbcs_forged")
    await page.locator("[data-error-code=unknown_connect_session_token]").wait_for()
    await shots.take(page, "3-invalid-link")
    page = await open_page(context, f"{page_server.public_url}/connect")
    await page.locator("[data-error-code=missing_auth_header]").wait_for()
    await shots.take(page, "4-no-token")


async def test_reconnect_keeps_metadata_and_tags(
    page_server: Any, vclient: Any, fake: Any, context: Any, shots: Any
) -> None:
    integration_id = await integration(vclient, "openai", "OpenAI")
    created = await vclient.create(integration_id, vclient.api_key("sk-old"), skip=True)
    await vclient.connections.UpdateConnection(
        cpb.UpdateConnectionRequest(
            connection=rpb.Connection(
                integration_id=integration_id,
                connection_id=created.connection_id,
                tags={"team": "core"},
            ),
        ),
        metadata=vclient.metadata,
    )
    async with httpx.AsyncClient(base_url=page_server.public_url) as http:
        response = await http.post(
            "/connect/sessions/reconnect",
            json={"integration_id": integration_id, "connection_id": created.connection_id},
            headers={"authorization": f"Bearer {vclient.key}"},
        )
    link = response.json()["data"]["connect_link"]
    page = await open_page(context, link)
    await page.get_by_role("heading", name="Update your OpenAI credentials").wait_for()
    await shots.take(page, "1-reconnect-form")
    fake.accept("sk-new")
    await page.get_by_label("API key").fill("sk-new")
    await page.get_by_role("button", name="Update").click()
    await page.get_by_text("is connected").wait_for()
    await shots.take(page, "2-reconnected")
    after = await vclient.get(integration_id, created.connection_id)
    assert dict(after.tags) == {"team": "core"}
    access = await vclient.access(integration_id, created.connection_id)
    assert access.credentials.api_key.api_key == "sk-new"


async def test_page_headers(page_server: Any, apps: Any, vclient: Any) -> None:
    link = await connect_link(page_server, vclient, allowed_origins=["https://shop.example"])
    async with httpx.AsyncClient() as http:
        plain = await http.get(f"{page_server.public_url}/connect")
        named = await http.get(link["connect_link"])
        script = await http.get(f"{page_server.public_url}/connect/static/connect.js")
        missing = await http.get(f"{page_server.public_url}/connect/static/../app.py")
    csp = plain.headers["content-security-policy"]
    assert "script-src 'nonce-" in csp and "'unsafe-inline'" not in csp
    assert "default-src 'none'" in csp and "require-trusted-types-for 'script'" in csp
    assert f"frame-ancestors 'self' {apps[0].origin}" in csp
    assert "https://shop.example" not in csp
    assert "https://shop.example" in named.headers["content-security-policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'nonce="{nonce}"' in plain.text
    assert nonce not in named.text  # a fresh nonce per response
    for response in (plain, named, script):
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert script.headers["content-type"].startswith("text/javascript")
    assert missing.status_code == 404
