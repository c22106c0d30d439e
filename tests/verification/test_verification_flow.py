"""Credentials are checked against the provider before they are stored: through a real server
whose catalog points a few providers at the loopback fake provider (conftest.py)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import resources_pb2 as rpb

VERIFIED = rpb.Verification.VERIFIED
UNVERIFIED = rpb.Verification.UNVERIFIED
OPENAI_PATH = "/openai/v1/models"


def new_key(prefix: str = "sk") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def assert_not_stored(client: Any, integration_id: str, connection_id: str) -> None:
    await client.fails(client.get(integration_id, connection_id), grpc.StatusCode.NOT_FOUND)


# ---------------------------------------------------------------------------------------------
# create


async def test_good_key_is_stored_verified(vclient: Any, fake: Any) -> None:
    key = new_key()
    fake.accept(key)
    integration_id = await vclient.integration("openai")
    before = time.time()
    created = await vclient.create(integration_id, vclient.api_key(key), connection_id="good")

    assert created.verification.state == VERIFIED
    assert created.verification.http_status == 200
    assert created.verification.consecutive_failures == 0
    assert created.verification.HasField("verify_time")
    assert before - 5 <= created.verification.verify_time.ToDatetime().timestamp() <= time.time()
    fetched = await vclient.get(integration_id, "good")
    assert fetched.verification == created.verification
    (request,) = fake.requests_with(key)
    assert (request.method, request.path, request.status) == ("GET", OPENAI_PATH, 200)
    assert request.headers["authorization"] == f"Bearer {key}"


async def test_rejected_key_is_not_stored_and_not_echoed(vclient: Any, fake: Any) -> None:
    fake.accept(new_key())  # some other key is valid
    bad = new_key("sk-bad")
    integration_id = await vclient.integration("openai")

    error, info = await vclient.fails(
        vclient.create(integration_id, vclient.api_key(bad), connection_id="bad"),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert info.reason == "CREDENTIALS_REJECTED"
    assert info.metadata["provider_status"] == "401"
    assert info.metadata["provider"] == "openai"
    assert bad.encode() not in vclient.error_text(error)
    assert bad.removeprefix("sk-bad-").encode() not in vclient.error_text(error)
    assert [r.status for r in fake.requests_with(bad)] == [401]
    await assert_not_stored(vclient, integration_id, "bad")


async def test_skip_verification_stores_an_unchecked_key(vclient: Any, fake: Any) -> None:
    bad = new_key("sk-import")
    integration_id = await vclient.integration("openai")
    created = await vclient.create(
        integration_id, vclient.api_key(bad), connection_id="i", skip=True
    )

    assert created.verification.state == UNVERIFIED
    assert not created.verification.HasField("verify_time")
    assert created.verification.http_status == 0
    assert fake.requests_with(bad) == []
    access = await vclient.access(integration_id, "i")
    assert access.credentials.api_key.api_key == bad


async def test_slow_provider_is_unavailable_and_nothing_stored(vclient: Any, fake: Any) -> None:
    key = new_key()
    fake.accept(key)
    fake.slow(OPENAI_PATH, 4.0)
    integration_id = await vclient.integration("openai")

    started = time.monotonic()
    error, info = await vclient.fails(
        vclient.create(integration_id, vclient.api_key(key), connection_id="slow"),
        grpc.StatusCode.UNAVAILABLE,
    )
    elapsed = time.monotonic() - started
    assert info.reason == "PROVIDER_UNAVAILABLE"
    assert info.metadata["provider_status"] == "0"
    assert elapsed < 3.0, f"verify_timeout is 1s but the call took {elapsed:.1f}s"
    assert key.encode() not in vclient.error_text(error)
    await assert_not_stored(vclient, integration_id, "slow")


async def test_provider_error_is_unavailable(vclient: Any, fake: Any) -> None:
    key = new_key()
    fake.accept(key)
    fake.fail(OPENAI_PATH, 500)
    integration_id = await vclient.integration("openai")

    error, info = await vclient.fails(
        vclient.create(integration_id, vclient.api_key(key), connection_id="e500"),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert info.reason == "PROVIDER_UNAVAILABLE"
    assert info.metadata["provider_status"] == "500"
    assert key.encode() not in vclient.error_text(error)
    await assert_not_stored(vclient, integration_id, "e500")


async def test_same_origin_redirect_is_followed(vclient: Any, fake: Any) -> None:
    key = new_key()
    fake.accept(key)
    fake.redirect(OPENAI_PATH, "/openai/v1/models-moved")
    integration_id = await vclient.integration("openai")

    created = await vclient.create(integration_id, vclient.api_key(key), connection_id="moved")
    assert created.verification.state == VERIFIED
    assert created.verification.http_status == 200
    hops = [(r.path, r.status) for r in fake.requests_with(key)]
    assert hops == [(OPENAI_PATH, 302), ("/openai/v1/models-moved", 200)]


async def test_cross_origin_redirect_is_not_followed(
    vclient: Any, fake: Any, other_origin: Any
) -> None:
    key = new_key()
    fake.accept(key)
    other_origin.accept(key)
    fake.redirect(OPENAI_PATH, f"{other_origin.url}/openai/v1/models")
    integration_id = await vclient.integration("openai")

    error, info = await vclient.fails(
        vclient.create(integration_id, vclient.api_key(key), connection_id="away"),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert info.reason == "PROVIDER_UNAVAILABLE"
    assert other_origin.requests == [], "credentials were sent to another origin"
    assert key.encode() not in vclient.error_text(error)
    assert [r.status for r in fake.requests_with(key)] == [302]
    await assert_not_stored(vclient, integration_id, "away")


# ---------------------------------------------------------------------------------------------
# each faked provider's way of presenting the credential reaches the provider


async def test_anthropic_key_header_and_version(vclient: Any, fake: Any) -> None:
    key = new_key("sk-ant")
    fake.accept(key)
    integration_id = await vclient.integration("anthropic")
    created = await vclient.create(integration_id, vclient.api_key(key))
    assert created.verification.state == VERIFIED
    (request,) = fake.requests_with(key)
    assert request.path == "/anthropic/v1/models"
    assert request.headers["x-api-key"] == key
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers


async def test_gemini_key_query_parameter(vclient: Any, fake: Any) -> None:
    key = new_key("AIza")
    fake.accept(key)
    integration_id = await vclient.integration("google-gemini")
    created = await vclient.create(integration_id, vclient.api_key(key))
    assert created.verification.state == VERIFIED
    (request,) = fake.requests_with(key)
    assert request.path == "/google-gemini/v1beta/models"
    assert request.query == {"key": key}
    assert "authorization" not in request.headers


async def test_twilio_basic_auth(vclient: Any, fake: Any) -> None:
    user, password = f"AC{uuid.uuid4().hex}", new_key("tok")
    fake.accept(f"{user}:{password}")
    integration_id = await vclient.integration("twilio")
    created = await vclient.create(integration_id, vclient.basic(user, password))
    assert created.verification.state == VERIFIED
    (request,) = fake.requests_with(f"{user}:{password}")
    assert request.path == "/twilio/2010-04-01/Accounts.json"

    error, info = await vclient.fails(
        vclient.create(integration_id, vclient.basic(user, "wrong-" + password)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert info.reason == "CREDENTIALS_REJECTED"
    assert password.encode() not in vclient.error_text(error)


async def test_datadog_api_key_header(vclient: Any, fake: Any) -> None:
    key = new_key("dd")
    fake.accept(key)
    integration_id = await vclient.integration("datadog")
    created = await vclient.create(
        integration_id, vclient.api_key(key), config={"application_key": "app-123"}
    )
    assert created.verification.state == VERIFIED
    (request,) = fake.requests_with(key)
    assert request.path == "/datadog/api/v1/validate"
    assert request.headers["dd-api-key"] == key
    assert request.headers["dd-application-key"] == "app-123"


async def test_provider_without_verification_request_stores_unverified(
    vclient: Any, fake: Any
) -> None:
    """stripe-api-key has no verification request: nothing is sent, the key is UNVERIFIED."""
    key = new_key("rk_live")
    integration_id = await vclient.integration("stripe-api-key")
    created = await vclient.create(integration_id, vclient.basic(key, ""), connection_id="s")
    assert created.verification.state == UNVERIFIED
    assert fake.requests == []
    _, info = await vclient.fails(
        vclient.verify(integration_id, "s"), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert info.reason == "VERIFICATION_NOT_AVAILABLE"


# ---------------------------------------------------------------------------------------------
# update


async def update(
    client: Any,
    integration_id: str,
    connection_id: str,
    *,
    credentials: rpb.Credentials | None = None,
    config: dict[str, str] | None = None,
    paths: list[str],
    skip: bool = False,
) -> rpb.Connection:
    connection = rpb.Connection(
        integration_id=integration_id, connection_id=connection_id, connection_config=config or {}
    )
    if credentials is not None:
        connection.credentials.CopyFrom(credentials)
    result: rpb.Connection = await client.connections.UpdateConnection(
        cpb.UpdateConnectionRequest(
            connection=connection,
            update_mask=field_mask_pb2.FieldMask(paths=paths),
            skip_verification=skip,
        ),
        metadata=client.metadata,
    )
    return result


async def test_update_with_rejected_credentials_keeps_the_old_ones(vclient: Any, fake: Any) -> None:
    old, new = new_key("sk-old"), new_key("sk-new")
    fake.accept(old)
    integration_id = await vclient.integration("openai")
    created = await vclient.create(integration_id, vclient.api_key(old), connection_id="u")

    error, info = await vclient.fails(
        update(
            vclient, integration_id, "u", credentials=vclient.api_key(new), paths=["credentials"]
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert info.reason == "CREDENTIALS_REJECTED"
    assert info.metadata["provider_status"] == "401"
    assert new.encode() not in vclient.error_text(error)
    access = await vclient.access(integration_id, "u")
    assert access.credentials.api_key.api_key == old
    assert access.headers["authorization"] == f"Bearer {old}"
    assert (await vclient.get(integration_id, "u")).etag == created.etag

    fake.accept(new)
    updated = await update(
        vclient, integration_id, "u", credentials=vclient.api_key(new), paths=["credentials"]
    )
    assert updated.verification.state == VERIFIED
    assert (await vclient.access(integration_id, "u")).credentials.api_key.api_key == new


async def test_update_with_skip_verification_stores_unverified(vclient: Any, fake: Any) -> None:
    old, new = new_key("sk-old"), new_key("sk-new")
    fake.accept(old)
    integration_id = await vclient.integration("openai")
    await vclient.create(integration_id, vclient.api_key(old), connection_id="u")
    updated = await update(
        vclient,
        integration_id,
        "u",
        credentials=vclient.api_key(new),
        paths=["credentials"],
        skip=True,
    )
    assert updated.verification.state == UNVERIFIED
    assert not updated.verification.HasField("verify_time")
    assert fake.requests_with(new) == []
    assert (await vclient.access(integration_id, "u")).credentials.api_key.api_key == new


async def test_update_of_config_only_reverifies_with_the_stored_key(
    vclient: Any, fake: Any
) -> None:
    key = new_key("sk-ant")
    fake.accept(key)
    integration_id = await vclient.integration("anthropic")
    created = await vclient.create(integration_id, vclient.api_key(key), connection_id="cfg")
    assert len(fake.requests_with(key)) == 1

    updated = await update(
        vclient,
        integration_id,
        "cfg",
        config={"version": "2024-01-01"},
        paths=["connection_config"],
    )
    assert updated.verification.state == VERIFIED
    assert updated.verification.verify_time.ToDatetime() >= (
        created.verification.verify_time.ToDatetime()
    )
    second = fake.requests_with(key)[1]
    assert second.headers["x-api-key"] == key
    assert second.headers["anthropic-version"] == "2024-01-01"

    # The stored key is no longer accepted: a config change is refused and not applied.
    fake.refuse(key)
    _, info = await vclient.fails(
        update(
            vclient,
            integration_id,
            "cfg",
            config={"version": "2025-01-01"},
            paths=["connection_config"],
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert info.reason == "CREDENTIALS_REJECTED"
    access = await vclient.access(integration_id, "cfg")
    assert dict(access.connection_config) == {"version": "2024-01-01"}


@pytest.mark.parametrize("paths", [["metadata"], ["tags"]])
async def test_update_of_other_fields_does_not_call_the_provider(
    vclient: Any, fake: Any, paths: list[str]
) -> None:
    key = new_key()
    fake.accept(key)
    integration_id = await vclient.integration("openai")
    await vclient.create(integration_id, vclient.api_key(key), connection_id="m")
    fake.refuse(key)
    connection = rpb.Connection(integration_id=integration_id, connection_id="m", tags={"a": "b"})
    connection.metadata.update({"a": "b"})
    updated = await vclient.connections.UpdateConnection(
        cpb.UpdateConnectionRequest(
            connection=connection, update_mask=field_mask_pb2.FieldMask(paths=paths)
        ),
        metadata=vclient.metadata,
    )
    assert updated.verification.state == VERIFIED
    assert len(fake.requests_with(key)) == 1


async def test_upsert_verifies_before_creating(vclient: Any, fake: Any) -> None:
    good, bad = new_key("sk-good"), new_key("sk-bad")
    fake.accept(good)
    integration_id = await vclient.integration("openai")

    def upsert(key: str) -> Any:
        return vclient.connections.UpdateConnection(
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(
                    integration_id=integration_id,
                    connection_id="up",
                    credentials=vclient.api_key(key),
                ),
                allow_missing=True,
            ),
            metadata=vclient.metadata,
        )

    _, info = await vclient.fails(upsert(bad), grpc.StatusCode.FAILED_PRECONDITION)
    assert info.reason == "CREDENTIALS_REJECTED"
    await assert_not_stored(vclient, integration_id, "up")
    created = await upsert(good)
    assert created.verification.state == VERIFIED
