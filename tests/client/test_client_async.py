"""Every method of ``AsyncCredBroker`` against the real server, in one end-to-end story."""

from __future__ import annotations

import base64
import datetime
import uuid
from typing import Any

import pytest

from credbroker.client import (
    Aborted,
    AccessedCredentials,
    AsyncCredBroker,
    AuthMode,
    Connection,
    FailedPrecondition,
    Integration,
    NotFound,
    VerificationState,
)


async def test_every_method(target: str, tenant: Any) -> None:
    async with AsyncCredBroker(target, tenant.key) as client:
        # Catalog
        basic = [p async for p in client.list_providers(AuthMode.BASIC, page_size=7)]
        assert {"basic", "twilio", "jira-basic"} <= {p.name for p in basic}
        assert {p.auth_mode for p in basic} == {AuthMode.BASIC}
        everything = [p.name async for p in client.list_providers(page_size=50)]
        assert len(everything) > 100 and everything == sorted(everything)
        openai = await client.get_provider("openai")
        assert openai.auth_mode is AuthMode.API_KEY
        assert openai.base_url == "https://api.openai.com"
        assert openai.verifies_credentials
        jira = await client.get_provider("jira-basic")
        assert [f.name for f in jira.connection_config] == ["subdomain"]
        assert jira.connection_config[0].pattern

        # Integrations
        created = await client.create_integration(
            "openai-prod", "openai", display_name="OpenAI prod"
        )
        assert isinstance(created, Integration)
        assert (created.integration_id, created.provider, created.display_name) == (
            "openai-prod",
            "openai",
            "OpenAI prod",
        )
        assert created.auth_mode is AuthMode.API_KEY
        assert created.create_time is not None and created.create_time.tzinfo is datetime.UTC
        await client.create_integration("jira", "jira-basic")
        assert await client.get_integration("openai-prod") == created
        assert [i.integration_id async for i in client.list_integrations()] == [
            "jira",
            "openai-prod",
        ]
        renamed = await client.update_integration("openai-prod", display_name="Renamed")
        assert renamed.display_name == "Renamed"
        assert renamed.provider == "openai"

        # Connections
        stored = await client.create_connection(
            "openai-prod",
            connection_id="user-42",
            api_key="sk-live-example",
            metadata={"plan": "pro", "seats": 3},
            tags={"end_user_id": "42"},
        )
        assert isinstance(stored, Connection)
        assert stored.connection_id == "user-42"
        assert stored.credentials_set and stored.auth_mode is AuthMode.API_KEY
        assert stored.metadata == {"plan": "pro", "seats": 3.0}
        assert stored.tags == {"end_user_id": "42"}
        assert stored.etag
        assert stored.verification.state is VerificationState.UNVERIFIED
        generated = await client.create_connection(
            "jira",
            username="me@example.com",
            password="atlassian-token",
            connection_config={"subdomain": "acme"},
        )
        assert uuid.UUID(generated.connection_id)
        assert generated.connection_config_keys == ("subdomain",)
        assert await client.get_connection("openai-prod", "user-42") == stored

        everyone = [(c.integration_id, c.connection_id) async for c in client.list_connections()]
        assert everyone == [("jira", generated.connection_id), ("openai-prod", "user-42")]
        tagged = [
            c.connection_id
            async for c in client.list_connections("openai-prod", tags={"end_user_id": "42"})
        ]
        assert tagged == ["user-42"]
        verified = client.list_connections(verification_state=VerificationState.VERIFIED)
        assert [c async for c in verified] == []
        unverified = client.list_connections(verification_state=VerificationState.UNVERIFIED)
        assert len([c async for c in unverified]) == 2

        # The one method that reveals secrets
        creds = await client.access_credentials("openai-prod", "user-42")
        assert isinstance(creds, AccessedCredentials)
        assert creds.auth_mode is AuthMode.API_KEY
        assert creds.api_key == "sk-live-example"
        assert (creds.username, creds.password) == (None, None)
        assert creds.base_url == "https://api.openai.com"
        assert creds.headers == {"authorization": "Bearer sk-live-example"}
        assert creds.query_params == {}
        basic_creds = await client.access_credentials("jira", generated.connection_id)
        assert basic_creds.auth_mode is AuthMode.BASIC
        assert (basic_creds.username, basic_creds.password) == ("me@example.com", "atlassian-token")
        assert basic_creds.api_key is None
        assert basic_creds.base_url == "https://acme.atlassian.net"
        assert basic_creds.connection_config == {"subdomain": "acme"}
        token = base64.b64encode(b"me@example.com:atlassian-token").decode()
        assert basic_creds.headers == {"authorization": f"Basic {token}"}

        # Updates: only the fields passed, guarded by the etag
        updated = await client.update_connection(
            "openai-prod", "user-42", api_key="sk-rotated", tags={}, etag=stored.etag
        )
        assert updated.tags == {} and updated.metadata == stored.metadata
        assert updated.etag != stored.etag
        assert (await client.access_credentials("openai-prod", "user-42")).api_key == "sk-rotated"
        with pytest.raises(Aborted) as stale:
            await client.update_connection(
                "openai-prod", "user-42", metadata={"plan": "free"}, etag=stored.etag
            )
        assert stale.value.reason == "ETAG_MISMATCH"
        upserted = await client.update_connection(
            "openai-prod", "user-43", api_key="sk-other", allow_missing=True
        )
        assert upserted.connection_id == "user-43" and upserted.credentials_set

        # The session server runs without outbound verification.
        with pytest.raises(FailedPrecondition) as no_check:
            await client.verify_connection("openai-prod", "user-42")
        assert no_check.value.reason == "VERIFICATION_NOT_AVAILABLE"

        # Audit trail, newest first
        events = [e async for e in client.list_audit_events(integration_id="openai-prod")]
        accesses = [e for e in events if e.method.endswith("/AccessCredentials")]
        assert len(accesses) == 2 and {e.outcome for e in accesses} == {"OK"}
        assert all(e.connection_id == "user-42" for e in accesses)
        assert [e.event_id for e in events] == sorted(
            (e.event_id for e in events), key=int, reverse=True
        )
        assert events[0].event_time is not None

        # Deletes
        await client.delete_connection("openai-prod", "user-42")
        with pytest.raises(NotFound):
            await client.get_connection("openai-prod", "user-42")
        with pytest.raises(FailedPrecondition):
            await client.delete_integration("openai-prod")  # user-43 is still there
        await client.delete_integration("openai-prod", force=True)
        with pytest.raises(NotFound):
            await client.get_integration("openai-prod")
        assert [i.integration_id async for i in client.list_integrations()] == ["jira"]
