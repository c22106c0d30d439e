"""Error contract of both services through a real server: every failure ends with the documented
status code and a rich ``google.rpc.Status`` (``ErrorInfo`` reason, ``BadRequest`` naming the
field), and no submitted secret ever comes back in an error."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable
from typing import Any, cast

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

ERROR_DOMAIN = "credbroker.dev"

# ---------------------------------------------------------------------------------------------
# helpers


async def fails(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Awaits an RPC that must fail with ``code``; returns the error."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == code, f"expected {code.name}, got {error.code().name}: {error.details()}"
    return error


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    status: status_pb2.Status | None = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None, "the error carries no google.rpc.Status trailer"
    return status


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    infos = []
    for detail in rich_status(error).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1, f"expected exactly one ErrorInfo, got {infos}"
    assert infos[0].domain == ERROR_DOMAIN
    return infos[0]


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    fields: list[str] = []
    for detail in rich_status(error).details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields.extend(v.field for v in bad_request.field_violations)
            assert all(v.description for v in bad_request.field_violations)
    return fields


async def invalid(call: Awaitable[Any], *fields: str) -> grpc.aio.AioRpcError:
    """The call fails INVALID_ARGUMENT with exactly ``fields`` violated (in order)."""
    error = await fails(call, grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_fields(error) == list(fields), error.details()
    return error


def _encodings(secret: str) -> list[bytes]:
    raw = secret.encode("utf-8")
    found = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for shift in range(3):  # base64 of the secret at every alignment, minus the edge characters
        encoded = base64.b64encode(b"\x00" * shift + raw)[4:-4]
        found += [encoded, encoded.replace(b"+", b"-").replace(b"/", b"_")]
    return found


def assert_no_secret(error: grpc.aio.AioRpcError, *secrets: str) -> None:
    """None of ``secrets`` appears in the error's message, trailers or debug string."""
    texts = [(error.details() or "").encode("utf-8"), str(error).encode("utf-8")]
    texts.append((error.debug_error_string() or "").encode("utf-8"))
    for key, value in error.trailing_metadata() or ():
        texts.append(key.encode("utf-8"))
        texts.append(value if isinstance(value, bytes) else value.encode("utf-8"))
    for _key, value in error.initial_metadata() or ():
        texts.append(value if isinstance(value, bytes) else value.encode("utf-8"))
    status = rpc_status.from_call(cast(grpc.Call, error))
    if status is not None:
        texts.append(str(status).encode("utf-8"))
    for secret in secrets:
        for needle in _encodings(secret):
            for text in texts:
                assert needle not in text, "a submitted secret came back in the error"


def marker(label: str) -> str:
    return f"{label}MARK{uuid.uuid4().hex}"


def api_key(value: str) -> rpb.Credentials:
    return rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=value))


def basic(username: str, password: str) -> rpb.Credentials:
    return rpb.Credentials(basic=rpb.BasicCredentials(username=username, password=password))


async def create_integration(
    tenant: Any, integration_id: str, provider: str = "openai"
) -> rpb.Integration:
    result: rpb.Integration = await tenant.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id=integration_id, provider=provider)
        ),
        metadata=tenant.metadata,
    )
    return result


def create_integration_call(tenant: Any, **fields: Any) -> Awaitable[Any]:
    return cast(
        Awaitable[Any],
        tenant.integrations.CreateIntegration(
            ipb.CreateIntegrationRequest(integration=rpb.Integration(**fields)),
            metadata=tenant.metadata,
        ),
    )


def create_connection_call(tenant: Any, **fields: Any) -> Awaitable[Any]:
    return cast(
        Awaitable[Any],
        tenant.connections.CreateConnection(
            cpb.CreateConnectionRequest(connection=rpb.Connection(**fields)),
            metadata=tenant.metadata,
        ),
    )


async def create_connection(tenant: Any, **fields: Any) -> rpb.Connection:
    result: rpb.Connection = await create_connection_call(tenant, **fields)
    return result


# ---------------------------------------------------------------------------------------------
# INVALID_ARGUMENT: integrations


@pytest.mark.parametrize(
    "integration_id",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * 129, id="129-chars"),
        pytest.param("-leading-dash", id="leading-dash"),
        pytest.param(".leading-dot", id="leading-dot"),
        pytest.param("has space", id="space"),
        pytest.param("a/b", id="slash"),
        pytest.param("a+b", id="plus-only-allowed-in-connection-ids"),
        pytest.param("caf\u00e9", id="non-ascii"),
        pytest.param("abc\n", id="trailing-newline"),
        pytest.param("a\x00b", id="nul"),
    ],
)
async def test_create_integration_bad_id(tenant: Any, integration_id: str) -> None:
    error = await invalid(
        create_integration_call(tenant, integration_id=integration_id, provider="openai"),
        "integration.integration_id",
    )
    assert error_info(error).reason == "INVALID_ARGUMENT"
    assert (error.details() or "").startswith("integration.integration_id: ")


async def test_create_integration_id_limits_are_inclusive(tenant: Any) -> None:
    longest = "A" + "z" * 127
    created = await create_integration(tenant, longest)
    assert created.integration_id == longest
    every_allowed = "0aZ._-:@~"
    created = await create_integration(tenant, every_allowed)
    assert created.integration_id == every_allowed


@pytest.mark.parametrize("provider", ["", "no-such-provider", "OpenAI", "openai "])
async def test_create_integration_unknown_provider(tenant: Any, provider: str) -> None:
    error = await invalid(
        create_integration_call(tenant, integration_id="x", provider=provider),
        "integration.provider",
    )
    assert error_info(error).reason == "INVALID_ARGUMENT"


async def test_create_integration_reports_every_bad_field_at_once(tenant: Any) -> None:
    await invalid(
        create_integration_call(tenant, integration_id="", provider="nope", display_name="d" * 256),
        "integration.integration_id",
        "integration.display_name",
        "integration.provider",
    )


async def test_create_integration_display_name_limits(tenant: Any) -> None:
    await invalid(
        create_integration_call(
            tenant, integration_id="x", provider="openai", display_name="d" * 256
        ),
        "integration.display_name",
    )
    await invalid(
        create_integration_call(
            tenant, integration_id="x", provider="openai", display_name="line\nbreak"
        ),
        "integration.display_name",
    )
    created = await create_integration_call(
        tenant, integration_id="x", provider="openai", display_name="d" * 255
    )
    assert created.display_name == "d" * 255


# ---------------------------------------------------------------------------------------------
# INVALID_ARGUMENT: connections


@pytest.mark.parametrize(
    "connection_id",
    [
        pytest.param("c" * 256, id="256-chars"),
        pytest.param("+leading-plus", id="leading-plus"),
        pytest.param("has space", id="space"),
        pytest.param("a/b", id="slash"),
        pytest.param("a#b", id="hash"),
        pytest.param("\u00fcser", id="non-ascii"),
        pytest.param("user\n", id="trailing-newline"),
    ],
)
async def test_create_connection_bad_connection_id(tenant: Any, connection_id: str) -> None:
    await create_integration(tenant, "openai")
    error = await invalid(
        create_connection_call(
            tenant,
            integration_id="openai",
            connection_id=connection_id,
            credentials=api_key("sk-x"),
        ),
        "connection.connection_id",
    )
    assert error_info(error).reason == "INVALID_ARGUMENT"


async def test_create_connection_id_limits_are_inclusive(tenant: Any) -> None:
    await create_integration(tenant, "openai")
    for connection_id in ("c" * 255, "0aZ._-:@~+"):
        created = await create_connection(
            tenant,
            integration_id="openai",
            connection_id=connection_id,
            credentials=api_key("sk-x"),
        )
        assert created.connection_id == connection_id


@pytest.mark.parametrize(
    "integration_id", [pytest.param("", id="empty"), pytest.param("i" * 129, id="129-chars")]
)
async def test_create_connection_bad_integration_id(tenant: Any, integration_id: str) -> None:
    await invalid(
        create_connection_call(
            tenant, integration_id=integration_id, connection_id="u", credentials=api_key("sk-x")
        ),
        "connection.integration_id",
    )


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param(None, id="absent"),
        pytest.param(rpb.Credentials(), id="no-variant-set"),
    ],
)
async def test_create_connection_missing_credentials(
    tenant: Any, credentials: rpb.Credentials | None
) -> None:
    await create_integration(tenant, "openai")
    fields: dict[str, Any] = {"integration_id": "openai", "connection_id": "u"}
    if credentials is not None:
        fields["credentials"] = credentials
    error = await invalid(create_connection_call(tenant, **fields), "connection.credentials")
    assert error_info(error).reason == "INVALID_ARGUMENT"


async def test_create_connection_wrong_auth_mode_basic_for_api_key(tenant: Any) -> None:
    await create_integration(tenant, "openai", "openai")
    password = marker("pw")
    error = await invalid(
        create_connection_call(
            tenant,
            integration_id="openai",
            connection_id="u",
            credentials=basic("ann", password),
        ),
        "connection.credentials",
    )
    assert error_info(error).reason == "CREDENTIALS_AUTH_MODE_MISMATCH"
    assert_no_secret(error, password)


async def test_create_connection_wrong_auth_mode_api_key_for_basic(tenant: Any) -> None:
    await create_integration(tenant, "jira", "twilio")
    secret = marker("sk")
    error = await invalid(
        create_connection_call(
            tenant, integration_id="jira", connection_id="u", credentials=api_key(secret)
        ),
        "connection.credentials",
    )
    assert error_info(error).reason == "CREDENTIALS_AUTH_MODE_MISMATCH"
    assert_no_secret(error, secret)


async def test_create_connection_empty_api_key(tenant: Any) -> None:
    await create_integration(tenant, "openai")
    await invalid(
        create_connection_call(
            tenant, integration_id="openai", connection_id="u", credentials=api_key("")
        ),
        "connection.credentials.api_key.api_key",
    )


@pytest.mark.parametrize(
    "filler",
    [pytest.param("k", id="ascii-4097-bytes"), pytest.param("\u00e9", id="2049-chars-4098-bytes")],
)
async def test_create_connection_oversized_api_key(tenant: Any, filler: str) -> None:
    await create_integration(tenant, "openai")
    secret = marker("sk")
    value = secret
    while len(value.encode("utf-8")) <= 4096:
        value += filler
    assert len(value) <= 4096 or filler == "k"  # the multi-byte case is short in characters
    error = await invalid(
        create_connection_call(
            tenant, integration_id="openai", connection_id="u", credentials=api_key(value)
        ),
        "connection.credentials.api_key.api_key",
    )
    assert_no_secret(error, secret)


async def test_create_connection_api_key_of_exactly_4096_bytes_is_accepted(tenant: Any) -> None:
    await create_integration(tenant, "openai")
    value = "k" * 4096
    await create_connection(
        tenant, integration_id="openai", connection_id="u", credentials=api_key(value)
    )
    access = await tenant.connections.AccessCredentials(
        cpb.AccessCredentialsRequest(integration_id="openai", connection_id="u"),
        metadata=tenant.metadata,
    )
    assert access.credentials.api_key.api_key == value


async def test_create_connection_basic_with_both_parts_empty(tenant: Any) -> None:
    await create_integration(tenant, "jira", "twilio")
    await invalid(
        create_connection_call(
            tenant, integration_id="jira", connection_id="u", credentials=basic("", "")
        ),
        "connection.credentials.basic",
    )


async def test_create_connection_basic_part_limits(tenant: Any) -> None:
    await create_integration(tenant, "jira", "twilio")
    password = marker("pw")
    error = await invalid(
        create_connection_call(
            tenant,
            integration_id="jira",
            connection_id="u",
            credentials=basic("u" * 1025, password + "p" * 4097),
        ),
        "connection.credentials.basic.username",
        "connection.credentials.basic.password",
    )
    assert_no_secret(error, password)
    # Either part alone is fine (e.g. an API key as the username and no password).
    for connection_id, credentials in (("user-only", basic("u", "")), ("pw-only", basic("", "p"))):
        created = await create_connection(
            tenant, integration_id="jira", connection_id=connection_id, credentials=credentials
        )
        assert created.credentials_set


@pytest.mark.parametrize(
    ("tags", "field"),
    [
        pytest.param({f"k{i}": "v" for i in range(11)}, "connection.tags", id="11-tags"),
        pytest.param({"Upper": "v"}, "connection.tags", id="uppercase-key"),
        pytest.param({"1digit": "v"}, "connection.tags", id="digit-first-key"),
        pytest.param({"k" * 65: "v"}, "connection.tags", id="65-char-key"),
        pytest.param({"has space": "v"}, "connection.tags", id="space-in-key"),
        pytest.param({"empty": ""}, "connection.tags[empty]", id="empty-value"),
        pytest.param({"long": "v" * 256}, "connection.tags[long]", id="256-char-value"),
        pytest.param({"ctl": "a\tb"}, "connection.tags[ctl]", id="control-char-value"),
    ],
)
async def test_create_connection_bad_tags(tenant: Any, tags: dict[str, str], field: str) -> None:
    await create_integration(tenant, "openai")
    secret = marker("sk")
    error = await invalid(
        create_connection_call(
            tenant,
            integration_id="openai",
            connection_id="u",
            credentials=api_key(secret),
            tags=tags,
        ),
        field,
    )
    assert_no_secret(error, secret)


async def test_create_connection_tag_limits_are_inclusive(tenant: Any) -> None:
    await create_integration(tenant, "openai")
    tags = {f"k{i}": "v" for i in range(9)} | {"k" * 64: "v" * 255}
    created = await create_connection(
        tenant, integration_id="openai", connection_id="u", credentials=api_key("sk"), tags=tags
    )
    assert dict(created.tags) == tags


@pytest.mark.parametrize(
    ("config", "field"),
    [
        pytest.param({f"k{i}": "v" for i in range(33)}, "connection.connection_config", id="33"),
        pytest.param({"_bad": "v"}, "connection.connection_config", id="bad-key"),
        pytest.param({"big": "v" * 4097}, "connection.connection_config[big]", id="4097-bytes"),
    ],
)
async def test_create_connection_bad_connection_config(
    tenant: Any, config: dict[str, str], field: str
) -> None:
    """Config values are secret too (stored encrypted): they never come back in the error."""
    await create_integration(tenant, "openai")
    secret = marker("cfg")
    config = {key: secret + value for key, value in config.items()}
    error = await invalid(
        create_connection_call(
            tenant,
            integration_id="openai",
            connection_id="u",
            credentials=api_key(marker("sk")),
            connection_config=config,
        ),
        field,
    )
    assert_no_secret(error, secret)


async def test_create_connection_oversized_metadata(tenant: Any) -> None:
    await create_integration(tenant, "openai")
    metadata = struct_pb2.Struct()
    metadata.update({"blob": "m" * (32 * 1024)})
    await invalid(
        create_connection_call(
            tenant,
            integration_id="openai",
            connection_id="u",
            credentials=api_key("sk"),
            metadata=metadata,
        ),
        "connection.metadata",
    )


async def test_create_connection_reports_every_bad_field_at_once(tenant: Any) -> None:
    await invalid(
        create_connection_call(
            tenant,
            integration_id="",
            connection_id="bad id",
            tags={"BAD": "v"},
        ),
        "connection.integration_id",
        "connection.connection_id",
        "connection.credentials",
        "connection.tags",
    )


@pytest.mark.parametrize("method", ["GetConnection", "DeleteConnection", "AccessCredentials"])
async def test_connection_reads_validate_ids(tenant: Any, method: str) -> None:
    request_type = {
        "GetConnection": cpb.GetConnectionRequest,
        "DeleteConnection": cpb.DeleteConnectionRequest,
        "AccessCredentials": cpb.AccessCredentialsRequest,
    }[method]
    rpc = getattr(tenant.connections, method)
    await invalid(
        rpc(request_type(integration_id="", connection_id=""), metadata=tenant.metadata),
        "integration_id",
        "connection_id",
    )
    await invalid(
        rpc(request_type(integration_id="i" * 129, connection_id="ok"), metadata=tenant.metadata),
        "integration_id",
    )
    await invalid(
        rpc(request_type(integration_id="ok", connection_id="c" * 256), metadata=tenant.metadata),
        "connection_id",
    )


@pytest.mark.parametrize("method", ["GetIntegration", "DeleteIntegration"])
async def test_integration_reads_validate_ids(tenant: Any, method: str) -> None:
    request_type = {
        "GetIntegration": ipb.GetIntegrationRequest,
        "DeleteIntegration": ipb.DeleteIntegrationRequest,
    }[method]
    rpc = getattr(tenant.integrations, method)
    for bad in ("", "i" * 129, "a b"):
        await invalid(
            rpc(request_type(integration_id=bad), metadata=tenant.metadata), "integration_id"
        )


# ---------------------------------------------------------------------------------------------
# INVALID_ARGUMENT: paging


async def test_negative_page_size(tenant: Any) -> None:
    await invalid(
        tenant.integrations.ListIntegrations(
            ipb.ListIntegrationsRequest(page_size=-1), metadata=tenant.metadata
        ),
        "page_size",
    )
    await invalid(
        tenant.connections.ListConnections(
            cpb.ListConnectionsRequest(page_size=-1), metadata=tenant.metadata
        ),
        "page_size",
    )


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("!!!not-base64!!!", id="not-base64"),
        pytest.param(base64.urlsafe_b64encode(b"[1,2,3]").decode(), id="json-not-object"),
        pytest.param(
            base64.urlsafe_b64encode(json.dumps({"v": 1, "k": ["a"], "f": "0" * 16}).encode())
            .decode()
            .rstrip("="),
            id="forged-digest",
        ),
        pytest.param("A" * 5000, id="oversized"),
    ],
)
async def test_garbage_page_token(tenant: Any, token: str) -> None:
    error = await invalid(
        tenant.integrations.ListIntegrations(
            ipb.ListIntegrationsRequest(page_token=token), metadata=tenant.metadata
        ),
        "page_token",
    )
    assert error_info(error).reason == "INVALID_ARGUMENT"
    await invalid(
        tenant.connections.ListConnections(
            cpb.ListConnectionsRequest(page_token=token), metadata=tenant.metadata
        ),
        "page_token",
    )


async def _connections_with_next_token(tenant: Any) -> str:
    for integration_id in ("alpha", "beta"):
        await create_integration(tenant, integration_id)
        for n in range(3):
            await create_connection(
                tenant,
                integration_id=integration_id,
                connection_id=f"c{n}",
                credentials=api_key("sk"),
                tags={"team": "red"},
            )
    first = await tenant.connections.ListConnections(
        cpb.ListConnectionsRequest(integration_id="alpha", tags={"team": "red"}, page_size=1),
        metadata=tenant.metadata,
    )
    assert first.next_page_token
    token: str = first.next_page_token
    return token


@pytest.mark.parametrize(
    ("integration_id", "tags"),
    [
        pytest.param("beta", {"team": "red"}, id="other-integration"),
        pytest.param("", {"team": "red"}, id="integration-filter-dropped"),
        pytest.param("alpha", {}, id="tags-dropped"),
        pytest.param("alpha", {"team": "blue"}, id="other-tag-value"),
        pytest.param("alpha", {"team": "red", "tier": "x"}, id="extra-tag"),
    ],
)
async def test_page_token_reused_with_other_filters(
    tenant: Any, integration_id: str, tags: dict[str, str]
) -> None:
    token = await _connections_with_next_token(tenant)
    await invalid(
        tenant.connections.ListConnections(
            cpb.ListConnectionsRequest(
                integration_id=integration_id, tags=tags, page_size=1, page_token=token
            ),
            metadata=tenant.metadata,
        ),
        "page_token",
    )
    # The same token with the same filters (and another page size) is fine.
    page = await tenant.connections.ListConnections(
        cpb.ListConnectionsRequest(
            integration_id="alpha", tags={"team": "red"}, page_size=10, page_token=token
        ),
        metadata=tenant.metadata,
    )
    assert [c.connection_id for c in page.connections] == ["c1", "c2"]


async def test_page_token_of_one_method_is_refused_by_the_other(tenant: Any) -> None:
    for n in range(2):
        await create_integration(tenant, f"i{n}")
        await create_connection(
            tenant, integration_id=f"i{n}", connection_id="c", credentials=api_key("sk")
        )
    integrations = await tenant.integrations.ListIntegrations(
        ipb.ListIntegrationsRequest(page_size=1), metadata=tenant.metadata
    )
    connections = await tenant.connections.ListConnections(
        cpb.ListConnectionsRequest(page_size=1), metadata=tenant.metadata
    )
    assert integrations.next_page_token and connections.next_page_token
    await invalid(
        tenant.connections.ListConnections(
            cpb.ListConnectionsRequest(page_token=integrations.next_page_token),
            metadata=tenant.metadata,
        ),
        "page_token",
    )
    await invalid(
        tenant.integrations.ListIntegrations(
            ipb.ListIntegrationsRequest(page_token=connections.next_page_token),
            metadata=tenant.metadata,
        ),
        "page_token",
    )


async def test_list_connections_validates_filters(tenant: Any) -> None:
    await invalid(
        tenant.connections.ListConnections(
            cpb.ListConnectionsRequest(integration_id="bad id"), metadata=tenant.metadata
        ),
        "integration_id",
    )
    await invalid(
        tenant.connections.ListConnections(
            cpb.ListConnectionsRequest(tags={"BAD": "x"}), metadata=tenant.metadata
        ),
        "tags",
    )


# ---------------------------------------------------------------------------------------------
# NOT_FOUND


async def test_missing_integration_not_found(tenant: Any) -> None:
    missing = f"missing-{uuid.uuid4().hex}"
    calls = [
        tenant.integrations.GetIntegration(
            ipb.GetIntegrationRequest(integration_id=missing), metadata=tenant.metadata
        ),
        tenant.integrations.UpdateIntegration(
            ipb.UpdateIntegrationRequest(
                integration=rpb.Integration(integration_id=missing, display_name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=tenant.metadata,
        ),
        tenant.integrations.UpdateIntegration(
            ipb.UpdateIntegrationRequest(integration=rpb.Integration(integration_id=missing)),
            metadata=tenant.metadata,
        ),
        tenant.integrations.DeleteIntegration(
            ipb.DeleteIntegrationRequest(integration_id=missing), metadata=tenant.metadata
        ),
        tenant.integrations.DeleteIntegration(
            ipb.DeleteIntegrationRequest(integration_id=missing, force=True),
            metadata=tenant.metadata,
        ),
    ]
    for call in calls:
        error = await fails(call, grpc.StatusCode.NOT_FOUND)
        assert error.details() == "integration not found"
        assert error_info(error).reason == "INTEGRATION_NOT_FOUND"
        assert missing not in (error.details() or "")


@pytest.mark.parametrize("integration_exists", [True, False])
async def test_missing_connection_not_found(tenant: Any, integration_exists: bool) -> None:
    if integration_exists:
        await create_integration(tenant, "openai")
    ids: dict[str, Any] = {
        "integration_id": "openai",
        "connection_id": f"missing-{uuid.uuid4().hex}",
    }
    calls = [
        tenant.connections.GetConnection(cpb.GetConnectionRequest(**ids), metadata=tenant.metadata),
        tenant.connections.UpdateConnection(
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(**ids, credentials=api_key("sk")),
                update_mask=field_mask_pb2.FieldMask(paths=["credentials"]),
            ),
            metadata=tenant.metadata,
        ),
        tenant.connections.DeleteConnection(
            cpb.DeleteConnectionRequest(**ids), metadata=tenant.metadata
        ),
        tenant.connections.AccessCredentials(
            cpb.AccessCredentialsRequest(**ids), metadata=tenant.metadata
        ),
    ]
    for call in calls:
        error = await fails(call, grpc.StatusCode.NOT_FOUND)
        assert error.details() == "connection not found"
        assert error_info(error).reason == "CONNECTION_NOT_FOUND"


async def test_create_connection_on_missing_integration(tenant: Any) -> None:
    secret = marker("sk")
    error = await fails(
        create_connection_call(
            tenant, integration_id="nowhere", connection_id="u", credentials=api_key(secret)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert error_info(error).reason == "INTEGRATION_NOT_FOUND"
    assert_no_secret(error, secret)


async def test_deleted_connection_is_gone(tenant: Any) -> None:
    await create_integration(tenant, "openai")
    await create_connection(
        tenant, integration_id="openai", connection_id="u", credentials=api_key("sk")
    )
    ids: dict[str, Any] = {"integration_id": "openai", "connection_id": "u"}
    await tenant.connections.DeleteConnection(
        cpb.DeleteConnectionRequest(**ids), metadata=tenant.metadata
    )
    await fails(
        tenant.connections.DeleteConnection(
            cpb.DeleteConnectionRequest(**ids), metadata=tenant.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await fails(
        tenant.connections.AccessCredentials(
            cpb.AccessCredentialsRequest(**ids), metadata=tenant.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )


# ---------------------------------------------------------------------------------------------
# ALREADY_EXISTS


async def test_duplicate_integration(tenant: Any) -> None:
    await create_integration(tenant, "openai", "openai")
    error = await fails(
        create_integration_call(tenant, integration_id="openai", provider="stripe"),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert error_info(error).reason == "INTEGRATION_ALREADY_EXISTS"
    got = await tenant.integrations.GetIntegration(
        ipb.GetIntegrationRequest(integration_id="openai"), metadata=tenant.metadata
    )
    assert got.provider == "openai"


async def test_duplicate_connection(tenant: Any) -> None:
    await create_integration(tenant, "openai")
    await create_integration(tenant, "other")
    first = marker("first")
    second = marker("second")
    await create_connection(
        tenant, integration_id="openai", connection_id="u", credentials=api_key(first)
    )
    error = await fails(
        create_connection_call(
            tenant, integration_id="openai", connection_id="u", credentials=api_key(second)
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert error_info(error).reason == "CONNECTION_ALREADY_EXISTS"
    assert_no_secret(error, first, second)
    access = await tenant.connections.AccessCredentials(
        cpb.AccessCredentialsRequest(integration_id="openai", connection_id="u"),
        metadata=tenant.metadata,
    )
    assert access.credentials.api_key.api_key == first
    # The same connection id under another integration is a different connection.
    await create_connection(
        tenant, integration_id="other", connection_id="u", credentials=api_key(second)
    )


# ---------------------------------------------------------------------------------------------
# FAILED_PRECONDITION / force delete


async def test_delete_integration_with_connections_needs_force(tenant: Any) -> None:
    await create_integration(tenant, "openai")
    await create_connection(
        tenant, integration_id="openai", connection_id="u", credentials=api_key("sk")
    )
    error = await fails(
        tenant.integrations.DeleteIntegration(
            ipb.DeleteIntegrationRequest(integration_id="openai"), metadata=tenant.metadata
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(error).reason == "INTEGRATION_HAS_CONNECTIONS"
    # Nothing was deleted.
    await tenant.integrations.GetIntegration(
        ipb.GetIntegrationRequest(integration_id="openai"), metadata=tenant.metadata
    )
    access = await tenant.connections.AccessCredentials(
        cpb.AccessCredentialsRequest(integration_id="openai", connection_id="u"),
        metadata=tenant.metadata,
    )
    assert access.credentials.api_key.api_key == "sk"


async def test_force_delete_integration_deletes_its_connections(tenant: Any) -> None:
    await create_integration(tenant, "openai")
    await create_integration(tenant, "keep")
    for connection_id in ("u1", "u2"):
        await create_connection(
            tenant, integration_id="openai", connection_id=connection_id, credentials=api_key("sk")
        )
    await create_connection(
        tenant, integration_id="keep", connection_id="u1", credentials=api_key("kept")
    )
    await tenant.integrations.DeleteIntegration(
        ipb.DeleteIntegrationRequest(integration_id="openai", force=True), metadata=tenant.metadata
    )
    await fails(
        tenant.integrations.GetIntegration(
            ipb.GetIntegrationRequest(integration_id="openai"), metadata=tenant.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    for connection_id in ("u1", "u2"):
        ids: dict[str, Any] = {"integration_id": "openai", "connection_id": connection_id}
        await fails(
            tenant.connections.GetConnection(
                cpb.GetConnectionRequest(**ids), metadata=tenant.metadata
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        await fails(
            tenant.connections.AccessCredentials(
                cpb.AccessCredentialsRequest(**ids), metadata=tenant.metadata
            ),
            grpc.StatusCode.NOT_FOUND,
        )
    listed = await tenant.connections.ListConnections(
        cpb.ListConnectionsRequest(), metadata=tenant.metadata
    )
    assert [(c.integration_id, c.connection_id) for c in listed.connections] == [("keep", "u1")]
    # Re-creating the integration does not resurrect the old connections.
    await create_integration(tenant, "openai")
    listed = await tenant.connections.ListConnections(
        cpb.ListConnectionsRequest(integration_id="openai"), metadata=tenant.metadata
    )
    assert list(listed.connections) == []


async def test_delete_integration_without_connections(tenant: Any) -> None:
    await create_integration(tenant, "a")
    await create_integration(tenant, "b")
    await tenant.integrations.DeleteIntegration(
        ipb.DeleteIntegrationRequest(integration_id="a"), metadata=tenant.metadata
    )
    await tenant.integrations.DeleteIntegration(
        ipb.DeleteIntegrationRequest(integration_id="b", force=True), metadata=tenant.metadata
    )
    listed = await tenant.integrations.ListIntegrations(
        ipb.ListIntegrationsRequest(), metadata=tenant.metadata
    )
    assert list(listed.integrations) == []


# ---------------------------------------------------------------------------------------------
# UpdateIntegration mask


@pytest.mark.parametrize(
    "path",
    ["provider", "integration_id", "auth_mode", "create_time", "update_time", "no_such_field"],
)
async def test_update_integration_refuses_mask_path(tenant: Any, path: str) -> None:
    await create_integration(tenant, "openai", "openai")
    error = await invalid(
        tenant.integrations.UpdateIntegration(
            ipb.UpdateIntegrationRequest(
                integration=rpb.Integration(
                    integration_id="openai", provider="stripe", display_name="New"
                ),
                update_mask=field_mask_pb2.FieldMask(paths=[path, "display_name"]),
            ),
            metadata=tenant.metadata,
        ),
        "update_mask",
    )
    assert error_info(error).reason == "INVALID_ARGUMENT"
    got = await tenant.integrations.GetIntegration(
        ipb.GetIntegrationRequest(integration_id="openai"), metadata=tenant.metadata
    )
    assert (got.provider, got.display_name) == ("openai", "OpenAI")


async def test_update_integration_empty_mask_with_changed_provider_is_refused(
    tenant: Any,
) -> None:
    """An empty mask means "every field set"; `provider` is immutable, so a request that sets it
    to another value must not be silently half-applied."""
    await create_integration(tenant, "openai", "openai")
    error = await fails(
        tenant.integrations.UpdateIntegration(
            ipb.UpdateIntegrationRequest(
                integration=rpb.Integration(
                    integration_id="openai", provider="stripe", display_name="Renamed"
                )
            ),
            metadata=tenant.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(violated_fields(error)) <= {"update_mask", "integration.provider"}
    assert violated_fields(error)
    got = await tenant.integrations.GetIntegration(
        ipb.GetIntegrationRequest(integration_id="openai"), metadata=tenant.metadata
    )
    assert (got.provider, got.display_name) == ("openai", "OpenAI")  # nothing half-applied


@pytest.mark.parametrize("paths", [[], ["*"], ["display_name", "provider"]])
async def test_update_integration_accepts_the_unchanged_provider(
    tenant: Any, paths: list[str]
) -> None:
    """Clients send back the resource they read: repeating the stored provider is no change."""
    await create_integration(tenant, "openai", "openai")
    updated = await tenant.integrations.UpdateIntegration(
        ipb.UpdateIntegrationRequest(
            integration=rpb.Integration(
                integration_id="openai", provider="openai", display_name="Renamed"
            ),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        ),
        metadata=tenant.metadata,
    )
    assert (updated.provider, updated.display_name) == ("openai", "Renamed")


async def test_update_integration_star_mask_with_changed_provider_is_refused(
    tenant: Any,
) -> None:
    await create_integration(tenant, "openai", "openai")
    await fails(
        tenant.integrations.UpdateIntegration(
            ipb.UpdateIntegrationRequest(
                integration=rpb.Integration(
                    integration_id="openai", provider="stripe", display_name="Renamed"
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["*"]),
            ),
            metadata=tenant.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    got = await tenant.integrations.GetIntegration(
        ipb.GetIntegrationRequest(integration_id="openai"), metadata=tenant.metadata
    )
    assert (got.provider, got.display_name) == ("openai", "OpenAI")


async def test_update_integration_display_name_validation(tenant: Any) -> None:
    await create_integration(tenant, "openai", "openai")
    for display_name in ("", "d" * 256):
        await invalid(
            tenant.integrations.UpdateIntegration(
                ipb.UpdateIntegrationRequest(
                    integration=rpb.Integration(integration_id="openai", display_name=display_name),
                    update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
                ),
                metadata=tenant.metadata,
            ),
            "integration.display_name",
        )
    updated = await tenant.integrations.UpdateIntegration(
        ipb.UpdateIntegrationRequest(
            integration=rpb.Integration(integration_id="openai", display_name="Renamed")
        ),
        metadata=tenant.metadata,
    )
    assert (updated.provider, updated.display_name) == ("openai", "Renamed")
    assert updated.update_time.ToNanoseconds() >= updated.create_time.ToNanoseconds()


# ---------------------------------------------------------------------------------------------
# ABORTED / etag


async def test_update_connection_with_stale_etag_is_aborted(tenant: Any) -> None:
    await create_integration(tenant, "openai")
    created = await create_connection(
        tenant, integration_id="openai", connection_id="u", credentials=api_key("v1")
    )
    await tenant.connections.UpdateConnection(
        cpb.UpdateConnectionRequest(
            connection=rpb.Connection(
                integration_id="openai", connection_id="u", credentials=api_key("v2")
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["credentials"]),
        ),
        metadata=tenant.metadata,
    )
    stale_secret = marker("stale")
    error = await fails(
        tenant.connections.UpdateConnection(
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    connection_id="u",
                    credentials=api_key(stale_secret),
                    etag=created.etag,
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["credentials"]),
            ),
            metadata=tenant.metadata,
        ),
        grpc.StatusCode.ABORTED,
    )
    assert error_info(error).reason == "ETAG_MISMATCH"
    assert_no_secret(error, stale_secret)
    access = await tenant.connections.AccessCredentials(
        cpb.AccessCredentialsRequest(integration_id="openai", connection_id="u"),
        metadata=tenant.metadata,
    )
    assert access.credentials.api_key.api_key == "v2"


@pytest.mark.parametrize("etag", ["abc", "-1", "1.0", "9" * 19, " 1"])
async def test_update_connection_with_malformed_etag(tenant: Any, etag: str) -> None:
    await create_integration(tenant, "openai")
    await create_connection(
        tenant, integration_id="openai", connection_id="u", credentials=api_key("v1")
    )
    await invalid(
        tenant.connections.UpdateConnection(
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai", connection_id="u", tags={"a": "b"}, etag=etag
                ),
            ),
            metadata=tenant.metadata,
        ),
        "connection.etag",
    )
