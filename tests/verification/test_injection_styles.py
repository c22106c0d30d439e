"""AccessCredentials hands out ready-to-use auth (base URL, headers, query parameters) computed
from the shipped catalog: exact values for each way providers take a credential. These run on
the suite's session server (shipped catalog, verification off)."""

from __future__ import annotations

import base64
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


async def stored_auth(
    client: Any,
    provider: str,
    credentials: rpb.Credentials,
    *,
    config: dict[str, str] | None = None,
    integration_config: dict[str, str] | None = None,
) -> tuple[str, dict[str, str], dict[str, str], Any]:
    integration_id = await client.integration(provider, integration_config)
    await client.create(integration_id, credentials, connection_id="c", config=config)
    access = await client.access(integration_id, "c")
    return access.base_url, dict(access.headers), dict(access.query_params), access


async def test_openai_bearer(session_client: Any) -> None:
    base_url, headers, query, access = await stored_auth(
        session_client, "openai", session_client.api_key("sk-proj-123")
    )
    assert base_url == "https://api.openai.com"
    assert headers == {"authorization": "Bearer sk-proj-123"}
    assert query == {}
    assert access.auth_mode == rpb.AUTH_MODE_API_KEY
    assert access.credentials.api_key.api_key == "sk-proj-123"


async def test_anthropic_key_header_and_default_version(session_client: Any) -> None:
    base_url, headers, query, access = await stored_auth(
        session_client, "anthropic", session_client.api_key("sk-ant-1")
    )
    assert base_url == "https://api.anthropic.com"
    assert headers == {"x-api-key": "sk-ant-1", "anthropic-version": "2023-06-01"}
    assert query == {}
    assert dict(access.connection_config) == {}  # the default is applied, not stored


async def test_anthropic_explicit_version(session_client: Any) -> None:
    _, headers, _, _ = await stored_auth(
        session_client,
        "anthropic",
        session_client.api_key("sk-ant-2"),
        config={"version": "2024-10-22"},
    )
    assert headers == {"x-api-key": "sk-ant-2", "anthropic-version": "2024-10-22"}


async def test_gemini_query_parameter(session_client: Any) -> None:
    base_url, headers, query, _ = await stored_auth(
        session_client, "google-gemini", session_client.api_key("AIzaXYZ")
    )
    assert base_url == "https://generativelanguage.googleapis.com"
    assert query == {"key": "AIzaXYZ"}
    assert headers == {}


async def test_twilio_basic(session_client: Any) -> None:
    base_url, headers, query, access = await stored_auth(
        session_client, "twilio", session_client.basic("AC123", "s3cr:et")
    )
    assert base_url == "https://api.twilio.com"
    assert headers == {"authorization": "Basic " + b64("AC123:s3cr:et")}
    assert query == {}
    assert access.auth_mode == rpb.AUTH_MODE_BASIC


async def test_stripe_key_as_username_with_empty_password(session_client: Any) -> None:
    base_url, headers, _, access = await stored_auth(
        session_client, "stripe-api-key", session_client.basic("rk_live_abc", "")
    )
    assert base_url == "https://api.stripe.com"
    assert headers == {"authorization": "Basic " + b64("rk_live_abc:")}
    assert access.credentials.basic.username == "rk_live_abc"
    assert access.credentials.basic.password == ""


async def test_jira_base_url_from_subdomain(session_client: Any) -> None:
    base_url, headers, _, _ = await stored_auth(
        session_client,
        "jira-basic",
        session_client.basic("me@acme.com", "tok"),
        config={"subdomain": "acme"},
    )
    assert base_url == "https://acme.atlassian.net"
    assert headers == {"authorization": "Basic " + b64("me@acme.com:tok")}


async def test_jira_needs_its_subdomain(session_client: Any) -> None:
    integration_id = await session_client.integration("jira-basic")
    for config in ({}, {"subdomain": "evil.com/x"}, {"subdomain": "a.b"}):
        error, _ = await session_client.fails(
            session_client.create(integration_id, session_client.basic("u", "p"), config=config),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert session_client.violated_fields(error) == ["connection.connection_config[subdomain]"]


async def test_datadog_two_headers_and_default_site(session_client: Any) -> None:
    base_url, headers, query, _ = await stored_auth(
        session_client,
        "datadog",
        session_client.api_key("dd-key"),
        config={"application_key": "dd-app"},
    )
    assert base_url == "https://api.datadoghq.com"
    assert headers == {"dd-api-key": "dd-key", "dd-application-key": "dd-app"}
    assert query == {}


async def test_datadog_other_site_without_application_key(session_client: Any) -> None:
    base_url, headers, _, _ = await stored_auth(
        session_client,
        "datadog",
        session_client.api_key("dd-key"),
        config={"site": "datadoghq.eu"},
    )
    assert base_url == "https://api.datadoghq.eu"
    assert headers == {"dd-api-key": "dd-key"}  # the optional header is left out


async def test_generic_api_key_custom_header(session_client: Any) -> None:
    base_url, headers, query, _ = await stored_auth(
        session_client,
        "api-key",
        session_client.api_key("tok-1"),
        integration_config={
            "base_url": "https://api.example.com/v2/",
            "header_name": "x-token",
            "value_template": "Token ${credentials.api_key}",
        },
    )
    assert base_url == "https://api.example.com/v2"
    assert headers == {"x-token": "Token tok-1"}
    assert query == {}


async def test_generic_api_key_query_parameter(session_client: Any) -> None:
    base_url, headers, query, _ = await stored_auth(
        session_client,
        "api-key",
        session_client.api_key("tok-2"),
        integration_config={"base_url": "https://api.example.com", "query_param": "api_key"},
    )
    assert base_url == "https://api.example.com"
    assert query == {"api_key": "tok-2"}
    assert headers == {}


async def test_generic_api_key_without_config(session_client: Any) -> None:
    base_url, headers, query, _ = await stored_auth(
        session_client, "api-key", session_client.api_key("tok-3")
    )
    assert base_url == ""
    assert headers == {"authorization": "Bearer tok-3"}
    assert query == {}


async def test_generic_basic(session_client: Any) -> None:
    base_url, headers, _, _ = await stored_auth(
        session_client,
        "basic",
        session_client.basic("u", "p"),
        integration_config={"base_url": "https://internal.example.com"},
    )
    assert base_url == "https://internal.example.com"
    assert headers == {"authorization": "Basic " + b64("u:p")}


async def test_generic_value_template_must_contain_the_key(session_client: Any) -> None:
    error, _ = await session_client.fails(
        session_client.integration("api-key", {"value_template": "Token fixed"}),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert session_client.violated_fields(error) == [
        "integration.integration_config[value_template]"
    ]


async def test_integration_config_change_applies_to_access(session_client: Any) -> None:
    integration_id = await session_client.integration(
        "api-key", {"base_url": "https://a.example.com"}
    )
    await session_client.create(integration_id, session_client.api_key("k"), connection_id="c")
    await session_client.integrations.UpdateIntegration(
        ipb.UpdateIntegrationRequest(
            integration=rpb.Integration(
                integration_id=integration_id,
                integration_config={"base_url": "https://b.example.com", "header_name": "x-key"},
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["integration_config"]),
        ),
        metadata=session_client.metadata,
    )
    access = await session_client.access(integration_id, "c")
    assert access.base_url == "https://b.example.com"
    assert dict(access.headers) == {"x-key": "Bearer k"}
    fetched = await session_client.integrations.GetIntegration(
        ipb.GetIntegrationRequest(integration_id=integration_id),
        metadata=session_client.metadata,
    )
    assert dict(fetched.integration_config) == {
        "base_url": "https://b.example.com",
        "header_name": "x-key",
    }
