"""Checking credentials against their provider: before storing them, on demand, and in the
background for connections not checked recently."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from credbroker.domain.injection import ResolvedAuth
from credbroker.domain.providers import Verification


class VerificationState(enum.Enum):
    """Stored in the database; see ``credbroker.v1.Verification.State``."""

    UNVERIFIED = "unverified"
    VERIFIED = "verified"
    REJECTED = "rejected"
    ERROR = "error"


@dataclass(frozen=True)
class ProbeResult:
    """What the provider answered. ``error`` describes a transport failure (never secrets)."""

    state: VerificationState
    http_status: int = 0
    error: str = ""


@dataclass(frozen=True)
class VerificationRecord:
    state: VerificationState
    verify_time: datetime | None
    http_status: int
    consecutive_failures: int


UNVERIFIED = VerificationRecord(VerificationState.UNVERIFIED, None, 0, 0)


class DestinationNotAllowedError(Exception):
    """The provider URL resolves to an address the outbound policy forbids."""


class CredentialProbe(Protocol):
    async def probe(self, auth: ResolvedAuth, verification: Verification) -> ProbeResult:
        """Sends the verification request(s); first 2xx wins. A 4xx means REJECTED; timeouts,
        transport errors and 5xx mean ERROR. Raises DestinationNotAllowedError."""
        ...
