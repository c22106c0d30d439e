"""Integration use cases: create, read, list, update and delete an environment's integrations."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from credbroker.domain.errors import NotFoundError
from credbroker.domain.models import Integration, Page, Principal
from credbroker.domain.ports import IntegrationRepository
from credbroker.domain.providers import ProviderCatalog
from credbroker.domain.validation import (
    Violations,
    check_display_name,
    check_integration_id,
    check_page_size,
)

INTEGRATION_NOT_FOUND = "integration not found"


@dataclass(frozen=True)
class IntegrationDraft:
    integration_id: str
    provider: str
    display_name: str


class IntegrationService:
    def __init__(self, repository: IntegrationRepository, catalog: ProviderCatalog) -> None:
        self._repository = repository
        self._catalog = catalog

    async def create(self, principal: Principal, draft: IntegrationDraft) -> Integration:
        v = Violations()
        check_integration_id(v, "integration.integration_id", draft.integration_id)
        check_display_name(v, "integration.display_name", draft.display_name)
        provider = self._catalog.get(draft.provider)
        if not draft.provider:
            v.add("integration.provider", "is required")
        elif provider is None:
            v.add("integration.provider", "is not a known provider")
        v.raise_if_any()
        assert provider is not None
        now = datetime.now(UTC)
        return await self._repository.create(
            Integration(
                id=uuid.uuid4(),
                environment_id=principal.environment_id,
                integration_id=draft.integration_id,
                provider=provider.name,
                display_name=draft.display_name or provider.display_name,
                auth_mode=provider.auth_mode,
                create_time=now,
                update_time=now,
            )
        )

    async def get(self, principal: Principal, integration_id: str) -> Integration:
        v = Violations()
        check_integration_id(v, "integration_id", integration_id)
        v.raise_if_any()
        integration = await self._repository.get(principal.environment_id, integration_id)
        if integration is None:
            raise NotFoundError(INTEGRATION_NOT_FOUND, reason="INTEGRATION_NOT_FOUND")
        return integration

    async def list(
        self, principal: Principal, *, page_size: int, after: str | None
    ) -> Page[Integration]:
        v = Violations()
        limit = check_page_size(v, "page_size", page_size)
        v.raise_if_any()
        rows = await self._repository.list(principal.environment_id, after=after, limit=limit + 1)
        items = rows[:limit]
        more = len(rows) > limit
        return Page(items, (items[-1].integration_id,) if more and items else None)

    async def update(
        self,
        principal: Principal,
        integration_id: str,
        paths: frozenset[str],
        display_name: str,
        provider: str = "",
    ) -> Integration:
        """Updates ``display_name``. ``provider`` is immutable: naming it is accepted only when it
        repeats the stored value (clients often send back the resource they read)."""
        v = Violations()
        check_integration_id(v, "integration.integration_id", integration_id)
        if "provider" in paths:
            v.raise_if_any()
            current = await self.get(principal, integration_id)
            if provider == current.provider:
                paths = paths - {"provider"}
        for path in sorted(paths - {"display_name"}):
            if path in {"provider", "integration_id"}:
                v.add("update_mask", f"{path} is immutable")
            elif path in {"auth_mode", "create_time", "update_time"}:
                v.add("update_mask", f"{path} is output only")
            else:
                v.add("update_mask", f"unknown field {path}")
        if "display_name" in paths:
            check_display_name(v, "integration.display_name", display_name)
            if not display_name:
                v.add("integration.display_name", "must not be empty")
        v.raise_if_any()
        if "display_name" not in paths:
            return await self.get(principal, integration_id)
        updated = await self._repository.update_display_name(
            principal.environment_id, integration_id, display_name
        )
        if updated is None:
            raise NotFoundError(INTEGRATION_NOT_FOUND, reason="INTEGRATION_NOT_FOUND")
        return updated

    async def delete(self, principal: Principal, integration_id: str, *, force: bool) -> None:
        v = Violations()
        check_integration_id(v, "integration_id", integration_id)
        v.raise_if_any()
        if not await self._repository.delete(principal.environment_id, integration_id, force=force):
            raise NotFoundError(INTEGRATION_NOT_FOUND, reason="INTEGRATION_NOT_FOUND")
