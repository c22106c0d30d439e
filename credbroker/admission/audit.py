"""Recording audited calls around their handler, for every transport.

* ``Audit.MUTATION`` calls are recorded *before* they run (outcome ``UNFINISHED``); if that
  record cannot be written the call fails with UNAVAILABLE and changes nothing. The outcome is
  filled in after.
* ``Audit.REVEAL`` calls (they return secrets) are recorded *after* they succeed and *before*
  the response leaves; if the record cannot be written the secret is not released (UNAVAILABLE).
* Failed calls of either kind are recorded on a best-effort basis.

Which ids a record names comes from the operation's ``resources`` and ``created`` extractors
(see :class:`credbroker.admission.gate.Operation`), so the auditor knows no wire format.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import structlog

from credbroker.domain.audit import UNFINISHED, AuditLog, AuditRecord
from credbroker.domain.errors import UnavailableError
from credbroker.domain.models import Principal
from credbroker.domain.validation import CONNECTION_ID_PATTERN, INTEGRATION_ID_PATTERN

log = structlog.get_logger("credbroker.audit")


class Audit(enum.Enum):
    """How an operation is audited."""

    NONE = "none"
    MUTATION = "mutation"
    REVEAL = "reveal"


# (integration_id, connection_id) a request names; '' when it names none.
ResourceIds = Callable[[Any], tuple[str, str]]
# The connection id a successful response names (e.g. a server-generated id); '' if none.
CreatedId = Callable[[Any], str]


INVALID_ID = "<invalid>"


def recordable(integration_id: str, connection_id: str) -> tuple[str, str]:
    """The ids as recorded: well-formed ones as they are; invalid input is never copied into
    the trail (it becomes ``<invalid>``)."""
    return (
        integration_id
        if not integration_id or INTEGRATION_ID_PATTERN.fullmatch(integration_id)
        else INVALID_ID,
        connection_id
        if not connection_id or CONNECTION_ID_PATTERN.fullmatch(connection_id)
        else INVALID_ID,
    )


def no_resources(_: Any) -> tuple[str, str]:
    return ("", "")


def no_created_id(_: Any) -> str:
    return ""


class Auditor:
    def __init__(self, audit_log: AuditLog) -> None:
        self._log = audit_log

    async def before(
        self,
        audit: Audit,
        request_id: str,
        principal: Principal,
        method: str,
        resources: tuple[str, str],
    ) -> int | None:
        """Records a mutating call before it runs; raises UnavailableError if it cannot."""
        if audit is not Audit.MUTATION:
            return None
        return await self._append_or_refuse(
            AuditRecord(request_id, principal, method, *resources, UNFINISHED)
        )

    async def succeeded(
        self,
        audit: Audit,
        event_id: int | None,
        request_id: str,
        principal: Principal,
        method: str,
        resources: tuple[str, str],
        created_id: str,
    ) -> None:
        """Records success; for reveals this must succeed before the response is released."""
        if audit is Audit.REVEAL:
            await self._store_or_refuse(
                AuditRecord(request_id, principal, method, *resources, "OK")
            )
        elif event_id is not None:
            await self._finish(event_id, "OK", created_id)

    async def revealed(
        self, request_id: str, principal: Principal, method: str, resources: tuple[str, str]
    ) -> None:
        """Records a successful reveal; raises UnavailableError if it cannot (the secret must
        then not be released)."""
        await self._store_or_refuse(AuditRecord(request_id, principal, method, *resources, "OK"))

    async def failed(
        self,
        audit: Audit,
        event_id: int | None,
        request_id: str,
        principal: Principal,
        method: str,
        resources: tuple[str, str],
        outcome: str,
    ) -> None:
        """Records a failure, best effort: the caller already gets an error."""
        try:
            if event_id is not None:
                await self._log.set_outcome(event_id, outcome, "")
            elif audit is not Audit.NONE:
                await self._log.store(
                    AuditRecord(request_id, principal, method, *resources, outcome)
                )
        except Exception as exc:  # noqa: BLE001 - best effort by design; logged for operators
            log.error("audit record failed", outcome=outcome, error_type=type(exc).__name__)

    async def record(self, record: AuditRecord) -> None:
        """Appends an event that is not a call of its own (e.g. one step of a flow); raises
        UnavailableError if it cannot be written."""
        await self._store_or_refuse(record)

    async def _append_or_refuse(self, record: AuditRecord) -> int:
        """Appends, or raises UnavailableError whatever the cause: no record, no service."""
        try:
            return await self._log.append(record)
        except Exception as exc:  # noqa: BLE001 - any failure to record refuses the call
            raise _refusal(exc) from None

    async def _store_or_refuse(self, record: AuditRecord) -> None:
        """The same for a record whose event id is not needed."""
        try:
            await self._log.store(record)
        except Exception as exc:  # noqa: BLE001 - any failure to record refuses the call
            raise _refusal(exc) from None

    async def _finish(self, event_id: int, outcome: str, connection_id: str) -> None:
        try:
            await self._log.set_outcome(event_id, outcome, connection_id)
        except Exception as exc:  # noqa: BLE001 - the change is done and recorded as UNFINISHED
            log.error(
                "audit outcome not recorded", event_id=event_id, error_type=type(exc).__name__
            )


def _refusal(error: Exception) -> UnavailableError:
    log.error("audit record failed; refusing the call", error_type=type(error).__name__)
    return UnavailableError("the audit trail cannot be written")
