"""Where an endpoint may point: ``server.allowed_upstreams``.

The registry API lets an administrator (or a token that leaked) make orchd send requests to
any URL. This policy keeps it from reaching what it should not: the cloud metadata services,
which hand out credentials to whoever asks from inside the machine, and orchd's own
listening addresses, where a proxied request would reach the loopback-trusted admin API.

Rules, in ``server.allowed_upstreams`` (a list; absent or null means "anything but the
built-in denials"):

* ``10.0.0.0/8``, ``127.0.0.1``, ``::1``: an address or network (CIDR);
* ``api.example.com``, ``*.svc.cluster.local``: a host name or a shell-style pattern
  (case-insensitive); a pattern never matches an address;
* a leading ``!`` makes a rule deny: ``!10.0.0.1``, ``!*.internal``.

A URL's host is refused when

1. its port is one orchd listens on and the host is that listen address, a loopback or
   unspecified address, a ``localhost`` name, or (on a wildcard listener) one of the
   machine's own names and addresses; no rule lifts this;
2. a deny rule matches it;
3. it is in a built-in denied range (``BUILTIN``) or a built-in denied name (``BUILTIN_NAMES``)
   and no allow rule inside that range (or naming that host exactly) lifts it;
4. the list has allow rules and none matches.

An address is checked in every form a connect would reach: written as numbers in other ways
(``2852039166``, ``0xa9fea9fe``, ``0251.254.169.254``, read as the C library would), and
the IPv4 address embedded in an IPv6 one (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
``::a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4 ``2002:AABB:CCDD::/48``). Deny rules and
built-in denials match any form; allow rules match the address as written (a mapped address
as its IPv4 one).

The connect-time check (``check_address``) applies the same to the address a name led to,
except the allow list (it names hosts, not the addresses behind them).
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from yarl import URL

__all__ = ("BUILTIN", "BUILTIN_DENIED", "BUILTIN_NAMES", "Denial", "Rule", "UpstreamPolicy",
           "parse_rules", "policy_for")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Denial:
    """A built-in denied range and what lives there (for the error message)."""

    network: Network
    what: str


def _denial(cidr: str, what: str) -> Denial:
    return Denial(ipaddress.ip_network(cidr), what)


# Where cloud metadata services (and their kin, which also hand out secrets) answer.
BUILTIN: tuple[Denial, ...] = (
    # AWS (IMDS, ECS task credentials at 169.254.170.2), GCP (metadata.google.internal),
    # Azure, Oracle, OpenStack, DigitalOcean, Hetzner, IBM, Tencent (169.254.0.23).
    _denial("169.254.0.0/16", "link-local (cloud metadata services live there)"),
    # OpenStack's metadata over IPv6 is fe80::a9fe:a9fe.
    _denial("fe80::/10", "link-local (cloud metadata services live there)"),
    # AWS serves its instance services on this range of its own: IMDS at fd00:ec2::254, the
    # DNS resolver at fd00:ec2::253, NTP at fd00:ec2::123 (Nitro instances).
    _denial("fd00:ec2::/32", "AWS's instance services range (IMDS at fd00:ec2::254)"),
    _denial("fd20:ce::254/128", "GCP's metadata server over IPv6"),
    _denial("100.100.100.200/32", "Alibaba Cloud's metadata service"),
    _denial("192.0.0.192/32", "Oracle Cloud's (classic) metadata service"),
    # The WireServer hands the VM agent its configuration, extension secrets included.
    _denial("168.63.129.16/32", "Azure's WireServer"),
)
BUILTIN_DENIED: tuple[Network, ...] = tuple(d.network for d in BUILTIN)

# Names of those services (a name is also checked where it leads, at connect time; these are
# refused at registration already).
BUILTIN_NAMES: dict[str, str] = {
    "metadata.google.internal": "GCP's metadata service",
    "instance-data.ec2.internal": "AWS's metadata service",
    "metadata.tencentyun.com": "Tencent Cloud's metadata service",
}

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_WILDCARD_HOSTS = frozenset({"", "*", "0.0.0.0", "::"})


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
        return Rule(text, deny, pattern=body.lower().rstrip(".") or body.lower())
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


def address_forms(address: Address) -> tuple[tuple[Address, str], ...]:
    """The address, then the IPv4 address an IPv6 one carries (with the form's name)."""
    if isinstance(address, ipaddress.IPv4Address):
        return ((address, ""),)
    value = int(address)
    embedded: ipaddress.IPv4Address | None = None
    form = ""
    if address.ipv4_mapped is not None:
        embedded, form = address.ipv4_mapped, "IPv4-mapped"
    elif 1 < value < 2**32:  # ::a.b.c.d, but not :: and ::1
        embedded, form = ipaddress.IPv4Address(value), "IPv4-compatible"
    elif address in _NAT64:
        embedded, form = ipaddress.IPv4Address(value & 0xFFFFFFFF), "NAT64"
    elif address.sixtofour is not None:
        embedded, form = address.sixtofour, "6to4"
    if embedded is None:
        return ((address, ""),)
    return ((address, ""), (embedded, form))


def _shown(host: str, form: Address, how: str) -> str:
    """The host as written, with the address it stands for when that differs."""
    if how:
        return f"{host} (the {how} form of {form})"
    return host if str(form) == host else f"{host} ({form})"


def _is_loopback_name(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


def _local_addresses() -> frozenset[Address]:
    """This machine's addresses, read cheaply from the kernel (Linux); empty elsewhere."""
    found: set[Address] = set()
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            for line in f:
                hexa = line.split(" ", 1)[0]
                if len(hexa) == 32:
                    found.add(ipaddress.IPv6Address(int(hexa, 16)))
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as f:
            last = ""
            for line in f:
                text = line.strip()
                if text.startswith("|-- "):
                    last = text[4:]
                elif text.startswith("/32 host LOCAL") and last:
                    found.add(ipaddress.IPv4Address(last))
    except (OSError, ValueError):
        pass
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class _Listener:
    """One of orchd's own listening ports and the hosts that reach it."""

    port: int
    names: frozenset[str]
    addresses: frozenset[Address]

    @classmethod
    def of(cls, host: str, port: int) -> _Listener:
        bare = host.strip().strip("[]").lower().rstrip(".")
        address = host_address(bare) if bare else None
        names: set[str] = set()
        addresses: set[Address] = set()
        if bare in _WILDCARD_HOSTS or (address is not None and address.is_unspecified):
            names.add(socket.gethostname().lower().rstrip("."))
            addresses |= _local_addresses()
        elif address is not None:
            addresses.add(address)
        else:
            names.add(bare)
        return cls(port, frozenset(names), frozenset(addresses))

    def reached_by(self, name: str | None, address: Address | None) -> bool:
        """Whether a connection to this host on this listener's port would reach orchd
        (loopback and unspecified addresses and ``localhost`` names always count)."""
        if address is not None:
            return address.is_loopback or address.is_unspecified or address in self.addresses
        return name is not None and (_is_loopback_name(name) or name in self.names)


class UpstreamPolicy:
    """``server.allowed_upstreams`` and the built-in denials.

    ``own``: orchd's own listening (host, port) pairs; a URL or a connection that would reach
    one of them is refused whatever the rules say.
    """

    def __init__(self, rules: Sequence[str] | None,
                 own: Iterable[tuple[str, int]] = ()) -> None:
        self.rules = parse_rules(rules)
        self._has_allow = any(not r.deny for r in self.rules)
        self._own = tuple(_Listener.of(host, port) for host, port in own if port > 0)

    def _own_refusal(self, name: str | None, address: Address | None,
                     port: int | None) -> bool:
        return port is not None and any(
            lst.port == port and lst.reached_by(name, address) for lst in self._own)

    def _deny_rule(self, host: str, address: Address | None) -> tuple[Rule, str] | None:
        """The first deny rule that matches the host or any form of its address, and the
        host as shown in the error."""
        forms = address_forms(address) if address is not None else ()
        for rule in self.rules:
            if not rule.deny:
                continue
            if address is None and rule.matches(host, None):
                return rule, host
            for form, how in forms:
                if rule.matches(host, form):
                    return rule, _shown(host, form, how)
        return None

    def _lifted(self, address: Address, net: Network) -> bool:
        """An allow rule inside the built-in range ``net`` names ``address``."""
        return any(not r.deny and r.network is not None and r.network.version == net.version
                   and r.network.subnet_of(net)  # type: ignore[arg-type]
                   and address in r.network for r in self.rules)

    def _builtin(self, address: Address) -> tuple[Denial, Address, str] | None:
        """The built-in denial that holds for any form of ``address``."""
        for form, how in address_forms(address):
            for denial in BUILTIN:
                net = denial.network
                if form.version == net.version and form in net \
                        and not self._lifted(form, net):
                    return denial, form, how
        return None

    def _builtin_name(self, name: str) -> str | None:
        what = BUILTIN_NAMES.get(name)
        if what is None or any(not r.deny and r.pattern == name for r in self.rules):
            return None
        return what

    def check_address(self, ip: str, port: int | None = None) -> str | None:
        """At connect time: None when orchd may talk to ``ip`` (on ``port``), else why not.

        A host name passes ``check`` as written, whatever it resolves to; this catches a
        name that resolves to a denied address (DNS rebinding included). Only deny rules
        and the built-in denials apply here: the allow list names hosts, not addresses.
        Without ``port``, orchd's own listening addresses are not checked.
        """
        address = host_address(ip)
        if address is None:
            return None
        if self._own_refusal(None, address, port):
            return (f"{address} port {port} is this orchd's own listening address "
                    "(built-in rule: an allow rule cannot lift it)")
        denied = self._deny_rule(str(address), address)
        if denied is not None:
            rule, shown = denied
            return f"{shown} is denied by the rule {rule.text!r} of server.allowed_upstreams"
        builtin = self._builtin(address)
        if builtin is not None:
            denial, form, how = builtin
            return f"{_shown(str(address), form, how)} is {denial.what}, denied by the " \
                   f"built-in rule '!{denial.network}'"
        return None

    def check(self, url: str) -> str | None:
        """None when ``url`` may be used; else why not, naming the rule."""
        try:
            parsed = URL(url)
            host = (parsed.raw_host or "").lower()
            port = parsed.port
        except (ValueError, TypeError):
            return f"{url!r} is not a URL"
        address = host_address(host)
        name = (host.rstrip(".") or host) if address is None else None
        if self._own_refusal(name, address, port):
            return (f"{url!r}: host {host} port {port} is this orchd's own listening address "
                    "(built-in rule: an allow rule cannot lift it)")
        key = name if name is not None else host
        denied = self._deny_rule(key, address)
        if denied is not None:
            rule, shown = denied
            return f"{url!r}: host {shown} is denied by the rule {rule.text!r} " \
                   "of server.allowed_upstreams"
        builtin = self._builtin(address) if address is not None else None
        if builtin is not None:
            denial, form, how = builtin
            return (f"{url!r}: host {_shown(host, form, how)} is {denial.what}, denied by the "
                    f"built-in rule '!{denial.network}'; allow it explicitly in "
                    "server.allowed_upstreams if it is wanted")
        what = self._builtin_name(name) if name is not None else None
        if what is not None:
            return (f"{url!r}: host {host} is {what}, denied by the built-in rule '!{name}'; "
                    "allow it explicitly in server.allowed_upstreams if it is wanted")
        if self._has_allow and not any(not r.deny and r.matches(key, address)
                                       for r in self.rules):
            shown = host if address is None or str(address) == host else f"{host} ({address})"
            return f"{url!r}: host {shown} matches no rule of server.allowed_upstreams"
        return None


@functools.lru_cache(maxsize=8)
def policy_for(rules: tuple[str, ...] | None,
               own: tuple[tuple[str, int], ...] = ()) -> UpstreamPolicy:
    """The policy of a rule set and orchd's own listening (host, port) pairs, built once
    (the config's rules are an immutable tuple)."""
    return UpstreamPolicy(rules, own)
