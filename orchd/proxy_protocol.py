"""The PROXY protocol header (HAProxy's, versions 1 and 2), read at a connection's start.

A load balancer that passes TCP connections on (HAProxy ``send-proxy``/``send-proxy-v2``,
AWS NLB, many others) opens each one with a header naming the client it came from. orchd
believes it only from a peer in ``server.trusted_proxies`` with ``server.proxy_protocol``
on (``orchd.front`` decides; design section 11); this module only reads the bytes.

``parse`` is strict and bounded: a version 1 line is at most ``V1_MAX`` bytes, a version 2
header at most ``V2_MAX``; anything else is a ``ProxyHeaderError``. It reads the buffer in
place and copies nothing but the address it answers. ``sniff`` tells whether a connection's
first bytes are a PROXY header at all (an untrusted peer's is refused).

What it does not do: decide whom to trust, or read version 2's TLVs (they are skipped).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Final

__all__ = ("IS_PROXY", "NOT_PROXY", "UNDECIDED", "V1_MAX", "V2_MAX", "V2_SIGNATURE",
           "ProxyHeader", "ProxyHeaderError", "parse", "sniff")

V1_MAX: Final = 107  # the longest v1 line, CRLF included (the specification's bound)
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX: Final = 16 + 1024  # fixed part and addresses with TLVs: more is refused
_V1_PREFIX: Final = b"PROXY "

# ``sniff``'s answers.
UNDECIDED: Final = -1  # too few bytes yet to tell
NOT_PROXY: Final = 0
IS_PROXY: Final = 1

# Version 2: the command (low half of byte 12) and the address family and transport (13).
_LOCAL: Final = 0x0
_PROXY: Final = 0x1
_UNSPEC: Final = 0x00
_TCP4: Final = 0x11
_TCP6: Final = 0x21
_UNIX_STREAM: Final = 0x31


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY header (the connection is closed)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A header read: ``length`` bytes of the buffer are the header, and ``source`` is the
    client's address (None for LOCAL and UNKNOWN: the connection is the proxy's own, and
    the socket's peer stands)."""

    length: int
    source: str | None = None
    source_port: int = 0


def sniff(data: bytes | bytearray) -> int:
    """``IS_PROXY`` if ``data`` begins with a PROXY header's signature (either version),
    ``NOT_PROXY`` if it cannot, ``UNDECIDED`` while too few bytes have arrived to tell."""
    for signature in (_V1_PREFIX, V2_SIGNATURE):
        n = min(len(data), len(signature))
        if data[:n] == signature[:n]:
            return IS_PROXY if n == len(signature) else UNDECIDED
    return NOT_PROXY


def parse(data: bytes | bytearray) -> ProxyHeader | None:
    """The PROXY header at the start of ``data``; None if more bytes are needed. Raises
    ``ProxyHeaderError`` when ``data`` does not start with one, or with a malformed or
    oversized one."""
    kind = sniff(data)
    if kind == UNDECIDED:
        return None
    if kind == NOT_PROXY:
        raise ProxyHeaderError("the connection does not start with a PROXY protocol header")
    if data[0] == 0x50:  # "P"
        return _parse_v1(data)
    return _parse_v2(data)


def _parse_v1(data: bytes | bytearray) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"the PROXY v1 line is longer than {V1_MAX} bytes")
        if b"\n" in data:
            raise ProxyHeaderError("the PROXY v1 line does not end with CRLF")
        return None
    line = bytes(data[:end])
    parts = line.split(b" ")
    if len(parts) < 2:
        raise ProxyHeaderError("the PROXY v1 line names no protocol")
    family = parts[1]
    if family == b"UNKNOWN":
        return ProxyHeader(end + 2)  # whatever follows UNKNOWN is ignored
    if len(parts) != 6 or family not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("the PROXY v1 line is not 'PROXY TCP4|TCP6 src dst sport dport'"
                               " or 'PROXY UNKNOWN'")
    version = 4 if family == b"TCP4" else 6
    source = _v1_address(parts[2], version)
    _v1_address(parts[3], version)
    port = _v1_port(parts[4])
    _v1_port(parts[5])
    return ProxyHeader(end + 2, source, port)


def _v1_address(raw: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"{raw[:50]!r} is not an IPv{version} address") from None
    if address.version != version:
        raise ProxyHeaderError(f"{raw[:50]!r} is not an IPv{version} address")
    return str(address)


def _v1_port(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 5 or (len(raw) > 1 and raw[0] == 0x30):
        raise ProxyHeaderError(f"{raw[:10]!r} is not a port number")
    port = int(raw)
    if port > 65535:
        raise ProxyHeaderError(f"{raw[:10]!r} is not a port number")
    return port


def _parse_v2(data: bytes | bytearray) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"PROXY protocol version {version} is not 2")
    if command not in (_LOCAL, _PROXY):
        raise ProxyHeaderError(f"unknown PROXY v2 command {command}")
    family = data[13]
    length = 16 + ((data[14] << 8) | data[15])
    if length > V2_MAX:
        raise ProxyHeaderError(f"the PROXY v2 header is {length} bytes; at most {V2_MAX} "
                               "are read")
    if len(data) < length:
        return None
    if command == _LOCAL:
        return ProxyHeader(length)  # the proxy's own connection (a health check)
    if family == _TCP4:
        if length < 16 + 12:
            raise ProxyHeaderError("the PROXY v2 TCP4 addresses are truncated")
        source = socket.inet_ntop(socket.AF_INET, bytes(data[16:20]))
        return ProxyHeader(length, source, (data[24] << 8) | data[25])
    if family == _TCP6:
        if length < 16 + 36:
            raise ProxyHeaderError("the PROXY v2 TCP6 addresses are truncated")
        source = str(ipaddress.IPv6Address(bytes(data[16:32])))
        return ProxyHeader(length, source, (data[48] << 8) | data[49])
    if family in (_UNSPEC, _UNIX_STREAM):
        return ProxyHeader(length)  # no IP address to take: the socket's peer stands
    raise ProxyHeaderError(f"PROXY v2 address family and transport 0x{family:02x} is not "
                           "TCP over IPv4 or IPv6")
