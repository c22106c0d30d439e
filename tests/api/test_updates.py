"""UpdateConnection semantics: field masks, upserts, etags and concurrent writers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any, cast

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

IDS: dict[str, Any] = {"integration_id": "openai", "connection_id": "u"}


def api_key(value: str) -> rpb.Credentials:
    return rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=value))


def struct(**values: Any) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


async def fails(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


def rich(error: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    """(ErrorInfo.reason, BadRequest field paths)."""
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None
    reason, fields = "", []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return reason, fields


async def seed(tenant: Any, provider: str = "openai") -> rpb.Connection:
    await tenant.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id="openai", provider=provider)
        ),
        metadata=tenant.metadata,
    )
    credentials = (
        api_key("old-key")
        if provider == "openai"
        else rpb.Credentials(basic=rpb.BasicCredentials(username="ann", password="old-pw"))
    )
    created: rpb.Connection = await tenant.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                **IDS,
                credentials=credentials,
                metadata=struct(plan="pro", seats=3),
                connection_config={"org": "o1", "region": "eu"},
                tags={"team": "red", "end_user_id": "42"},
            )
        ),
        metadata=tenant.metadata,
    )
    return created


def update(
    tenant: Any,
    connection: rpb.Connection,
    paths: list[str] | None = None,
    *,
    allow_missing: bool = False,
) -> Any:
    request = cpb.UpdateConnectionRequest(connection=connection, allow_missing=allow_missing)
    if paths is not None:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
    return tenant.connections.UpdateConnection(request, metadata=tenant.metadata)


async def get(tenant: Any, **ids: str) -> rpb.Connection:
    result: rpb.Connection = await tenant.connections.GetConnection(
        cpb.GetConnectionRequest(**(ids or IDS)), metadata=tenant.metadata
    )
    return result


async def access(tenant: Any, **ids: str) -> cpb.AccessCredentialsResponse:
    result: cpb.AccessCredentialsResponse = await tenant.connections.AccessCredentials(
        cpb.AccessCredentialsRequest(**(ids or IDS)), metadata=tenant.metadata
    )
    return result


def state(connection: rpb.Connection) -> tuple[Any, ...]:
    """The stored, non-secret fields of a connection."""
    return (
        dict(connection.metadata),
        dict(connection.tags),
        list(connection.connection_config_keys),
        connection.auth_mode,
    )


# ---------------------------------------------------------------------------------------------
# masks


async def test_credential_override_keeps_metadata_tags_and_config(tenant: Any) -> None:
    created = await seed(tenant)
    updated = await update(
        tenant,
        rpb.Connection(
            **IDS,
            credentials=api_key("new-key"),
            # Not in the mask: must be ignored.
            metadata=struct(plan="free"),
            tags={"team": "blue"},
            connection_config={"org": "o2"},
        ),
        ["credentials"],
    )
    assert not updated.HasField("credentials")
    assert "new-key" not in str(updated)
    assert state(updated) == state(created)
    assert state(await get(tenant)) == state(created)
    revealed = await access(tenant)
    assert revealed.credentials.api_key.api_key == "new-key"
    assert dict(revealed.connection_config) == {"org": "o1", "region": "eu"}
    assert updated.etag != created.etag
    assert updated.create_time == created.create_time
    assert updated.update_time.ToNanoseconds() >= created.update_time.ToNanoseconds()


async def test_basic_credential_override(tenant: Any) -> None:
    created = await seed(tenant, "twilio")
    await update(
        tenant,
        rpb.Connection(
            **IDS, credentials=rpb.Credentials(basic=rpb.BasicCredentials(username="bob"))
        ),
        ["credentials"],
    )
    revealed = await access(tenant)
    assert (revealed.credentials.basic.username, revealed.credentials.basic.password) == ("bob", "")
    assert revealed.auth_mode == rpb.AUTH_MODE_BASIC
    assert state(await get(tenant)) == state(created)


async def test_metadata_update_keeps_credentials(tenant: Any) -> None:
    created = await seed(tenant)
    updated = await update(
        tenant,
        rpb.Connection(**IDS, metadata=struct(plan="enterprise"), credentials=api_key("ignored")),
        ["metadata"],
    )
    assert dict(updated.metadata) == {"plan": "enterprise"}  # replaced, not merged
    assert dict(updated.tags) == dict(created.tags)
    assert list(updated.connection_config_keys) == ["org", "region"]
    revealed = await access(tenant)
    assert revealed.credentials.api_key.api_key == "old-key"
    assert dict(revealed.connection_config) == {"org": "o1", "region": "eu"}


async def test_tags_update_replaces_the_whole_map(tenant: Any) -> None:
    await seed(tenant)
    updated = await update(tenant, rpb.Connection(**IDS, tags={"tier": "gold"}), ["tags"])
    assert dict(updated.tags) == {"tier": "gold"}
    cleared = await update(tenant, rpb.Connection(**IDS), ["tags"])
    assert dict(cleared.tags) == {}
    listed = await tenant.connections.ListConnections(
        cpb.ListConnectionsRequest(tags={"team": "red"}), metadata=tenant.metadata
    )
    assert list(listed.connections) == []
    assert (await access(tenant)).credentials.api_key.api_key == "old-key"


async def test_connection_config_update(tenant: Any) -> None:
    await seed(tenant)
    updated = await update(
        tenant,
        rpb.Connection(**IDS, connection_config={"subdomain": "acme", "Account": "7"}),
        ["connection_config"],
    )
    assert list(updated.connection_config_keys) == ["Account", "subdomain"]
    assert list((await get(tenant)).connection_config_keys) == ["Account", "subdomain"]
    revealed = await access(tenant)
    assert dict(revealed.connection_config) == {"subdomain": "acme", "Account": "7"}
    assert revealed.credentials.api_key.api_key == "old-key"
    # Clearing it.
    cleared = await update(tenant, rpb.Connection(**IDS), ["connection_config"])
    assert list(cleared.connection_config_keys) == []
    assert dict((await access(tenant)).connection_config) == {}


async def test_star_mask_replaces_all_four_fields(tenant: Any) -> None:
    await seed(tenant)
    updated = await update(
        tenant,
        rpb.Connection(**IDS, credentials=api_key("star-key"), metadata=struct(only="this")),
        ["*"],
    )
    assert dict(updated.metadata) == {"only": "this"}
    assert dict(updated.tags) == {}
    assert list(updated.connection_config_keys) == []
    revealed = await access(tenant)
    assert revealed.credentials.api_key.api_key == "star-key"
    assert dict(revealed.connection_config) == {}


async def test_star_mask_needs_credentials(tenant: Any) -> None:
    created = await seed(tenant)
    error = await fails(
        update(tenant, rpb.Connection(**IDS, tags={"a": "b"}), ["*"]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert rich(error)[1] == ["connection.credentials"]
    assert state(await get(tenant)) == state(created)


@pytest.mark.parametrize(
    ("fields", "changed"),
    [
        pytest.param({"tags": {"x": "1"}}, "tags", id="tags"),
        pytest.param({"metadata": struct(k="v")}, "metadata", id="metadata"),
        pytest.param({"connection_config": {"k": "v"}}, "connection_config", id="config"),
        pytest.param({"credentials": api_key("populated")}, "credentials", id="credentials"),
    ],
)
async def test_empty_mask_updates_the_populated_fields(
    tenant: Any, fields: dict[str, Any], changed: str
) -> None:
    created = await seed(tenant)
    updated = await update(tenant, rpb.Connection(**IDS, **fields))
    revealed = await access(tenant)
    expect_tags = {"x": "1"} if changed == "tags" else dict(created.tags)
    expect_metadata = {"k": "v"} if changed == "metadata" else dict(created.metadata)
    expect_config = {"k": "v"} if changed == "connection_config" else {"org": "o1", "region": "eu"}
    expect_key = "populated" if changed == "credentials" else "old-key"
    assert dict(updated.tags) == expect_tags
    assert dict(updated.metadata) == expect_metadata
    assert list(updated.connection_config_keys) == sorted(expect_config)
    assert dict(revealed.connection_config) == expect_config
    assert revealed.credentials.api_key.api_key == expect_key
    assert updated.etag != created.etag


async def test_empty_mask_with_nothing_populated_is_invalid(tenant: Any) -> None:
    created = await seed(tenant)
    error = await fails(update(tenant, rpb.Connection(**IDS)), grpc.StatusCode.INVALID_ARGUMENT)
    assert rich(error)[1] == ["update_mask"]
    assert (await get(tenant)).etag == created.etag


@pytest.mark.parametrize(
    "path",
    [
        "bogus",
        "auth_mode",
        "connection_id",
        "integration_id",
        "etag",
        "create_time",
        "credentials_set",
        "connection_config_keys",
        "Tags",
        "",
    ],
)
async def test_unknown_mask_path_is_invalid(tenant: Any, path: str) -> None:
    created = await seed(tenant)
    error = await fails(
        update(tenant, rpb.Connection(**IDS, tags={"a": "b"}), ["tags", path]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert rich(error)[1] == ["update_mask"]
    after = await get(tenant)
    assert (after.etag, state(after)) == (created.etag, state(created))


async def test_fields_outside_the_mask_are_not_validated(tenant: Any) -> None:
    await seed(tenant)
    updated = await update(
        tenant,
        rpb.Connection(**IDS, metadata=struct(ok=True), tags={"BAD KEY": ""}),
        ["metadata"],
    )
    assert dict(updated.tags) == {"team": "red", "end_user_id": "42"}


@pytest.mark.parametrize(
    ("fields", "paths", "violated"),
    [
        pytest.param({"tags": {"BAD": "x"}}, ["tags"], "connection.tags", id="tags"),
        pytest.param(
            {"connection_config": {"_bad": "x"}},
            ["connection_config"],
            "connection.connection_config",
            id="config",
        ),
        pytest.param(
            {"credentials": api_key("")},
            ["credentials"],
            "connection.credentials.api_key.api_key",
            id="empty-key",
        ),
        pytest.param({}, ["credentials"], "connection.credentials", id="missing-credentials"),
    ],
)
async def test_update_validates_masked_fields(
    tenant: Any, fields: dict[str, Any], paths: list[str], violated: str
) -> None:
    created = await seed(tenant)
    error = await fails(
        update(tenant, rpb.Connection(**IDS, **fields), paths), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert rich(error)[1] == [violated]
    assert (await get(tenant)).etag == created.etag


async def test_update_with_credentials_of_the_wrong_auth_mode(tenant: Any) -> None:
    created = await seed(tenant)
    error = await fails(
        update(
            tenant,
            rpb.Connection(
                **IDS, credentials=rpb.Credentials(basic=rpb.BasicCredentials(username="x"))
            ),
            ["credentials"],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert rich(error) == ("CREDENTIALS_AUTH_MODE_MISMATCH", ["connection.credentials"])
    assert (await get(tenant)).etag == created.etag
    assert (await access(tenant)).credentials.api_key.api_key == "old-key"


# ---------------------------------------------------------------------------------------------
# allow_missing


async def test_allow_missing_creates(tenant: Any) -> None:
    await seed(tenant)
    ids: dict[str, Any] = {"integration_id": "openai", "connection_id": "fresh"}
    created = await update(
        tenant,
        rpb.Connection(
            **ids,
            credentials=api_key("upserted"),
            tags={"team": "blue"},
            connection_config={"org": "o9"},
        ),
        allow_missing=True,
    )
    assert created.connection_id == "fresh"
    assert created.credentials_set
    assert created.auth_mode == rpb.AUTH_MODE_API_KEY
    assert created.etag
    fetched = await get(tenant, **ids)
    assert fetched.etag == created.etag
    assert dict(fetched.tags) == {"team": "blue"}
    revealed = await access(tenant, **ids)
    assert revealed.credentials.api_key.api_key == "upserted"
    assert dict(revealed.connection_config) == {"org": "o9"}


async def test_allow_missing_needs_credentials_to_create(tenant: Any) -> None:
    await seed(tenant)
    ids: dict[str, Any] = {"integration_id": "openai", "connection_id": "fresh"}
    error = await fails(
        update(tenant, rpb.Connection(**ids, tags={"a": "b"}), allow_missing=True),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert rich(error)[1] == ["connection.credentials"]
    await fails(get(tenant, **ids), grpc.StatusCode.NOT_FOUND)


async def test_allow_missing_on_a_missing_integration(tenant: Any) -> None:
    error = await fails(
        update(
            tenant,
            rpb.Connection(integration_id="nope", connection_id="u", credentials=api_key("k")),
            allow_missing=True,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert rich(error)[0] == "INTEGRATION_NOT_FOUND"


async def test_allow_missing_on_an_existing_connection_updates_it(tenant: Any) -> None:
    created = await seed(tenant)
    updated = await update(
        tenant, rpb.Connection(**IDS, credentials=api_key("again")), allow_missing=True
    )
    assert updated.create_time == created.create_time
    assert state(updated) == state(created)
    assert (await access(tenant)).credentials.api_key.api_key == "again"


async def test_update_of_missing_connection_without_allow_missing(tenant: Any) -> None:
    await seed(tenant)
    ids: dict[str, Any] = {"integration_id": "openai", "connection_id": "ghost"}
    error = await fails(
        update(tenant, rpb.Connection(**ids, credentials=api_key("k"))),
        grpc.StatusCode.NOT_FOUND,
    )
    assert rich(error)[0] == "CONNECTION_NOT_FOUND"
    await fails(get(tenant, **ids), grpc.StatusCode.NOT_FOUND)


# ---------------------------------------------------------------------------------------------
# etags


async def test_etag_round_trip(tenant: Any) -> None:
    created = await seed(tenant)
    assert created.etag
    assert (await get(tenant)).etag == created.etag
    first = await update(
        tenant, rpb.Connection(**IDS, tags={"v": "1"}, etag=created.etag), ["tags"]
    )
    assert first.etag != created.etag
    assert (await get(tenant)).etag == first.etag
    # The old etag is now stale.
    error = await fails(
        update(tenant, rpb.Connection(**IDS, tags={"v": "stale"}, etag=created.etag), ["tags"]),
        grpc.StatusCode.ABORTED,
    )
    assert rich(error)[0] == "ETAG_MISMATCH"
    assert dict((await get(tenant)).tags) == {"v": "1"}
    # The current one works, and every write (of any field) moves the etag on.
    second = await update(
        tenant, rpb.Connection(**IDS, credentials=api_key("k2"), etag=first.etag), ["credentials"]
    )
    assert second.etag not in {created.etag, first.etag}
    assert (await access(tenant)).credentials.api_key.api_key == "k2"
    # Reads do not change it.
    await access(tenant)
    assert (await get(tenant)).etag == second.etag


async def test_etag_on_a_deleted_connection_is_not_found(tenant: Any) -> None:
    created = await seed(tenant)
    await tenant.connections.DeleteConnection(
        cpb.DeleteConnectionRequest(**IDS), metadata=tenant.metadata
    )
    await fails(
        update(tenant, rpb.Connection(**IDS, tags={"a": "b"}, etag=created.etag), ["tags"]),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_concurrent_updates_with_one_etag_have_one_winner(tenant: Any) -> None:
    created = await seed(tenant)
    keys = [f"racer-{n}-{uuid.uuid4().hex[:8]}" for n in range(20)]

    async def attempt(key: str) -> rpb.Connection | grpc.aio.AioRpcError:
        try:
            result: rpb.Connection = await update(
                tenant,
                rpb.Connection(**IDS, credentials=api_key(key), etag=created.etag),
                ["credentials"],
            )
        except grpc.aio.AioRpcError as error:
            return error
        return result

    results = await asyncio.gather(*(attempt(k) for k in keys))
    winners = [(k, r) for k, r in zip(keys, results, strict=True) if isinstance(r, rpb.Connection)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1, [getattr(r, "code", lambda: "OK")() for r in results]
    assert len(losers) == 19
    for error in losers:
        assert error.code() == grpc.StatusCode.ABORTED, error.details()
        assert rich(error)[0] == "ETAG_MISMATCH"
    winner_key, winner = winners[0]
    assert (await access(tenant)).credentials.api_key.api_key == winner_key
    assert (await get(tenant)).etag == winner.etag != created.etag


async def test_concurrent_updates_without_etag_all_apply(tenant: Any) -> None:
    await seed(tenant)
    keys = [f"writer-{n}" for n in range(20)]
    results = await asyncio.gather(
        *(
            update(tenant, rpb.Connection(**IDS, credentials=api_key(k)), ["credentials"])
            for k in keys
        )
    )
    etags = [r.etag for r in results]
    assert len(set(etags)) == 20  # every write got its own version
    final = await get(tenant)
    last = next(k for k, r in zip(keys, results, strict=True) if r.etag == final.etag)
    assert (await access(tenant)).credentials.api_key.api_key == last


async def test_etag_is_bound_to_its_connection(tenant: Any) -> None:
    """Issue 9, finding 10: connection A's etag (same version as B's) is refused on B, and a
    bare version number is not an etag."""
    a = await seed(tenant)
    other: dict[str, Any] = {"integration_id": "openai", "connection_id": "other-connection"}
    b = await tenant.connections.CreateConnection(
        cpb.CreateConnectionRequest(connection=rpb.Connection(**other, credentials=api_key("kb"))),
        metadata=tenant.metadata,
    )
    assert a.etag != b.etag
    for etag in (a.etag, "1", a.etag.split(".")[0]):
        await fails(
            update(tenant, rpb.Connection(**other, tags={"x": "y"}, etag=etag), ["tags"]),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    await update(tenant, rpb.Connection(**other, tags={"x": "y"}, etag=b.etag), ["tags"])
