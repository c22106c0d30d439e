"""The audit trail: who did what to which resource, when, and how it ended. No secret values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from credbroker.domain.models import Page, Principal
from credbroker.domain.validation import (
    Violations,
    check_connection_id,
    check_integration_id,
    check_page_size,
)

UNFINISHED = "UNFINISHED"


@dataclass(frozen=True)
class AuditEvent:
    event_id: int
    event_time: datetime
    request_id: str
    environment: str
    key_id: str
    method: str
    integration_id: str
    connection_id: str
    outcome: str


@dataclass(frozen=True)
class AuditRecord:
    """What the server records about one call (ids are empty when the call addressed none)."""

    request_id: str
    principal: Principal
    method: str
    integration_id: str
    connection_id: str
    outcome: str


class AuditLog(Protocol):
    async def append(self, record: AuditRecord) -> int:
        """Stores the record durably and returns its event id; raises UnavailableError if it
        cannot (callers then refuse to proceed)."""
        ...

    async def store(self, record: AuditRecord) -> None:
        """Like :meth:`append` (durable once it returns, raises if it cannot), for records whose
        event id nobody needs (reveals, failures, steps of a flow): they may be written without
        returning ids."""
        ...

    async def set_outcome(self, event_id: int, outcome: str, connection_id: str) -> None: ...

    async def list(
        self,
        environment_id: UUID,
        *,
        integration_id: str,
        connection_id: str,
        before: int | None,
        limit: int,
    ) -> list[AuditEvent]: ...


class AuditService:
    def __init__(self, log: AuditLog) -> None:
        self._log = log

    async def list(
        self,
        principal: Principal,
        *,
        integration_id: str,
        connection_id: str,
        page_size: int,
        before: int | None,
    ) -> Page[AuditEvent]:
        v = Violations()
        if integration_id:
            check_integration_id(v, "integration_id", integration_id)
        if connection_id:
            check_connection_id(v, "connection_id", connection_id)
        limit = check_page_size(v, "page_size", page_size)
        v.raise_if_any()
        rows = await self._log.list(
            principal.environment_id,
            integration_id=integration_id,
            connection_id=connection_id,
            before=before,
            limit=limit + 1,
        )
        items = rows[:limit]
        more = len(rows) > limit
        return Page(items, (str(items[-1].event_id),) if more and items else None)
