"""Checking credentials against their provider: before storing them, on demand, and in the
background for connections not checked recently."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from credbroker.domain.errors import FailedPreconditionError, UnavailableError
from credbroker.domain.injection import ResolvedAuth, resolve_auth, verification_for
from credbroker.domain.models import (
    UNVERIFIED,
    Credentials,
    VerificationRecord,
    VerificationState,
)
from credbroker.domain.providers import Provider, Verification


@dataclass(frozen=True)
class ProbeResult:
    """What the provider answered. ``error`` describes a transport failure (never secrets)."""

    state: VerificationState
    http_status: int = 0
    error: str = ""


class DestinationNotAllowedError(Exception):
    """The provider URL resolves to an address the outbound policy forbids."""


class UnresolvableDestinationError(DestinationNotAllowedError):
    """The provider's host name does not resolve from the server (so no address can be
    checked against the outbound policy)."""


class CredentialProbe(Protocol):
    async def probe(self, auth: ResolvedAuth, verification: Verification) -> ProbeResult:
        """Sends the verification request(s); first 2xx wins. A 4xx means REJECTED; timeouts,
        transport errors and 5xx mean ERROR. Raises DestinationNotAllowedError."""
        ...


class CredentialVerifier:
    """Runs a provider's verification request for given credentials and config, and turns the
    answer into a VerificationRecord or, before storing, into the error that refuses them."""

    def __init__(self, probe: CredentialProbe | None) -> None:
        self._probe = probe

    async def probe(
        self,
        provider: Provider,
        integration_config: Mapping[str, str],
        credentials: Credentials,
        connection_config: Mapping[str, str],
    ) -> ProbeResult | None:
        """The provider's answer, or None when it has no verification request (or outbound
        verification is disabled)."""
        verification = verification_for(provider, integration_config)
        if verification is None or self._probe is None:
            return None
        auth = resolve_auth(provider, integration_config, credentials, connection_config)
        try:
            return await self._probe.probe(auth, verification)
        except UnresolvableDestinationError:
            raise FailedPreconditionError(
                "the provider's host name does not resolve from the server; check its DNS and "
                "egress, or store with skip_verification",
                reason="DESTINATION_NOT_ALLOWED",
            ) from None
        except DestinationNotAllowedError:
            raise FailedPreconditionError(
                "the provider's address is not allowed by the outbound policy",
                reason="DESTINATION_NOT_ALLOWED",
            ) from None

    async def before_storing(
        self,
        provider: Provider,
        integration_config: Mapping[str, str],
        credentials: Credentials,
        connection_config: Mapping[str, str],
    ) -> VerificationRecord:
        """VERIFIED (or UNVERIFIED without a verification request); raises if the provider
        refuses the credentials (FAILED_PRECONDITION) or cannot tell (UNAVAILABLE)."""
        result = await self.probe(provider, integration_config, credentials, connection_config)
        if result is None:
            return UNVERIFIED
        status = {"provider": provider.name, "provider_status": str(result.http_status)}
        if result.state is VerificationState.REJECTED:
            raise FailedPreconditionError(
                f"{provider.display_name} refused the credentials (HTTP {result.http_status})",
                reason="CREDENTIALS_REJECTED",
                metadata=status,
            )
        if result.state is not VerificationState.VERIFIED:
            raise UnavailableError(
                f"{provider.display_name} could not verify the credentials",
                reason="PROVIDER_UNAVAILABLE",
                metadata=status,
            )
        return VerificationRecord(VerificationState.VERIFIED, datetime.now(UTC), result.http_status)
