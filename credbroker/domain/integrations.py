"""Integration use cases: create, read, list, update and delete an environment's integrations."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from credbroker.domain.destinations import destination_changes, require_credentials_read
from credbroker.domain.errors import InvalidArgumentError, NotFoundError
from credbroker.domain.injection import check_integration_config
from credbroker.domain.models import AuthMode, Integration, Page, Principal, Scope
from credbroker.domain.ports import IntegrationRepository
from credbroker.domain.providers import Provider, ProviderCatalog
from credbroker.domain.validation import (
    Violations,
    check_display_name,
    check_integration_id,
    check_page_size,
)

INTEGRATION_NOT_FOUND = "integration not found"
UPDATABLE_PATHS = frozenset({"display_name", "integration_config"})


@dataclass(frozen=True)
class IntegrationDraft:
    integration_id: str
    provider: str
    display_name: str
    integration_config: Mapping[str, str] = field(default_factory=dict)


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
        check_integration_config(provider, draft.integration_config)
        _check_may_direct_credentials(principal, provider, draft.integration_config)
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
                integration_config=dict(draft.integration_config),
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
        integration_config: Mapping[str, str] | None = None,
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
        for path in sorted(paths - UPDATABLE_PATHS):
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
        if not paths & UPDATABLE_PATHS:
            return await self.get(principal, integration_id)
        new_config = None
        if "integration_config" in paths:
            current = await self.get(principal, integration_id)
            new_config = dict(integration_config or {})
            catalog_entry = self._catalog.get(current.provider)
            if catalog_entry is not None:
                check_integration_config(catalog_entry, new_config)
                if new_config != dict(current.integration_config):
                    _check_may_direct_credentials(
                        principal, catalog_entry, new_config, current.integration_config
                    )
        updated = await self._repository.update(
            principal.environment_id,
            integration_id,
            display_name=display_name if "display_name" in paths else None,
            integration_config=new_config,
        )
        if updated is None:
            raise NotFoundError(INTEGRATION_NOT_FOUND, reason="INTEGRATION_NOT_FOUND")
        return updated

    def list_providers(
        self, auth_mode: AuthMode | None, *, page_size: int, after: str | None
    ) -> Page[Provider]:
        v = Violations()
        limit = check_page_size(v, "page_size", page_size)
        v.raise_if_any()
        matching = [p for p in self._catalog.list(auth_mode) if after is None or p.name > after]
        items = matching[:limit]
        more = len(matching) > limit
        return Page(items, (items[-1].name,) if more and items else None)

    def provider(self, name: str) -> Provider:
        if not name:
            raise InvalidArgumentError.single("name", "is required")
        provider = self._catalog.get(name)
        if provider is None:
            raise NotFoundError("provider not found", reason="PROVIDER_NOT_FOUND")
        return provider

    async def delete(self, principal: Principal, integration_id: str, *, force: bool) -> None:
        v = Violations()
        check_integration_id(v, "integration_id", integration_id)
        v.raise_if_any()
        if not await self._repository.delete(principal.environment_id, integration_id, force=force):
            raise NotFoundError(INTEGRATION_NOT_FOUND, reason="INTEGRATION_NOT_FOUND")


def _check_may_direct_credentials(
    principal: Principal,
    provider: Provider,
    integration_config: Mapping[str, str],
    current: Mapping[str, str] | None = None,
) -> None:
    """A generic provider's integration config decides where and how credentials are sent
    (base URL, verification path, key placement), and so does any integration setting another
    provider's base URL names. Setting it is as powerful as reading the credentials, so it also
    needs ``credentials:read`` (see :mod:`credbroker.domain.destinations`)."""
    if Scope.CREDENTIALS_READ in principal.scopes:
        return
    if provider.generic:
        if integration_config:
            require_credentials_read(principal, "the integration config of a generic provider")
    elif destination_changes(provider, "integration_config", current or {}, integration_config):
        require_credentials_read(principal, "this integration config")
