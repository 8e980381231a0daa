"""The PROXY protocol header reader (orchd/proxy_protocol.py): versions 1 and 2, strictly."""

from __future__ import annotations

import socket
import struct

import pytest

from orchd.proxy_protocol import (
    IS_PROXY,
    NOT_PROXY,
    UNDECIDED,
    V1_MAX,
    V2_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    parse,
    sniff,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def v2(command: int, family: int, addresses: bytes, tlvs: bytes = b"") -> bytes:
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def tcp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
            + struct.pack("!HH", sport, dport))


def tcp6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!HH", sport, dport))


# -- version 1

def test_v1_tcp4_names_the_source_and_its_length() -> None:
    line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n"
    assert parse(line + REQUEST) == ProxyHeader(len(line), "192.0.2.7", 56324)


def test_v1_tcp6() -> None:
    line = b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n"
    assert parse(line) == ProxyHeader(len(line), "2001:db8::7", 1)


def test_v1_unknown_keeps_the_socket_peer() -> None:
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyHeader(15)
    line = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
    assert parse(line) == ProxyHeader(len(line))


def test_v1_truncated_waits_for_more() -> None:
    line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n"
    for end in range(len(line)):
        assert parse(line[:end]) is None, line[:end]


def test_v1_the_longest_line_is_read_and_a_longer_one_refused() -> None:
    longest = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
               b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
    assert len(longest) <= V1_MAX
    assert parse(longest) is not None
    with pytest.raises(ProxyHeaderError, match="longer than"):
        parse(b"PROXY UNKNOWN " + b"x" * V1_MAX)
    with pytest.raises(ProxyHeaderError, match="longer than"):
        parse(b"PROXY UNKNOWN " + b"x" * (V1_MAX - 14) + b"\r\n")


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",  # a field missing
    b"PROXY TCP4 192.0.2.7  198.51.100.1 56324 443\r\n",  # two spaces
    b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",  # IPv6 under TCP4
    b"PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n",  # IPv4 under TCP6
    b"PROXY TCP4 192.0.2.256 198.51.100.1 1 2\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 2\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 080 2\r\n",  # a leading zero
    b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 2\r\n",
    b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
    b"PROXY\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n",  # a bare LF
])
def test_v1_malformed_is_refused(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(line)


# -- version 2

def test_v2_tcp4_skips_its_tlvs() -> None:
    header = v2(1, 0x11, tcp4("203.0.113.9", "10.0.0.1", 40000, 80), tlvs=b"\x04\x00\x00")
    assert parse(header + REQUEST) == ProxyHeader(len(header), "203.0.113.9", 40000)


def test_v2_tcp6() -> None:
    header = v2(1, 0x21, tcp6("2001:db8::9", "2001:db8::1", 443, 8000))
    assert parse(header) == ProxyHeader(len(header), "2001:db8::9", 443)


def test_v2_local_and_unspec_keep_the_socket_peer() -> None:
    local = v2(0, 0x11, tcp4("203.0.113.9", "10.0.0.1", 1, 2))  # LOCAL: addresses ignored
    assert parse(local) == ProxyHeader(len(local))
    assert parse(v2(0, 0x00, b"")) == ProxyHeader(16)
    unspec = v2(1, 0x00, b"")
    assert parse(unspec) == ProxyHeader(16)


def test_v2_truncated_waits_for_more() -> None:
    header = v2(1, 0x21, tcp6("2001:db8::9", "2001:db8::1", 443, 8000))
    for end in range(len(header)):
        assert parse(header[:end]) is None, end


def test_v2_oversized_is_refused_before_it_arrives() -> None:
    header = v2(1, 0x11, tcp4("203.0.113.9", "10.0.0.1", 1, 2), tlvs=b"\x00" * V2_MAX)
    with pytest.raises(ProxyHeaderError, match="at most"):
        parse(header[:16])


@pytest.mark.parametrize("header", [
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,  # version 1 in the binary form
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12,  # command 2
    V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,  # TCP4 addresses cut short
    V2_SIGNATURE + b"\x21\x21\x00\x0c" + b"\x00" * 12,  # TCP6 addresses cut short
    V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x00" * 12,  # UDP
    V2_SIGNATURE + b"\x21\x55\x00\x00",  # no such family
])
def test_v2_malformed_is_refused(header: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(header)


# -- neither

@pytest.mark.parametrize("data", [REQUEST, b"PROXZ TCP4", b"\r\n\r\n\x00\r\nQUIX\n" + b"\x00" * 4])
def test_a_wrong_signature_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError, match="does not start"):
        parse(data)


def test_sniff() -> None:
    assert sniff(b"") == UNDECIDED
    assert sniff(b"PRO") == UNDECIDED
    assert sniff(b"PROXY ") == IS_PROXY
    assert sniff(b"\r\n") == UNDECIDED  # a stray line end, or the start of v2
    assert sniff(V2_SIGNATURE) == IS_PROXY
    assert sniff(b"\r\nGET / HTTP/1.1\r\n") == NOT_PROXY
    assert sniff(REQUEST) == NOT_PROXY
    assert sniff(b"POST /") == NOT_PROXY


def test_parse_reads_a_bytearray_in_place() -> None:
    buf = bytearray(v2(1, 0x11, tcp4("203.0.113.9", "10.0.0.1", 1, 2)) + REQUEST)
    header = parse(buf)
    assert header is not None
    del buf[:header.length]
    assert bytes(buf) == REQUEST
