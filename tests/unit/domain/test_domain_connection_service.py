"""ConnectionService over in-memory fakes (conftest.py): encryption binding, update masks,
auth-mode checks, allow_missing upserts and etag handling."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from credbroker.domain.connections import (
    CONFIG_PURPOSE,
    CREDENTIALS_PURPOSE,
    ConnectionDraft,
    ConnectionService,
)
from credbroker.domain.errors import (
    ConflictError,
    DataIntegrityError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from credbroker.domain.etags import etag_for
from credbroker.domain.integrations import IntegrationDraft, IntegrationService
from credbroker.domain.models import (
    ApiKeyCredentials,
    AuthMode,
    BasicCredentials,
    Connection,
    Credentials,
    EncryptedConnectionSecrets,
    Principal,
    VerificationState,
)
from credbroker.domain.ports import Binding
from credbroker.domain.verification import ProbeResult


def draft(
    connection_id: str = "user-1",
    credentials: Credentials | None = None,
    *,
    integration_id: str = "openai",
    metadata: dict[str, Any] | None = None,
    config: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
) -> ConnectionDraft:
    return ConnectionDraft(integration_id, connection_id, credentials, metadata, config, tags)


API_KEY = ApiKeyCredentials("sk-test-1")
BASIC = BasicCredentials("user", "pass")


@pytest.fixture
async def integrations(integration_service: IntegrationService, principal: Principal) -> None:
    await integration_service.create(principal, IntegrationDraft("openai", "openai", ""))
    await integration_service.create(principal, IntegrationDraft("twilio", "twilio", ""))


@pytest.fixture
async def existing(
    integrations: None, connection_service: ConnectionService, principal: Principal
) -> Connection:
    return await connection_service.create(
        principal,
        draft(
            "user-1",
            API_KEY,
            metadata={"plan": "pro"},
            config={"org": "o-1", "region": "eu"},
            tags={"env": "prod"},
        ),
    )


def stored_secrets(connection_repo: Any, connection: Connection) -> EncryptedConnectionSecrets:
    found = connection_repo.rows[connection.id]
    secrets: EncryptedConnectionSecrets = found[1]
    return secrets


# --- create ---------------------------------------------------------------------------------


async def test_create_encrypts_with_row_binding(
    existing: Connection, connection_repo: Any, fake_cipher: Any, principal: Principal
) -> None:
    assert existing.version == 1
    assert existing.auth_mode is AuthMode.API_KEY
    assert existing.connection_config_keys == ("org", "region")
    assert existing.metadata == {"plan": "pro"}
    assert existing.tags == {"env": "prod"}
    secrets = stored_secrets(connection_repo, existing)
    environment, row = principal.environment_id.bytes, existing.id.bytes
    binding = Binding((environment, "openai", "user-1", row), (environment, "openai", row))
    credentials = fake_cipher.sealed[secrets.credentials]
    config = fake_cipher.sealed[secrets.connection_config]
    assert (credentials.purpose, credentials.binding) == (CREDENTIALS_PURPOSE, binding)
    assert (config.purpose, config.binding) == (CONFIG_PURPOSE, binding)
    assert json.loads(credentials.plaintext) == {"api_key": "sk-test-1"}
    assert json.loads(config.plaintext) == {"org": "o-1", "region": "eu"}
    # Nothing secret reaches the repository in clear.
    assert b"sk-test-1" not in secrets.credentials
    assert b"o-1" not in secrets.connection_config


async def test_create_then_access_round_trip(
    integrations: None, connection_service: ConnectionService, principal: Principal
) -> None:
    await connection_service.create(
        principal, draft("u", BASIC, integration_id="twilio", config={"sub": "acme"})
    )
    revealed = await connection_service.access(principal, "twilio", "u")
    assert revealed.credentials == BASIC
    assert revealed.connection_config == {"sub": "acme"}
    assert revealed.connection.auth_mode is AuthMode.BASIC
    assert "pass" not in repr(revealed)


async def test_create_generates_connection_id_when_empty(
    integrations: None, connection_service: ConnectionService, principal: Principal
) -> None:
    created = await connection_service.create(principal, draft("", API_KEY))
    assert uuid.UUID(created.connection_id)


async def test_create_auth_mode_mismatch(
    integrations: None,
    connection_service: ConnectionService,
    principal: Principal,
    connection_repo: Any,
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.create(principal, draft("u", BASIC))
    assert caught.value.reason == "CREDENTIALS_AUTH_MODE_MISMATCH"
    assert [v.field for v in caught.value.violations] == ["connection.credentials"]
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.create(principal, draft("u", API_KEY, integration_id="twilio"))
    assert caught.value.reason == "CREDENTIALS_AUTH_MODE_MISMATCH"
    assert connection_repo.rows == {}


async def test_create_requires_credentials_and_validates_all_fields(
    integrations: None, connection_service: ConnectionService, principal: Principal
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.create(
            principal,
            draft(
                "bad id",
                None,
                metadata={"k": "x" * 40000},
                config={"1bad": "v"},
                tags={"Bad": "v"},
            ),
        )
    assert sorted(v.field for v in caught.value.violations) == [
        "connection.connection_config",
        "connection.connection_id",
        "connection.credentials",
        "connection.metadata",
        "connection.tags",
    ]


async def test_create_unknown_integration(
    integrations: None, connection_service: ConnectionService, other_principal: Principal
) -> None:
    with pytest.raises(NotFoundError) as caught:
        await connection_service.create(other_principal, draft("u", API_KEY))
    assert caught.value.reason == "INTEGRATION_NOT_FOUND"


# --- get / list / delete --------------------------------------------------------------------


async def test_get_scoped_to_environment(
    existing: Connection,
    connection_service: ConnectionService,
    principal: Principal,
    other_principal: Principal,
) -> None:
    assert (await connection_service.get(principal, "openai", "user-1")).id == existing.id
    with pytest.raises(NotFoundError) as caught:
        await connection_service.get(other_principal, "openai", "user-1")
    assert caught.value.reason == "CONNECTION_NOT_FOUND"
    with pytest.raises(NotFoundError):
        await connection_service.access(other_principal, "openai", "user-1")


async def test_get_invalid_ids(connection_service: ConnectionService, principal: Principal) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.get(principal, "", "a" * 256)
    assert [v.field for v in caught.value.violations] == ["integration_id", "connection_id"]


async def test_list_pages(
    integrations: None, connection_service: ConnectionService, principal: Principal
) -> None:
    for integration, cid, tag in [
        ("openai", "b", "x"),
        ("openai", "a", "y"),
        ("twilio", "a", "x"),
        ("openai", "c", "x"),
    ]:
        creds: Credentials = API_KEY if integration == "openai" else BASIC
        await connection_service.create(
            principal, draft(cid, creds, integration_id=integration, tags={"t": tag})
        )
    first = await connection_service.list(
        principal, integration_id="", tags={}, page_size=2, after=None
    )
    assert [(c.integration_id, c.connection_id) for c in first.items] == [
        ("openai", "a"),
        ("openai", "b"),
    ]
    assert first.next_cursor == ("openai", "b")
    second = await connection_service.list(
        principal, integration_id="", tags={}, page_size=2, after=("openai", "b")
    )
    assert [(c.integration_id, c.connection_id) for c in second.items] == [
        ("openai", "c"),
        ("twilio", "a"),
    ]
    assert second.next_cursor is None
    tagged = await connection_service.list(
        principal, integration_id="openai", tags={"t": "x"}, page_size=10, after=None
    )
    assert [c.connection_id for c in tagged.items] == ["b", "c"]
    assert tagged.next_cursor is None


async def test_list_validates_filters(
    connection_service: ConnectionService, principal: Principal
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.list(
            principal, integration_id="-x", tags={"Bad": "v"}, page_size=-5, after=None
        )
    assert [v.field for v in caught.value.violations] == ["integration_id", "tags", "page_size"]


async def test_delete(
    existing: Connection, connection_service: ConnectionService, principal: Principal
) -> None:
    await connection_service.delete(principal, "openai", "user-1")
    with pytest.raises(NotFoundError):
        await connection_service.get(principal, "openai", "user-1")
    with pytest.raises(NotFoundError):
        await connection_service.delete(principal, "openai", "user-1")


async def test_integration_delete_with_connections_needs_force(
    existing: Connection,
    integration_service: IntegrationService,
    connection_service: ConnectionService,
    principal: Principal,
) -> None:
    with pytest.raises(FailedPreconditionError):
        await integration_service.delete(principal, "openai", force=False)
    assert (await connection_service.get(principal, "openai", "user-1")).id == existing.id
    await integration_service.delete(principal, "openai", force=True)
    with pytest.raises(NotFoundError):
        await connection_service.get(principal, "openai", "user-1")


# --- access ---------------------------------------------------------------------------------


async def test_access_refuses_blob_moved_from_another_row(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    other = await connection_service.create(principal, draft("user-2", ApiKeyCredentials("sk-2")))
    connection, _ = connection_repo.rows[other.id]
    connection_repo.rows[other.id] = (connection, stored_secrets(connection_repo, existing))
    with pytest.raises(DataIntegrityError):
        await connection_service.access(principal, "openai", "user-2")
    revealed = await connection_service.access(principal, "openai", "user-1")
    assert revealed.credentials == API_KEY


async def test_access_refuses_swapped_columns(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    connection, secrets = connection_repo.rows[existing.id]
    connection_repo.rows[existing.id] = (
        connection,
        EncryptedConnectionSecrets(secrets.connection_config, secrets.credentials),
    )
    with pytest.raises(DataIntegrityError):
        await connection_service.access(principal, "openai", "user-1")


async def test_access_unreadable_plaintext_is_data_integrity_error(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    fake_cipher: Any,
    principal: Principal,
) -> None:
    secrets = stored_secrets(connection_repo, existing)
    sealed = fake_cipher.sealed[secrets.credentials]
    for plaintext in [b"not json", b'{"username": "u", "password": "p"}', b"[]", b"\xff"]:
        fake_cipher.sealed[secrets.credentials] = type(sealed)(
            plaintext, sealed.purpose, sealed.binding
        )
        with pytest.raises(DataIntegrityError):
            await connection_service.access(principal, "openai", "user-1")


# --- update: mask semantics -----------------------------------------------------------------


async def test_update_metadata_only_keeps_everything_else(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    before = stored_secrets(connection_repo, existing)
    updated = await connection_service.update(
        principal,
        draft("user-1", None, metadata={"plan": "team"}, tags={"env": "dev"}, config={}),
        frozenset({"metadata"}),
        etag="",
        allow_missing=False,
    )
    assert updated.metadata == {"plan": "team"}
    assert updated.tags == {"env": "prod"}
    assert updated.connection_config_keys == ("org", "region")
    assert updated.version == 2
    assert stored_secrets(connection_repo, existing) == before
    revealed = await connection_service.access(principal, "openai", "user-1")
    assert revealed.credentials == API_KEY
    assert revealed.connection_config == {"org": "o-1", "region": "eu"}


async def test_update_ignores_invalid_fields_outside_the_mask(
    existing: Connection, connection_service: ConnectionService, principal: Principal
) -> None:
    updated = await connection_service.update(
        principal,
        draft(
            "user-1",
            BASIC,  # wrong auth mode, but not in the mask
            metadata={"ok": True},
            tags={"Bad Key": ""},
            config={"1bad": "x" * 5000},
        ),
        frozenset({"metadata"}),
        etag="",
        allow_missing=False,
    )
    assert updated.metadata == {"ok": True}
    assert updated.tags == {"env": "prod"}


async def test_update_tags_in_mask_but_unset_clears_them(
    existing: Connection, connection_service: ConnectionService, principal: Principal
) -> None:
    updated = await connection_service.update(
        principal, draft("user-1", None), frozenset({"tags"}), etag="", allow_missing=False
    )
    assert updated.tags == {}
    assert updated.metadata == {"plan": "pro"}


async def test_update_connection_config_replaces_whole_map(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    before = stored_secrets(connection_repo, existing)
    updated = await connection_service.update(
        principal,
        draft("user-1", None, config={"zone": "z1"}),
        frozenset({"connection_config"}),
        etag="",
        allow_missing=False,
    )
    assert updated.connection_config_keys == ("zone",)
    after = stored_secrets(connection_repo, existing)
    assert after.credentials == before.credentials
    assert after.connection_config != before.connection_config
    revealed = await connection_service.access(principal, "openai", "user-1")
    assert revealed.connection_config == {"zone": "z1"}
    assert revealed.credentials == API_KEY


async def test_update_credentials(
    existing: Connection, connection_service: ConnectionService, principal: Principal
) -> None:
    await connection_service.update(
        principal,
        draft("user-1", ApiKeyCredentials("sk-new")),
        frozenset({"credentials"}),
        etag="",
        allow_missing=False,
    )
    revealed = await connection_service.access(principal, "openai", "user-1")
    assert revealed.credentials == ApiKeyCredentials("sk-new")
    assert revealed.connection_config == {"org": "o-1", "region": "eu"}


async def test_update_credentials_auth_mode_mismatch(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.update(
            principal,
            draft("user-1", BASIC),
            frozenset({"credentials"}),
            etag="",
            allow_missing=False,
        )
    assert caught.value.reason == "CREDENTIALS_AUTH_MODE_MISMATCH"
    assert connection_repo.updates == []


async def test_update_credentials_in_mask_but_missing(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.update(
            principal,
            draft("user-1", None),
            frozenset({"credentials"}),
            etag="",
            allow_missing=False,
        )
    assert [v.field for v in caught.value.violations] == ["connection.credentials"]
    assert connection_repo.updates == []


@pytest.mark.parametrize(
    "paths",
    [
        {"auth_mode"},
        {"connection_id"},
        {"integration_id"},
        {"version"},
        {"credentials_set"},
        {"metadata", "bogus"},
        {"metadata.plan"},
    ],
)
async def test_update_mask_refuses_unknown_or_read_only_paths(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
    paths: set[str],
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.update(
            principal, draft("user-1", None), frozenset(paths), etag="", allow_missing=False
        )
    assert [v.field for v in caught.value.violations] == ["update_mask"]
    assert connection_repo.updates == []


async def test_update_mask_empty_refused(
    existing: Connection, connection_service: ConnectionService, principal: Principal
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.update(
            principal, draft("user-1", None), frozenset(), etag="", allow_missing=False
        )
    assert [v.field for v in caught.value.violations] == ["update_mask"]


async def test_update_missing_without_allow_missing(
    integrations: None,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    with pytest.raises(NotFoundError) as caught:
        await connection_service.update(
            principal,
            draft("nope", API_KEY),
            frozenset({"credentials"}),
            etag="",
            allow_missing=False,
        )
    assert caught.value.reason == "CONNECTION_NOT_FOUND"
    assert connection_repo.rows == {}


async def test_update_other_environment_is_not_found(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    other_principal: Principal,
) -> None:
    with pytest.raises(NotFoundError):
        await connection_service.update(
            other_principal,
            draft("user-1", None, metadata={"x": 1}),
            frozenset({"metadata"}),
            etag="",
            allow_missing=False,
        )
    assert connection_repo.rows[existing.id][0].metadata == {"plan": "pro"}


# --- update: allow_missing ------------------------------------------------------------------


async def test_allow_missing_creates(
    integrations: None, connection_service: ConnectionService, principal: Principal
) -> None:
    created = await connection_service.update(
        principal,
        draft("new", API_KEY, metadata={"a": 1}, tags={"env": "prod"}),
        frozenset({"credentials", "metadata", "tags"}),
        etag="",
        allow_missing=True,
    )
    assert created.version == 1
    assert created.connection_id == "new"
    assert created.metadata == {"a": 1}
    revealed = await connection_service.access(principal, "openai", "new")
    assert revealed.credentials == API_KEY


async def test_allow_missing_create_still_requires_credentials(
    integrations: None,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.update(
            principal,
            draft("new", None, metadata={"a": 1}),
            frozenset({"metadata"}),
            etag="",
            allow_missing=True,
        )
    assert [v.field for v in caught.value.violations] == ["connection.credentials"]
    assert connection_repo.rows == {}


async def test_allow_missing_create_checks_auth_mode(
    integrations: None, connection_service: ConnectionService, principal: Principal
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.update(
            principal, draft("new", BASIC), frozenset({"credentials"}), etag="", allow_missing=True
        )
    assert caught.value.reason == "CREDENTIALS_AUTH_MODE_MISMATCH"


async def test_allow_missing_with_etag_does_not_create(
    integrations: None,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    with pytest.raises(NotFoundError):
        await connection_service.update(
            principal,
            draft("new", API_KEY),
            frozenset({"credentials"}),
            etag="1.000000000000",
            allow_missing=True,
        )
    assert connection_repo.rows == {}


async def test_allow_missing_updates_existing(
    existing: Connection, connection_service: ConnectionService, principal: Principal
) -> None:
    updated = await connection_service.update(
        principal,
        draft("user-1", None, metadata={"plan": "x"}),
        frozenset({"metadata"}),
        etag="",
        allow_missing=True,
    )
    assert updated.id == existing.id
    assert updated.version == 2
    assert updated.metadata == {"plan": "x"}


async def test_allow_missing_race_with_concurrent_create_updates_instead(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    """The row appears between the lookup and the insert: the upsert updates it."""
    connection_repo.hide_next_get = True
    updated = await connection_service.update(
        principal,
        draft("user-1", ApiKeyCredentials("sk-race"), metadata={"plan": "race"}),
        frozenset({"credentials", "metadata"}),
        etag="",
        allow_missing=True,
    )
    assert updated.id == existing.id
    assert updated.version == 2
    assert updated.metadata == {"plan": "race"}
    assert len(connection_repo.rows) == 1
    revealed = await connection_service.access(principal, "openai", "user-1")
    assert revealed.credentials == ApiKeyCredentials("sk-race")


# --- update: etags --------------------------------------------------------------------------


async def test_update_with_current_etag(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    updated = await connection_service.update(
        principal,
        draft("user-1", None, metadata={"v": 2}),
        frozenset({"metadata"}),
        etag=etag_for(existing.id, existing.version),
        allow_missing=False,
    )
    assert updated.version == existing.version + 1
    assert connection_repo.updates[-1][2] == existing.version


async def test_update_with_stale_etag_conflicts(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    await connection_service.update(
        principal,
        draft("user-1", None, metadata={"v": 2}),
        frozenset({"metadata"}),
        etag="",
        allow_missing=False,
    )
    with pytest.raises(ConflictError) as caught:
        await connection_service.update(
            principal,
            draft("user-1", None, metadata={"v": 3}),
            frozenset({"metadata"}),
            etag=etag_for(existing.id, 1),
            allow_missing=False,
        )
    assert caught.value.reason == "ETAG_MISMATCH"
    assert connection_repo.rows[existing.id][0].metadata == {"v": 2}


async def test_update_etag_race_conflicts(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    """Another writer commits between our read and our conditional write."""
    connection_repo.before_update = lambda: connection_repo.bump(
        principal.environment_id, "openai", "user-1"
    )
    with pytest.raises(ConflictError):
        await connection_service.update(
            principal,
            draft("user-1", None, metadata={"v": 9}),
            frozenset({"metadata"}),
            etag=etag_for(existing.id, 1),
            allow_missing=False,
        )
    assert connection_repo.rows[existing.id][0].metadata == {"plan": "pro"}


async def test_update_row_deleted_concurrently_is_not_found(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    for etag in ["", etag_for(existing.id, 1)]:
        connection_repo.before_update = lambda: connection_repo.rows.clear()
        with pytest.raises(NotFoundError):
            await connection_service.update(
                principal,
                draft("user-1", None, metadata={"v": 9}),
                frozenset({"metadata"}),
                etag=etag,
                allow_missing=False,
            )
        connection_repo.rows[existing.id] = (existing, EncryptedConnectionSecrets(b"", b""))


@pytest.mark.parametrize(
    "etag",
    ["abc", "-1", "1.0", " 1", "1 ", "0x1", "1" * 19, '"1"', "W/1", "１", "²", "½", "١"],
)
async def test_update_malformed_etag_refused(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
    etag: str,
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.update(
            principal,
            draft("user-1", None, metadata={"v": 9}),
            frozenset({"metadata"}),
            etag=etag,
            allow_missing=False,
        )
    assert [v.field for v in caught.value.violations] == ["connection.etag"]
    assert connection_repo.updates == []


# --- verification against the provider (fake probe) ----------------------------------------


async def test_create_verifies_with_resolved_auth(
    integrations: None,
    connection_service: ConnectionService,
    fake_probe: Any,
    principal: Principal,
) -> None:
    created = await connection_service.create(principal, draft("u", API_KEY))
    assert created.verification.state is VerificationState.VERIFIED
    assert len(fake_probe.calls) == 1
    auth, _verification = fake_probe.calls[0]
    assert auth.base_url == "https://api.openai.com"
    assert auth.headers.get("authorization") == "Bearer sk-test-1"


async def test_create_rejected_by_provider_stores_nothing(
    integrations: None,
    connection_service: ConnectionService,
    connection_repo: Any,
    fake_probe: Any,
    fake_cipher: Any,
    principal: Principal,
) -> None:
    fake_probe.result = ProbeResult(VerificationState.REJECTED, 401)
    with pytest.raises(FailedPreconditionError) as caught:
        await connection_service.create(principal, draft("u", API_KEY))
    assert caught.value.reason == "CREDENTIALS_REJECTED"
    assert "sk-test-1" not in caught.value.message
    assert connection_repo.rows == {}
    fake_probe.result = ProbeResult(VerificationState.ERROR, 503)
    with pytest.raises(UnavailableError):
        await connection_service.create(principal, draft("u", API_KEY))
    assert connection_repo.rows == {}


async def test_create_skip_verification(
    integrations: None,
    connection_service: ConnectionService,
    fake_probe: Any,
    principal: Principal,
) -> None:
    fake_probe.result = ProbeResult(VerificationState.REJECTED, 401)
    created = await connection_service.create(
        principal, draft("u", API_KEY), skip_verification=True
    )
    assert created.verification.state is VerificationState.UNVERIFIED
    assert fake_probe.calls == []


async def test_metadata_update_does_not_probe_but_credentials_update_does(
    existing: Connection,
    connection_service: ConnectionService,
    connection_repo: Any,
    fake_probe: Any,
    principal: Principal,
) -> None:
    calls = len(fake_probe.calls)
    await connection_service.update(
        principal,
        draft("user-1", None, metadata={"x": 1}),
        frozenset({"metadata"}),
        etag="",
        allow_missing=False,
    )
    assert len(fake_probe.calls) == calls

    fake_probe.result = ProbeResult(VerificationState.REJECTED, 401)
    before = connection_repo.rows[existing.id]
    with pytest.raises(FailedPreconditionError):
        await connection_service.update(
            principal,
            draft("user-1", ApiKeyCredentials("sk-bad")),
            frozenset({"credentials"}),
            etag="",
            allow_missing=False,
        )
    assert len(fake_probe.calls) == calls + 1
    assert connection_repo.rows[existing.id] == before
    revealed = await connection_service.access(principal, "openai", "user-1")
    assert revealed.credentials == API_KEY


async def test_access_returns_ready_to_use_auth(
    existing: Connection, connection_service: ConnectionService, principal: Principal
) -> None:
    revealed = await connection_service.access(principal, "openai", "user-1")
    assert revealed.base_url == "https://api.openai.com"
    assert revealed.headers.get("authorization") == "Bearer sk-test-1"
    assert "sk-test-1" not in repr(revealed)
