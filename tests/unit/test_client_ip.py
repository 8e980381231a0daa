"""Client identity (orchd/client_ip.py): the X-Forwarded-For rule and ip_allow/ip_deny."""

from __future__ import annotations

import pytest

from orchd.client_ip import (
    AddressRule,
    address_in,
    client_from_forwarded,
    forwarded_for,
    network_problem,
    parse_networks,
)

TRUSTED = parse_networks(["10.0.0.0/8", "127.0.0.1", "fd00::/8"])


@pytest.mark.parametrize(("header", "client"), [
    (None, "10.0.0.5"),  # no header: the trusted peer itself
    ("", "10.0.0.5"),
    ("203.0.113.9", "203.0.113.9"),
    ("1.1.1.1, 203.0.113.9", "203.0.113.9"),  # the rightmost untrusted, not the leftmost
    ("1.1.1.1, 203.0.113.9, 10.1.2.3", "203.0.113.9"),  # trusted hops skipped
    ("1.1.1.1,203.0.113.9 , 10.1.2.3,127.0.0.1", "203.0.113.9"),
    ("10.9.9.9, 10.1.2.3", "10.9.9.9"),  # all trusted: the leftmost
    ("2001:db8::7, fd00::1", "2001:db8::7"),
    ("::ffff:203.0.113.9", "203.0.113.9"),  # IPv4-mapped
    ("1.1.1.1, junk, 10.1.2.3", "junk"),  # not an address: taken, and matches no range
    ("1.1.1.1, , 10.1.2.3", "1.1.1.1"),
])
def test_the_client_is_the_rightmost_untrusted_address(header: str | None, client: str) -> None:
    assert client_from_forwarded(header, "10.0.0.5", TRUSTED) == client


def test_forwarded_for_joins_every_field_line() -> None:
    pairs = [("X-Forwarded-For", "1.1.1.1"), ("Host", "a"), ("x-forwarded-for", "2.2.2.2")]
    assert forwarded_for(pairs) == "1.1.1.1, 2.2.2.2"
    assert forwarded_for([("Host", "a")]) == ""


def test_address_in() -> None:
    assert address_in("127.0.0.1", TRUSTED)
    assert address_in("::ffff:10.3.4.5", TRUSTED)
    assert not address_in("127.0.0.2", TRUSTED)
    assert not address_in("", TRUSTED)
    assert not address_in("not an address", TRUSTED)
    assert not address_in("127.0.0.1", ())


def test_network_problem() -> None:
    assert network_problem("10.0.0.0/8") is None
    assert network_problem("::1") is None
    assert "host bits set" in (network_problem("10.0.0.1/8") or "")
    assert network_problem("10.0.0.0/33") is not None
    assert network_problem("localhost") is not None


def test_deny_is_checked_first_and_an_empty_allow_lets_everyone_in() -> None:
    rule = AddressRule(allow=parse_networks(["127.0.0.0/8"]),
                       deny=parse_networks(["127.0.0.3"]))
    assert rule.refusal("127.0.0.2") is None
    assert "ip_deny" in (rule.refusal("127.0.0.3") or "")
    assert "ip_allow" in (rule.refusal("192.0.2.1") or "")
    assert "ip_allow" in (rule.refusal("junk") or "")
    deny_only = AddressRule(deny=parse_networks(["192.0.2.0/24"]))
    assert deny_only.refusal("198.51.100.1") is None
    assert deny_only.refusal("junk") is None
    assert deny_only.refusal("192.0.2.200") is not None


def test_a_bad_range_names_its_key_and_line() -> None:
    from orchd.errors import ConfigError
    from orchd.loader import parse_config

    text = ("server:\n  trusted_proxies: [10.0.0.0/8, 10.0.0.1/8]\n"
            "endpoints:\n  - name: a\n    url: http://127.0.0.1:9\n    ip_deny: [nope]\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "orchestrator.yaml")
    found = {(e.path, e.line) for e in caught.value.errors}
    assert found == {("server.trusted_proxies[1]", 2), ("endpoints[0].ip_deny[0]", 6)}
    assert all("is not a CIDR range" in e.message for e in caught.value.errors)
    config = parse_config("server:\n  trusted_proxies: [127.0.0.1]\n  proxy_protocol: true\n"
                          "endpoints:\n  - {name: a, url: 'http://127.0.0.1:9', "
                          "ip_allow: ['::1/128']}\n")
    assert config.server.proxy_protocol and address_in("127.0.0.1", config.server.trusted_proxies)
    rule = config.endpoints[0].addresses
    assert rule is not None and rule.refusal("::1") is None
