"""Which IP addresses outbound verification may reach: globally routable unicast only.

Python's ``is_global`` is not enough (3.11 calls ``64:ff9b:1::/48``, ``::ffff:0:0:0/96`` and
``fec0::/10`` global), so the rule is an allow-list of shape, not a deny-list of ranges:

* IPv4: ``is_global``, not multicast, and outside ``192.0.0.0/24`` (IETF protocol assignments)
  and ``192.88.99.0/24`` (the retired 6to4 relay anycast);
* IPv6: inside the global unicast block ``2000::/3`` only, minus its special-purpose parts
  (``2001::/23`` with Teredo, ``2001:db8::/32`` and ``3fff::/20`` documentation), and a 6to4
  address (``2002::/16``) only when the IPv4 address it embeds is allowed itself. Outside
  ``2000::/3`` the one exception is the well-known NAT64 prefix ``64:ff9b::/96`` (DNS64 networks),
  and IPv4-mapped addresses, both allowed only when their embedded IPv4 address is. Every other
  translation prefix (local-use NAT64 ``64:ff9b:1::/48``, SIIT ``::ffff:0:0:0/96``,
  IPv4-compatible ``::/96``), site-local ``fec0::/10``, ULA, link-local, loopback, discard-only
  ``100::/64`` and multicast are refused, whatever they embed.
"""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_IPV4_SPECIAL = tuple(ipaddress.ip_network(n) for n in ("192.0.0.0/24", "192.88.99.0/24"))
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_IPV6_SPECIAL = tuple(ipaddress.ip_network(n) for n in ("2001::/23", "2001:db8::/32", "3fff::/20"))
_SIXTOFOUR = ipaddress.ip_network("2002::/16")
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def _ipv4_routable(address: ipaddress.IPv4Address) -> bool:
    return (
        address.is_global
        and not address.is_multicast
        and not any(address in network for network in _IPV4_SPECIAL)
    )


def globally_routable(address: Address) -> bool:
    """Whether ``address`` is a globally routable unicast destination (see the module doc)."""
    if isinstance(address, ipaddress.IPv4Address):
        return _ipv4_routable(address)
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64_WELL_KNOWN or address in _MAPPED:
        return _ipv4_routable(low32)
    if address not in _GLOBAL_UNICAST or any(address in n for n in _IPV6_SPECIAL):
        return False
    if address in _SIXTOFOUR:
        embedded = address.sixtofour
        return embedded is not None and _ipv4_routable(embedded)
    return True
