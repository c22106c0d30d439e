"""IntegrationService over an in-memory repository (fakes in conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from credbroker.domain.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from credbroker.domain.integrations import IntegrationDraft, IntegrationService
from credbroker.domain.models import AuthMode, Principal


async def test_create_takes_auth_mode_and_default_name_from_catalog(
    integration_service: IntegrationService, principal: Principal
) -> None:
    created = await integration_service.create(
        principal, IntegrationDraft("openai-prod", "openai", "")
    )
    assert created.integration_id == "openai-prod"
    assert created.provider == "openai"
    assert created.auth_mode is AuthMode.API_KEY
    assert created.display_name == "OpenAI"
    assert created.environment_id == principal.environment_id

    basic = await integration_service.create(principal, IntegrationDraft("t", "twilio", "Mine"))
    assert basic.auth_mode is AuthMode.BASIC
    assert basic.display_name == "Mine"


async def test_create_reports_every_bad_field(
    integration_service: IntegrationService, principal: Principal, integration_repo: Any
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await integration_service.create(principal, IntegrationDraft("-bad", "nope", "a\x00"))
    fields = sorted(v.field for v in caught.value.violations)
    assert fields == [
        "integration.display_name",
        "integration.integration_id",
        "integration.provider",
    ]
    assert integration_repo.rows == {}


async def test_create_requires_provider(
    integration_service: IntegrationService, principal: Principal
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await integration_service.create(principal, IntegrationDraft("x", "", ""))
    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("integration.provider", "is required")
    ]


async def test_duplicate_create(
    integration_service: IntegrationService, principal: Principal, other_principal: Principal
) -> None:
    await integration_service.create(principal, IntegrationDraft("x", "openai", ""))
    with pytest.raises(AlreadyExistsError):
        await integration_service.create(principal, IntegrationDraft("x", "twilio", ""))
    # The same id in another environment is independent.
    other = await integration_service.create(other_principal, IntegrationDraft("x", "twilio", ""))
    assert other.auth_mode is AuthMode.BASIC


async def test_get_is_scoped_to_environment(
    integration_service: IntegrationService, principal: Principal, other_principal: Principal
) -> None:
    await integration_service.create(principal, IntegrationDraft("x", "openai", ""))
    assert (await integration_service.get(principal, "x")).provider == "openai"
    with pytest.raises(NotFoundError) as caught:
        await integration_service.get(other_principal, "x")
    assert caught.value.reason == "INTEGRATION_NOT_FOUND"


async def test_get_invalid_id(
    integration_service: IntegrationService, principal: Principal
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await integration_service.get(principal, "a" * 129)
    assert [v.field for v in caught.value.violations] == ["integration_id"]


async def test_list_pages_with_cursor(
    integration_service: IntegrationService, principal: Principal, other_principal: Principal
) -> None:
    for name in ["c", "a", "e", "b", "d"]:
        await integration_service.create(principal, IntegrationDraft(name, "openai", ""))
    await integration_service.create(other_principal, IntegrationDraft("aa", "openai", ""))

    first = await integration_service.list(principal, page_size=2, after=None)
    assert [i.integration_id for i in first.items] == ["a", "b"]
    assert first.next_cursor == ("b",)
    second = await integration_service.list(principal, page_size=2, after="b")
    assert [i.integration_id for i in second.items] == ["c", "d"]
    assert second.next_cursor == ("d",)
    third = await integration_service.list(principal, page_size=2, after="d")
    assert [i.integration_id for i in third.items] == ["e"]
    assert third.next_cursor is None

    exact = await integration_service.list(principal, page_size=5, after=None)
    assert len(exact.items) == 5
    assert exact.next_cursor is None
    default = await integration_service.list(principal, page_size=0, after=None)
    assert len(default.items) == 5


async def test_list_negative_page_size(
    integration_service: IntegrationService, principal: Principal
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await integration_service.list(principal, page_size=-1, after=None)
    assert [v.field for v in caught.value.violations] == ["page_size"]


async def test_update_display_name(
    integration_service: IntegrationService, principal: Principal
) -> None:
    await integration_service.create(principal, IntegrationDraft("x", "openai", ""))
    updated = await integration_service.update(
        principal, "x", frozenset({"display_name"}), "Renamed"
    )
    assert updated.display_name == "Renamed"
    assert (await integration_service.get(principal, "x")).display_name == "Renamed"


async def test_update_with_empty_mask_changes_nothing(
    integration_service: IntegrationService, principal: Principal
) -> None:
    await integration_service.create(principal, IntegrationDraft("x", "openai", "Keep"))
    same = await integration_service.update(principal, "x", frozenset(), "Ignored")
    assert same.display_name == "Keep"


@pytest.mark.parametrize(
    ("path", "description"),
    [
        ("provider", "provider is immutable"),
        ("integration_id", "integration_id is immutable"),
        ("auth_mode", "auth_mode is output only"),
        ("create_time", "create_time is output only"),
        ("update_time", "update_time is output only"),
        ("color", "unknown field color"),
    ],
)
async def test_update_refuses_other_paths(
    integration_service: IntegrationService, principal: Principal, path: str, description: str
) -> None:
    await integration_service.create(principal, IntegrationDraft("x", "openai", "Keep"))
    with pytest.raises(InvalidArgumentError) as caught:
        await integration_service.update(principal, "x", frozenset({path, "display_name"}), "N")
    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("update_mask", description)
    ]
    assert (await integration_service.get(principal, "x")).display_name == "Keep"


async def test_update_refuses_empty_or_bad_display_name(
    integration_service: IntegrationService, principal: Principal
) -> None:
    await integration_service.create(principal, IntegrationDraft("x", "openai", "Keep"))
    for bad in ["", "x" * 256, "a\nb"]:
        with pytest.raises(InvalidArgumentError) as caught:
            await integration_service.update(principal, "x", frozenset({"display_name"}), bad)
        assert {v.field for v in caught.value.violations} == {"integration.display_name"}
    assert (await integration_service.get(principal, "x")).display_name == "Keep"


async def test_update_missing(
    integration_service: IntegrationService, principal: Principal
) -> None:
    with pytest.raises(NotFoundError):
        await integration_service.update(principal, "x", frozenset({"display_name"}), "N")
    with pytest.raises(NotFoundError):
        await integration_service.update(principal, "x", frozenset(), "N")


async def test_delete(
    integration_service: IntegrationService, principal: Principal, other_principal: Principal
) -> None:
    await integration_service.create(principal, IntegrationDraft("x", "openai", ""))
    with pytest.raises(NotFoundError):
        await integration_service.delete(other_principal, "x", force=False)
    await integration_service.delete(principal, "x", force=False)
    with pytest.raises(NotFoundError):
        await integration_service.get(principal, "x")
    with pytest.raises(NotFoundError):
        await integration_service.delete(principal, "x", force=True)
    with pytest.raises(InvalidArgumentError):
        await integration_service.delete(principal, "", force=True)
