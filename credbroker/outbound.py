"""Outbound HTTP to providers (credential verification) and to webhook endpoints, behind an
address guard.

Every hop (redirects included, at most ``max_redirects``) is resolved first; the request goes to
the resolved address (the host name still drives TLS verification through SNI), so a name cannot
be re-pointed between the check and the connection. Private, loopback, link-local, multicast and
reserved addresses are refused unless an operator allow-list (CIDRs) permits them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
import structlog

from credbroker import metrics
from credbroker.address_policy import globally_routable
from credbroker.domain.delivery import AttemptResult
from credbroker.domain.errors import FailedPreconditionError
from credbroker.domain.injection import ResolvedAuth
from credbroker.domain.models import VerificationState
from credbroker.domain.providers import Verification
from credbroker.domain.verification import (
    DestinationNotAllowedError,
    ProbeResult,
    UnresolvableDestinationError,
)

log = structlog.get_logger("credbroker.outbound")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """``"127.0.0.0/8, ::1/128"`` → networks; raises ValueError naming a bad entry."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network (CIDR)") from None
    return tuple(networks)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches (mapped, 6to4, NAT64, IPv4-compatible), so a
    private IPv4 target cannot hide behind an IPv6 form that looks global."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or int(address) >> 32 == 0:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


class AddressGuard:
    def __init__(self, allowed: Sequence[IPNetwork] = ()) -> None:
        self._allowed = tuple(allowed)

    def allow_listed(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self._allowed)

    def permits(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if self.allow_listed(address):
            return True
        embedded = _embedded_ipv4(address)
        if embedded is not None and not self.permits(embedded):
            return False
        return globally_routable(address)

    async def resolve(self, host: str, port: int, *, plain_http: bool = False) -> str:
        """One permitted address of ``host``; refuses if any resolved address is forbidden.
        Plain http is only allowed to allow-listed addresses (test doubles, internal APIs)."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            raise UnresolvableDestinationError(f"cannot resolve {host}") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses or not all(self.permits(a) for a in addresses):
            raise DestinationNotAllowedError(f"{host} resolves to a forbidden address")
        if plain_http and not all(self.allow_listed(a) for a in addresses):
            raise DestinationNotAllowedError("plain http is only allowed to allow-listed addresses")
        return str(addresses[0])

    async def pin(self, url: str) -> tuple[str, str, str]:
        """(the URL with its host replaced by one permitted resolved address, the Host header,
        the TLS server name). Raises DestinationNotAllowedError."""
        parts = urlsplit(url)
        if parts.scheme not in {"https", "http"}:
            raise DestinationNotAllowedError("URLs must use https")
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await self.resolve(host, port, plain_http=parts.scheme == "http")
        pinned_host = f"[{address}]" if ":" in address else address
        netloc = pinned_host if parts.port is None else f"{pinned_host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc)), parts.netloc.rsplit("@", 1)[-1], host

    async def check(self, url: str) -> None:
        """The webhook URL check of :class:`credbroker.domain.webhooks.DestinationPolicy`."""
        try:
            await self.pin(url)
        except DestinationNotAllowedError as exc:
            raise FailedPreconditionError(
                f"the URL is not allowed by the outbound policy: {exc}",
                reason="DESTINATION_NOT_ALLOWED",
            ) from None


def tls_verification(ca_file: Path | None) -> ssl.SSLContext | bool:
    """What httpx verifies server certificates with: the default store, or only ``ca_file``."""
    if ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(ca_file))


class HttpCredentialProbe:
    def __init__(
        self,
        guard: AddressGuard,
        *,
        timeout: float = 5.0,
        max_redirects: int = 3,
        ca_file: Path | None = None,
    ) -> None:
        self._guard = guard
        self._timeout = timeout
        self._max_redirects = max_redirects
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            verify=tls_verification(ca_file),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def probe(self, auth: ResolvedAuth, verification: Verification) -> ProbeResult:
        result = ProbeResult(VerificationState.ERROR, 0, "no request made")
        for path in verification.paths:
            result = await self._request(verification.method, auth.base_url + path, auth)
            if result.state is VerificationState.VERIFIED:
                break
        metrics.VERIFICATIONS.labels(result.state.value).inc()
        return result

    async def _request(self, method: str, url: str, auth: ResolvedAuth) -> ProbeResult:
        params = dict(auth.query_params)
        for _ in range(self._max_redirects + 1):
            try:
                response = await asyncio.wait_for(
                    self._send(method, url, auth, params), timeout=self._timeout
                )
            except (httpx.HTTPError, TimeoutError, OSError) as exc:
                log.info("provider unreachable", error_type=type(exc).__name__)
                return ProbeResult(VerificationState.ERROR, 0, type(exc).__name__)
            status = response.status_code
            if status in {301, 302, 303, 307, 308} and "location" in response.headers:
                target = urljoin(url, response.headers["location"])
                if _origin(target) != _origin(url):
                    # Never forward credentials to another origin.
                    return ProbeResult(VerificationState.ERROR, status, "cross-origin redirect")
                url, params = target, {}  # the redirect target carries its own query
                continue
            if 200 <= status < 300:
                return ProbeResult(VerificationState.VERIFIED, status)
            if 400 <= status < 500:
                return ProbeResult(VerificationState.REJECTED, status)
            return ProbeResult(VerificationState.ERROR, status, f"HTTP {status}")
        return ProbeResult(VerificationState.ERROR, 0, "too many redirects")

    async def _send(
        self, method: str, url: str, auth: ResolvedAuth, params: dict[str, str]
    ) -> httpx.Response:
        pinned, host_header, host = await self._guard.pin(url)
        headers = {**auth.headers, "host": host_header}
        return await self._client.request(
            method,
            pinned,
            headers=headers,
            params=params or None,
            extensions={"sni_hostname": host},
        )


class HttpWebhookSender:
    """POSTs a webhook body to the endpoint's pinned resolved address (the guard refuses private
    and loopback addresses unless allow-listed); redirects are never followed (a 3xx is a failed
    attempt). Errors name the failure, never the URL (it may carry a token)."""

    def __init__(
        self,
        guard: AddressGuard,
        *,
        timeout: float = 10.0,
        ca_file: Path | None = None,
        max_connections: int = 64,
    ) -> None:
        self._guard = guard
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            verify=tls_verification(ca_file),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=16),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> AttemptResult:
        started = time.monotonic()
        try:
            pinned, host_header, host = await self._guard.pin(url)
            # Streamed and closed unread: the receiver's body is never buffered.
            async with self._client.stream(
                "POST",
                pinned,
                content=body,
                headers={**headers, "host": host_header},
                extensions={"sni_hostname": host},
            ) as response:
                status = response.status_code
        except DestinationNotAllowedError as exc:
            return AttemptResult(0, f"destination not allowed: {exc}")
        except (httpx.HTTPError, OSError) as exc:
            return AttemptResult(0, type(exc).__name__)
        elapsed = int((time.monotonic() - started) * 1000)
        if 200 <= status < 300:
            return AttemptResult(status, "", elapsed)
        if 300 <= status < 400:
            return AttemptResult(status, "redirects are not followed", elapsed)
        return AttemptResult(status, f"HTTP {status}", elapsed)
