"""Issue 9, finding 9: the outbound guard refuses every address that is not globally routable,
and every translation prefix whatever IPv4 address it embeds."""

from __future__ import annotations

import ipaddress

import pytest

from credbroker.outbound import AddressGuard

REFUSED = [
    "64:ff9b:1::a00:1",  # RFC 8215 local-use NAT64 (embeds 10.0.0.1)
    "64:ff9b:1::808:808",  # ... even when it embeds a public address
    "::ffff:0:a00:1",  # SIIT ::ffff:0:0:0/96
    "::ffff:0:808:808",
    "fec0::1",  # deprecated site-local
    "fc00::1",
    "fe80::1",
    "::1",
    "::",
    "100::1",  # discard-only
    "2001::1",  # Teredo
    "2001:db8::1",
    "3fff::1",  # documentation (RFC 9637)
    "5f00::1",  # SRv6 SIDs
    "ff02::1",
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "64:ff9b::a00:1",  # well-known NAT64 of 10.0.0.1
    "::ffff:10.0.0.1",
    "::10.0.0.1",
    "192.0.0.8",
    "192.88.99.1",
    "100.64.0.1",
    "198.18.0.1",
    "240.0.0.1",
    "224.0.0.1",
    "169.254.169.254",
]
PERMITTED = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001::1", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_not_globally_routable_is_refused(address: str) -> None:
    assert not AddressGuard().permits(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PERMITTED)
def test_public_unicast_is_permitted(address: str) -> None:
    assert AddressGuard().permits(ipaddress.ip_address(address))


def test_allow_list_still_wins() -> None:
    guard = AddressGuard([ipaddress.ip_network("fec0::/10")])
    assert guard.permits(ipaddress.ip_address("fec0::1"))
