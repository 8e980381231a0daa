"""Who the client is: address ranges, the ``X-Forwarded-For`` rule, ``ip_allow``/``ip_deny``.

Design section 11. A connection's peer is the socket's, or a PROXY header's
(``orchd.proxy_protocol``). When that peer is in ``server.trusted_proxies``, the client is
the rightmost address of ``X-Forwarded-For`` that is not itself a trusted proxy
(``client_from_forwarded``): each trusted proxy appends the address it saw, so everything
to the left of the first untrusted one may have been written by the client. The client
address is what the access log, ``ip_allow``/``ip_deny`` (``AddressRule``) and the rate
limits use; admin trust never does (it takes the socket's peer).

Ranges are parsed once per configuration (``parse_networks``), never per request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ("FORWARDED_BY", "AddressRule", "Network", "Networks", "address_in",
           "client_from_forwarded", "forwarded_for", "network_problem", "parse_networks")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Networks = tuple[Network, ...]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# The request item a listener sets when the connection's peer is a trusted proxy: that
# peer's address (the proxy appends it to X-Forwarded-For and keeps X-Forwarded-Proto/Host).
FORWARDED_BY = "forwarded_by"


def network_problem(value: str) -> str | None:
    """Why ``value`` is not a CIDR range (``10.0.0.0/8``, ``::1/128``, or one address), or
    None if it is one."""
    try:
        ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        return str(exc)
    return None


def parse_networks(values: Iterable[str]) -> Networks:
    """Ranges as configured (already validated: ``network_problem``)."""
    return tuple(ipaddress.ip_network(v.strip(), strict=True) for v in values)


def _address(value: str) -> Address | None:
    """``value`` as an address (an IPv4-mapped IPv6 one as IPv4); None if it is not one."""
    try:
        address = ipaddress.ip_address(value.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: Address, networks: Networks) -> bool:
    return any(address.version == network.version and address in network
               for network in networks)


def address_in(value: str, networks: Networks) -> bool:
    """``value`` is an address within one of ``networks`` (a value that is no address is
    in none)."""
    if not networks:
        return False
    address = _address(value)
    return address is not None and _within(address, networks)


def forwarded_for(pairs: Iterable[tuple[str, str]]) -> str:
    """Every ``X-Forwarded-For`` field line of a request, joined with commas in order."""
    return ", ".join([v for k, v in pairs if k.lower() == "x-forwarded-for"])


def client_from_forwarded(header: str | None, peer: str, trusted: Networks) -> str:
    """The client of a request from the trusted ``peer``: the rightmost address of the
    ``X-Forwarded-For`` value ``header`` that is not in ``trusted``; the leftmost if all
    are; ``peer`` without the header. An entry that is not an address ends the walk: it is
    taken as the client, which then matches no range (so no ``ip_allow``)."""
    if not header:
        return peer
    client = peer
    for entry in reversed(header.split(",")):
        entry = entry.strip()
        if not entry:
            continue
        client = entry
        address = _address(entry)
        if address is None:
            return entry[:64]
        if not _within(address, trusted):
            return str(address)
    return client


@dataclass(frozen=True, slots=True)
class AddressRule:
    """An endpoint's ``ip_deny`` and ``ip_allow``: deny is checked first; an empty allow
    list lets everyone else in."""

    allow: Networks = ()
    deny: Networks = ()

    def refusal(self, client: str) -> str | None:
        """Why ``client`` may not call the endpoint, or None if it may."""
        address = _address(client)
        if address is None:
            if self.allow:
                return "its address is not in the endpoint's ip_allow"
            return None
        if _within(address, self.deny):
            return "its address is in the endpoint's ip_deny"
        if self.allow and not _within(address, self.allow):
            return "its address is not in the endpoint's ip_allow"
        return None
