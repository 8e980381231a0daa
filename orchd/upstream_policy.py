"""Where an endpoint may point: ``server.allowed_upstreams``.

The registry API lets an administrator (or a token that leaked) make orchd send requests to
any URL. This policy keeps it from reaching what it should not, first of all the cloud
metadata services on link-local addresses (169.254.169.254, fd00:ec2::254's link-local
peers), which hand out credentials to whoever asks from inside the machine.

Rules, in ``server.allowed_upstreams`` (a list; absent or null means "anything but the
built-in denials"):

* ``10.0.0.0/8``, ``127.0.0.1``, ``::1``: an address or network (CIDR);
* ``api.example.com``, ``*.svc.cluster.local``: a host name or a shell-style pattern
  (case-insensitive); a pattern never matches an address;
* a leading ``!`` makes a rule deny: ``!10.0.0.1``, ``!*.internal``.

A URL's host is refused when a deny rule matches it, when it is a link-local address
(``169.254.0.0/16``, ``fe80::/10``) that no allow rule inside that range names, or when the
list has allow rules and none matches. Hosts written as numbers in other forms
(``2852039166``, ``0xa9fea9fe``, ``0251.254.169.254``, ``::ffff:169.254.169.254``) are
read as the address they resolve to, as the C library would.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from yarl import URL

__all__ = ("BUILTIN_DENIED", "Rule", "UpstreamPolicy", "parse_rules", "policy_for")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Link-local: where cloud metadata services answer (AWS, GCP, Azure, OpenStack).
BUILTIN_DENIED: tuple[Network, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
)


@dataclass(frozen=True, slots=True)
class Rule:
    text: str
    deny: bool
    network: Network | None = None
    pattern: str | None = None

    def matches(self, host: str, address: Address | None) -> bool:
        if self.network is not None:
            return address is not None and address.version == self.network.version \
                and address in self.network
        assert self.pattern is not None
        return address is None and fnmatch.fnmatchcase(host, self.pattern)


def _parse_rule(text: str) -> Rule:
    raw = text.strip()
    deny = raw.startswith("!")
    body = raw[1:].strip() if deny else raw
    if not body:
        raise ValueError(f"{text!r} is empty")
    try:
        network = ipaddress.ip_network(body.strip("[]"), strict=False)
    except ValueError:
        if "/" in body or ":" in body:
            raise ValueError(f"{text!r} is not a valid address, CIDR or host pattern") from None
        allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-_*?[]")
        if not set(body.lower()) <= allowed:
            raise ValueError(f"{text!r} is not a valid address, CIDR or host pattern") from None
        return Rule(text, deny, pattern=body.lower())
    return Rule(text, deny, network=network)


def parse_rules(rules: Sequence[str] | None) -> tuple[Rule, ...]:
    """Parse every rule; ``ValueError`` names the first invalid one."""
    return tuple(_parse_rule(r) for r in rules or ())


def host_address(host: str) -> Address | None:
    """The address a URL host stands for, or None for a name."""
    bare = host.strip("[]").split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(bare)
    except ValueError:
        # inet_aton reads the forms getaddrinfo would: 2852039166, 0xa9fea9fe, 0251.0.0.1.
        if not bare or not all(c in "0123456789abcdefxABCDEFX." for c in bare):
            return None
        try:
            packed = socket.inet_aton(bare)
        except OSError:
            return None
        return ipaddress.IPv4Address(packed)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class UpstreamPolicy:
    def __init__(self, rules: Sequence[str] | None) -> None:
        self.rules = parse_rules(rules)
        self._has_allow = any(not r.deny for r in self.rules)

    def check_address(self, ip: str) -> str | None:
        """At connect time: None when orchd may talk to ``ip``, else why not.

        A host name passes ``check`` as written, whatever it resolves to; this catches a
        name that resolves to a denied address (DNS rebinding included). Only deny rules
        and the built-in denials apply here: the allow list names hosts, not addresses.
        """
        address = host_address(ip)
        if address is None:
            return None
        for rule in self.rules:
            if rule.deny and rule.network is not None and rule.matches(ip, address):
                return f"{address} is denied by the rule {rule.text!r} of server.allowed_upstreams"
        for net in BUILTIN_DENIED:
            if address.version == net.version and address in net and not any(
                    not r.deny and r.network is not None and r.network.version == net.version
                    and r.network.subnet_of(net) and address in r.network  # type: ignore[arg-type]
                    for r in self.rules):
                return f"{address} is link-local, denied by the built-in rule '!{net}'"
        return None

    def check(self, url: str) -> str | None:
        """None when ``url`` may be used; else why not, naming the rule."""
        try:
            host = (URL(url).raw_host or "").lower()
        except (ValueError, TypeError):
            return f"{url!r} is not a URL"
        address = host_address(host)
        shown = host if address is None or str(address) == host else f"{host} ({address})"
        for rule in self.rules:
            if rule.deny and rule.matches(host, address):
                return f"{url!r}: host {shown} is denied by the rule {rule.text!r} " \
                       "of server.allowed_upstreams"
        if address is not None:
            for net in BUILTIN_DENIED:
                if address.version == net.version and address in net and not any(
                        not r.deny and r.network is not None and r.network.version == net.version
                        and r.network.subnet_of(net) and address in r.network  # type: ignore[arg-type]
                        for r in self.rules):
                    return (f"{url!r}: host {shown} is link-local (cloud metadata services "
                            f"live there), denied by the built-in rule '!{net}'; allow it "
                            "explicitly in server.allowed_upstreams if it is wanted")
        if self._has_allow and not any(not r.deny and r.matches(host, address)
                                       for r in self.rules):
            return f"{url!r}: host {shown} matches no rule of server.allowed_upstreams"
        return None


@functools.lru_cache(maxsize=8)
def policy_for(rules: tuple[str, ...] | None) -> UpstreamPolicy:
    """The policy of a rule set, parsed once (the config's rules are an immutable tuple)."""
    return UpstreamPolicy(rules)
