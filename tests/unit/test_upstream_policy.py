"""server.allowed_upstreams as a pure policy: every form of a metadata address, orchd's own
listening addresses, and the connect-time check of the aiohttp clients' resolver."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchd.resolver import CheckedResolver
from orchd.upstream_policy import UpstreamPolicy, policy_for

# Every cloud metadata service orchd knows of, and the other spellings a connect would reach.
METADATA_URLS = [
    "http://169.254.169.254/latest/meta-data",  # AWS, GCP, Azure, Oracle, OpenStack, DO
    "http://169.254.170.2/v2/credentials",  # AWS ECS task credentials
    "http://[fd00:ec2::254]/latest/meta-data",  # AWS IMDS over IPv6 (Nitro)
    "http://[fd00:ec2::23]/",  # ... and the rest of AWS's instance-services range
    "http://100.100.100.200/latest/meta-data",  # Alibaba Cloud
    "http://1684301000/",  # ... as one decimal number
    "http://0x646464c8/",  # ... in hex
    "http://0144.0144.0144.0310/",  # ... in octal
    "http://[::ffff:100.100.100.200]/",  # ... IPv4-mapped
    "http://[::100.100.100.200]/",  # ... IPv4-compatible
    "http://[64:ff9b::100.100.100.200]/",  # ... NAT64
    "http://[2002:6464:64c8::1]/",  # ... 6to4
    "http://[64:ff9b::a9fe:a9fe]/",  # 169.254.169.254 through NAT64
    "http://[::a9fe:a9fe]/",  # ... IPv4-compatible
    "http://[2002:a9fe:a9fe:1::5]/",  # ... 6to4
    "http://[fd20:ce::254]/",  # GCP's metadata server over IPv6
    "http://192.0.0.192/latest/",  # Oracle Cloud (classic)
    "http://168.63.129.16/machine?comp=goalstate",  # Azure's WireServer
    "http://metadata.google.internal/computeMetadata/v1/",  # names of the same services
    "http://METADATA.google.internal./",
    "http://instance-data.ec2.internal/latest/",
    "http://metadata.tencentyun.com/",
]

STILL_ALLOWED = [
    "http://127.0.0.1:9000/", "http://[::1]:9000/", "http://localhost:9000/",
    "http://10.0.0.1/", "http://100.100.100.201/", "http://[fd00:ec3::254]/",
    "http://[64:ff9b::a00:1]/", "http://[2002:a00:1::]/", "http://8.8.8.8/",
    "http://api.example.com/", "http://metadata.example.com/",
]


@pytest.mark.parametrize("url", METADATA_URLS)
def test_every_metadata_address_is_refused_in_every_form(url: str) -> None:
    why = UpstreamPolicy(None).check(url)
    assert why is not None, url
    assert "built-in rule" in why


@pytest.mark.parametrize("url", STILL_ALLOWED)
def test_neighbours_of_the_denied_addresses_stay_allowed(url: str) -> None:
    assert UpstreamPolicy(None).check(url) is None


@pytest.mark.parametrize("ip", ["169.254.169.254", "fd00:ec2::254", "100.100.100.200",
                                "::ffff:100.100.100.200", "::100.100.100.200",
                                "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::", "fd20:ce::254",
                                "192.0.0.192", "fe80::a9fe:a9fe%eth0"])
def test_every_metadata_address_is_refused_at_connect(ip: str) -> None:
    why = UpstreamPolicy(None).check_address(ip)
    assert why is not None and "built-in rule" in why, ip


def test_the_refusal_names_the_form_and_the_rule() -> None:
    why = UpstreamPolicy(None).check("http://[64:ff9b::a9fe:a9fe]/")
    assert why is not None
    assert "NAT64" in why and "169.254.169.254" in why and "'!169.254.0.0/16'" in why
    why = UpstreamPolicy(None).check("http://[fd00:ec2::254]/")
    assert why is not None and "'!fd00:ec2::/32'" in why and "AWS" in why
    why = UpstreamPolicy(None).check("http://100.100.100.200/")
    assert why is not None and "'!100.100.100.200/32'" in why and "Alibaba" in why


def test_an_allow_rule_inside_a_builtin_range_lifts_it_in_every_form() -> None:
    # (The allow list itself matches the address as written: hence the NAT64 and 6to4 rules.)
    policy = UpstreamPolicy(["169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200",
                             "64:ff9b::/96", "2002::/16"])
    for url in ("http://169.254.169.254/", "http://[64:ff9b::a9fe:a9fe]/",
                "http://[2002:a9fe:a9fe::]/", "http://[fd00:ec2::254]/",
                "http://[::ffff:100.100.100.200]/"):
        assert policy.check(url) is None, url
    assert policy.check("http://[fd00:ec2::253]/") is not None
    assert policy.check_address("fd00:ec2::254") is None
    assert policy.check_address("169.254.1.1") is not None
    # A name of a metadata service is lifted by a rule that names it, not by a pattern.
    assert UpstreamPolicy(["metadata.google.internal"]).check(
        "http://metadata.google.internal/") is None
    assert UpstreamPolicy(["*.internal"]).check("http://metadata.google.internal/") is not None


def test_a_deny_rule_matches_every_form_of_an_address() -> None:
    policy = UpstreamPolicy(["!10.0.0.0/8"])
    for url in ("http://10.1.2.3/", "http://[::ffff:10.1.2.3]/", "http://[64:ff9b::a01:203]/",
                "http://[2002:a01:203::]/", "http://167838211/"):
        why = policy.check(url)
        assert why is not None and "'!10.0.0.0/8'" in why, url


_V4 = st.integers(min_value=0, max_value=2**32 - 1).map(ipaddress.IPv4Address)
_METADATA_V4 = st.sampled_from([ipaddress.IPv4Network(n) for n in (
    "169.254.0.0/16", "100.100.100.200/32", "192.0.0.192/32", "168.63.129.16/32")]).flatmap(
    lambda net: st.integers(0, net.num_addresses - 1).map(lambda i: net[i]))


def _v6_forms(v4: ipaddress.IPv4Address, low: int) -> list[str]:
    n = int(v4)
    return [f"::ffff:{v4}", f"::{v4}", str(ipaddress.IPv6Address((0x64ff9b << 96) | n)),
            str(ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | (low & (2**80 - 1))))]


@given(_METADATA_V4, st.integers(min_value=0, max_value=2**80 - 1))
def test_any_form_of_a_metadata_address_is_refused(v4: ipaddress.IPv4Address, low: int) -> None:
    policy = UpstreamPolicy(None)
    n = int(v4)
    for host in (str(v4), str(n), hex(n)):
        assert policy.check(f"http://{host}/") is not None, host
    for ip in _v6_forms(v4, low):
        assert policy.check(f"http://[{ip}]/") is not None, ip
        assert policy.check_address(ip) is not None, ip


@given(_V4, st.integers(min_value=0, max_value=2**80 - 1))
def test_the_forms_of_an_ordinary_address_are_allowed(v4: ipaddress.IPv4Address,
                                                      low: int) -> None:
    denied = [ipaddress.ip_network(n) for n in ("169.254.0.0/16", "100.100.100.200/32",
                                                "192.0.0.192/32", "168.63.129.16/32")]
    if any(v4 in net for net in denied):
        return
    policy = UpstreamPolicy(None)
    for ip in _v6_forms(v4, low)[2:]:  # NAT64, 6to4: routed, never loopback on this host
        assert policy.check_address(ip) is None, ip


# -- orchd's own listening addresses

OWN = (("127.0.0.1", 8000),)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/", "http://localhost:8000/api", "http://LOCALHOST.:8000/",
    "http://app.localhost:8000/", "http://[::1]:8000/", "http://127.0.0.2:8000/",
    "http://0.0.0.0:8000/", "http://[::]:8000/", "http://[::ffff:127.0.0.1]:8000/",
    "http://2130706433:8000/", "http://0x7f000001:8000/", "https://127.0.0.1:8000/",
])
def test_orchds_own_listening_address_is_refused(url: str) -> None:
    why = UpstreamPolicy(None, own=OWN).check(url)
    assert why is not None, url
    assert "port 8000 is this orchd's own listening address (built-in rule" in why


@pytest.mark.parametrize("url", ["http://127.0.0.1:8001/", "http://10.0.0.1:8000/",
                                 "http://api.example.com:8000/", "http://localhost/"])
def test_other_ports_and_hosts_stay_allowed(url: str) -> None:
    assert UpstreamPolicy(None, own=OWN).check(url) is None


def test_the_default_port_of_the_scheme_counts() -> None:
    assert UpstreamPolicy(None, own=(("127.0.0.1", 80),)).check("http://localhost/") is not None
    assert UpstreamPolicy(None, own=(("::1", 443),)).check("https://[::1]/") is not None
    assert UpstreamPolicy(None, own=(("::1", 443),)).check("http://[::1]/") is None


def test_an_allow_rule_cannot_lift_the_own_address() -> None:
    policy = UpstreamPolicy(["127.0.0.0/8", "localhost"], own=OWN)
    why = policy.check("http://127.0.0.1:8000/")
    assert why is not None and "cannot lift" in why
    assert policy.check("http://localhost:8000/") is not None
    assert policy.check("http://127.0.0.1:8001/") is None
    assert policy.check_address("127.0.0.1", 8000) is not None


def test_a_specific_listen_address_is_refused_on_its_port() -> None:
    policy = UpstreamPolicy(None, own=(("10.1.2.3", 8443), ("127.0.0.1", 8080)))
    assert policy.check("https://10.1.2.3:8443/") is not None
    assert policy.check("https://[::ffff:10.1.2.3]:8443/") is not None
    assert policy.check("http://127.0.0.1:8443/") is not None  # loopback: always refused
    assert policy.check("http://10.1.2.4:8443/") is None
    assert policy.check("http://10.1.2.3:8080/") is None  # another host of the machine
    assert policy.check_address("10.1.2.3", 8443) is not None
    assert policy.check_address("10.1.2.3", 9) is None


def test_a_wildcard_listener_refuses_the_machines_own_names_and_addresses() -> None:
    policy = UpstreamPolicy(None, own=(("0.0.0.0", 8000),))
    host = socket.gethostname()
    assert policy.check(f"http://{host}:8000/") is not None
    assert policy.check(f"http://{host}:8001/") is None
    assert policy.check("http://0.0.0.0:8000/") is not None
    assert policy.check_address("::", 8000) is not None
    for ip in _local_addresses():
        assert policy.check_address(ip, 8000) is not None, ip
        assert policy.check(f"http://[{ip}]:8000/" if ":" in ip else f"http://{ip}:8000/"), ip
    assert policy.check_address("198.51.100.7", 8000) is None  # TEST-NET-2: not here
    assert UpstreamPolicy(None, own=(("::", 8000),)).check("http://127.0.0.1:8000/") is not None


def _local_addresses() -> list[str]:
    """This machine's addresses, as the kernel routes them (independent of the policy)."""
    out = []
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))  # UDP: picks the source address, sends nothing
                out.append(s.getsockname()[0])
        except OSError:
            continue
    return out


def test_check_address_keeps_its_one_argument_form() -> None:
    policy = UpstreamPolicy(None, own=OWN)
    assert policy.check_address("127.0.0.1") is None
    assert policy.check_address("127.0.0.1", 8000) is not None
    assert policy.check_address("127.0.0.1", 8001) is None


def test_policy_for_caches_per_rules_and_own_addresses() -> None:
    assert policy_for(("10.0.0.0/8",)) is policy_for(("10.0.0.0/8",))
    own = policy_for(None, OWN)
    assert own is policy_for(None, OWN) and own is not policy_for(None)
    assert own.check("http://127.0.0.1:8000/") is not None
    assert policy_for(None).check("http://127.0.0.1:8000/") is None


async def test_the_resolver_checks_the_port_it_connects_to() -> None:
    policy = UpstreamPolicy(None, own=OWN)
    resolver = CheckedResolver(policy.check_address)
    try:
        with pytest.raises(OSError, match="own listening address"):
            await resolver.resolve("localhost", 8000, socket.AF_UNSPEC)
        assert await resolver.resolve("localhost", 8001, socket.AF_UNSPEC)
    finally:
        await resolver.close()
