"""Which calls are audited, and recording them around the handler.

* Mutating calls are recorded *before* they run (outcome ``UNFINISHED``); if that record cannot
  be written the call fails with UNAVAILABLE and changes nothing. The outcome is filled in after.
* ``AccessCredentials`` is recorded *after* it succeeds and *before* the response leaves; if the
  record cannot be written the secret is not released (UNAVAILABLE).
* Failed calls of either kind are recorded on a best-effort basis.
"""

from __future__ import annotations

import re
from typing import Any

import structlog

from credbroker.domain.audit import UNFINISHED, AuditLog, AuditRecord
from credbroker.domain.errors import UnavailableError
from credbroker.domain.models import Principal
from credbroker.domain.validation import CONNECTION_ID_PATTERN, INTEGRATION_ID_PATTERN

log = structlog.get_logger("credbroker.audit")

_INTEGRATIONS = "/credbroker.v1.IntegrationService/"
_CONNECTIONS = "/credbroker.v1.ConnectionService/"

REVEAL_METHODS = frozenset({_CONNECTIONS + "AccessCredentials"})
MUTATING_METHODS = frozenset(
    {
        _INTEGRATIONS + "CreateIntegration",
        _INTEGRATIONS + "UpdateIntegration",
        _INTEGRATIONS + "DeleteIntegration",
        _CONNECTIONS + "CreateConnection",
        _CONNECTIONS + "UpdateConnection",
        _CONNECTIONS + "DeleteConnection",
        _CONNECTIONS + "VerifyConnection",
    }
)


INVALID_ID = "<invalid>"


def _recordable(value: str, pattern: re.Pattern[str]) -> str:
    """The id itself if it is well-formed; invalid input is never copied into the trail."""
    return value if not value or pattern.fullmatch(value) else INVALID_ID


def resource_ids(message: Any) -> tuple[str, str]:
    """(integration_id, connection_id) named by a request or response message, '' if none."""
    for nested in ("connection", "integration"):
        if hasattr(message, nested) and message.HasField(nested):
            message = getattr(message, nested)
            break
    return (
        _recordable(getattr(message, "integration_id", ""), INTEGRATION_ID_PATTERN),
        _recordable(getattr(message, "connection_id", ""), CONNECTION_ID_PATTERN),
    )


class Auditor:
    def __init__(self, audit_log: AuditLog) -> None:
        self._log = audit_log

    @staticmethod
    def is_audited(method: str) -> bool:
        return method in MUTATING_METHODS or method in REVEAL_METHODS

    def _record(
        self, request_id: str, principal: Principal, method: str, request: Any, outcome: str
    ) -> AuditRecord:
        integration_id, connection_id = resource_ids(request)
        return AuditRecord(request_id, principal, method, integration_id, connection_id, outcome)

    async def before(
        self, request_id: str, principal: Principal, method: str, request: Any
    ) -> int | None:
        """Records a mutating call before it runs; raises UnavailableError if it cannot."""
        if method not in MUTATING_METHODS:
            return None
        return await self._append_or_refuse(
            self._record(request_id, principal, method, request, UNFINISHED)
        )

    async def succeeded(
        self,
        event_id: int | None,
        request_id: str,
        principal: Principal,
        method: str,
        request: Any,
        response: Any,
    ) -> None:
        """Records success; for reveals this must succeed before the response is released."""
        if method in REVEAL_METHODS:
            await self._append_or_refuse(self._record(request_id, principal, method, request, "OK"))
        elif event_id is not None:
            await self._finish(event_id, "OK", resource_ids(response)[1])

    async def failed(
        self,
        event_id: int | None,
        request_id: str,
        principal: Principal,
        method: str,
        request: Any,
        outcome: str,
    ) -> None:
        """Records a failure, best effort: the caller already gets an error."""
        try:
            if event_id is not None:
                await self._log.set_outcome(event_id, outcome, "")
            elif self.is_audited(method):
                await self._log.append(
                    self._record(request_id, principal, method, request, outcome)
                )
        except Exception as exc:  # noqa: BLE001 - best effort by design; logged for operators
            log.error("audit record failed", outcome=outcome, error_type=type(exc).__name__)

    async def _append_or_refuse(self, record: AuditRecord) -> int:
        """Appends, or raises UnavailableError whatever the cause: no record, no service."""
        try:
            return await self._log.append(record)
        except Exception as exc:  # noqa: BLE001 - any failure to record refuses the call
            log.error("audit record failed; refusing the call", error_type=type(exc).__name__)
            raise UnavailableError("the audit trail cannot be written") from None

    async def _finish(self, event_id: int, outcome: str, connection_id: str) -> None:
        try:
            await self._log.set_outcome(event_id, outcome, connection_id)
        except Exception as exc:  # noqa: BLE001 - the change is done and recorded as UNFINISHED
            log.error(
                "audit outcome not recorded", event_id=event_id, error_type=type(exc).__name__
            )
