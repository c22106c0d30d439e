"""ConnectionService over in-memory fakes: batched read times, fetch with and without a
reveal, listing filters and atomic metadata replace/merge."""

from __future__ import annotations

from typing import Any

import pytest

from credbroker.domain.connections import ConnectionDraft, ConnectionService
from credbroker.domain.errors import InvalidArgumentError, NotFoundError
from credbroker.domain.integrations import IntegrationDraft, IntegrationService
from credbroker.domain.models import ApiKeyCredentials, Principal
from credbroker.domain.validation import MAX_METADATA_BYTES


@pytest.fixture
async def seeded(
    integration_service: IntegrationService,
    connection_service: ConnectionService,
    principal: Principal,
) -> None:
    await integration_service.create(principal, IntegrationDraft("openai", "openai", ""))
    for connection_id in ("user-1", "user-2", "other-3"):
        await connection_service.create(
            principal,
            ConnectionDraft(
                "openai", connection_id, ApiKeyCredentials("sk-1"), {"a": 1, "b": 2}, {}, {}
            ),
            skip_verification=True,
        )


@pytest.mark.usefixtures("seeded")
async def test_reads_are_recorded_in_one_batch_not_per_read(
    connection_service: ConnectionService,
    connection_repo: Any,
    principal: Principal,
) -> None:
    await connection_service.get(principal, "openai", "user-1")
    await connection_service.access(principal, "openai", "user-1")
    fetched = await connection_service.fetch(principal, "openai", "user-2", reveal=False)
    assert fetched.provider == "openai" and fetched.revealed is None
    assert connection_repo.fetches == []  # nothing written on the read path

    await connection_service.flush_fetches()
    assert len(connection_repo.fetches) == 1
    assert len(connection_repo.fetches[0]) == 2
    await connection_service.flush_fetches()  # nothing new: no write at all
    assert len(connection_repo.fetches) == 1
    stored = await connection_service.get(principal, "openai", "user-1")
    assert stored.last_fetch_time is not None


@pytest.mark.usefixtures("seeded")
async def test_fetch_with_reveal_returns_credentials_and_ready_auth(
    connection_service: ConnectionService, principal: Principal, other_principal: Principal
) -> None:
    fetched = await connection_service.fetch(principal, "openai", "user-1", reveal=True)
    assert fetched.revealed is not None
    assert fetched.revealed.credentials == ApiKeyCredentials("sk-1")
    assert fetched.revealed.headers == {"authorization": "Bearer sk-1"}
    with pytest.raises(NotFoundError):
        await connection_service.fetch(other_principal, "openai", "user-1", reveal=True)


@pytest.mark.usefixtures("seeded")
async def test_list_filters_validate_and_combine(
    connection_service: ConnectionService, principal: Principal
) -> None:
    page = await connection_service.list(
        principal,
        integration_id="",
        tags={},
        page_size=0,
        after=None,
        integration_ids=["openai"],
        search="USER",
    )
    assert [c.connection_id for c in page.items] == ["user-1", "user-2"]
    page = await connection_service.list(
        principal, integration_id="", tags={}, page_size=0, after=None, connection_id="other-3"
    )
    assert [c.connection_id for c in page.items] == ["other-3"]
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.list(
            principal,
            integration_id="",
            tags={},
            page_size=0,
            after=None,
            integration_ids=["ok", "bad id"],
            search="x" * 300,
        )
    fields = {v.field for v in caught.value.violations}
    assert fields == {"integration_ids[1]", "search"}


@pytest.mark.usefixtures("seeded")
async def test_metadata_replace_and_shallow_merge(
    connection_service: ConnectionService, principal: Principal
) -> None:
    merged = await connection_service.set_metadata(
        principal, "openai", ["user-1", "user-2"], {"b": {"x": 1}, "c": 3}, merge=True
    )
    assert [c.metadata for c in merged] == [{"a": 1, "b": {"x": 1}, "c": 3}] * 2
    replaced = await connection_service.set_metadata(
        principal, "openai", ["user-1"], {"only": True}, merge=False
    )
    assert replaced[0].metadata == {"only": True}


@pytest.mark.usefixtures("seeded")
async def test_metadata_unknown_id_or_oversized_merge_changes_nothing(
    connection_service: ConnectionService, principal: Principal, other_principal: Principal
) -> None:
    with pytest.raises(NotFoundError) as missing:
        await connection_service.set_metadata(
            principal, "openai", ["user-1", "nope"], {"z": 1}, merge=True
        )
    assert missing.value.reason == "CONNECTION_NOT_FOUND"
    with pytest.raises(NotFoundError):
        await connection_service.set_metadata(
            other_principal, "openai", ["user-1"], {"z": 1}, merge=True
        )
    half: dict[str, Any] = {"big": "x" * (MAX_METADATA_BYTES // 2 + 10)}
    await connection_service.set_metadata(principal, "openai", ["user-2"], half, merge=True)
    with pytest.raises(InvalidArgumentError):
        await connection_service.set_metadata(
            principal, "openai", ["user-1", "user-2"], {"big2": half["big"]}, merge=True
        )
    user_1 = await connection_service.get(principal, "openai", "user-1")
    assert user_1.metadata == {"a": 1, "b": 2}


async def test_metadata_request_is_validated_before_any_read(
    connection_service: ConnectionService, principal: Principal
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.set_metadata(principal, "bad key", [], {}, merge=False)
    assert {v.field for v in caught.value.violations} == {"provider_config_key", "connection_id"}
    with pytest.raises(InvalidArgumentError) as caught:
        await connection_service.set_metadata(
            principal, "openai", ["ok", "not ok"], {}, merge=False
        )
    assert [v.field for v in caught.value.violations] == ["connection_id[1]"]
