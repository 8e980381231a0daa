"""``server.proxy_protocol`` with ``server.tls`` (orchd.proxy_accept), byte by byte: the
PROXY header is read in clear and exactly, so the TLS handshake that follows it in the same
segment is not lost; a header in pieces is waited for; a trusted peer that sends none is
closed after ``header_timeout``; an untrusted peer goes straight to TLS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.rawhttp import endpoint
from tests.support import async_wait_until, base_config, short_tmpdir
from tests.tls_support import CA, write_pair

PEER = "127.0.0.2"  # the trusted balancer
CLIENT_V4 = "203.0.113.7"


def v2_header(client: str, port: int = 4242) -> bytes:
    addresses = socket.inet_aton(client) + socket.inet_aton("127.0.0.1") + struct.pack(
        "!HH", port, 443)
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes((0x21, 0x11)) + struct.pack("!H", len(addresses))
            + addresses)


def tls_request(ctx: ssl.SSLContext, port: int, before: bytes, *, pieces: int = 1,
                source: str = PEER) -> dict[str, Any]:
    """Connect from ``source``, send ``before`` (in ``pieces``) with the TLS ClientHello
    right behind its last piece, in the same send, finish the handshake by hand (memory
    BIOs), send a request and answer the echo upstream's JSON."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as sock:
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        step = max(1, len(before) // pieces)
        chunks = [before[i:i + step] for i in range(0, len(before), step)] or [b""]
        for chunk in chunks[:-1]:
            sock.sendall(chunk)
            time.sleep(0.05)
        sock.sendall(chunks[-1] + hello)  # the header's end and the handshake together
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = outgoing.read()
                if pending:
                    sock.sendall(pending)
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                incoming.write(data)
        sock.sendall(outgoing.read())
        tls.write(b"GET /orchestrator/echo/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        sock.sendall(outgoing.read())
        answer = b""
        while b"\r\n\r\n" not in answer or not _complete(answer):
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                while chunk := tls.read(65536):
                    answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    headers: dict[str, Any] = json.loads(body)["headers"]
    return headers


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


@pytest.fixture
def gateway(orchd_factory, upstream_factory):
    async def make() -> tuple[Any, ssl.SSLContext]:
        up = await upstream_factory()
        work: Path = short_tmpdir()
        ca = CA()
        cert, key = write_pair(work / "tls", "site", ca.issue("localhost", "127.0.0.1"))
        gw = orchd_factory(base_config(endpoint("echo", up.url), server={
            "trusted_proxies": [f"{PEER}/32"], "proxy_protocol": True, "header_timeout": 1,
            "tls": {"certificates": [{"cert_file": str(cert), "key_file": str(key)}]}}),
            start=False)
        gw.start(wait=False)

        async def ready() -> bool:
            return "ready (pid" in gw.log()
        await async_wait_until(ready, 30, what="orchd to be ready")
        return gw, ca.client_context()
    return make


async def test_the_header_and_the_handshake_in_one_segment(gateway) -> None:
    gw, ctx = await gateway()
    headers = await asyncio.to_thread(tls_request, ctx, gw.port, v2_header(CLIENT_V4))
    assert headers["X-Forwarded-For"] == CLIENT_V4
    assert headers["X-Forwarded-Proto"] == "https"


async def test_a_version_1_header_in_pieces(gateway) -> None:
    gw, ctx = await gateway()
    line = f"PROXY TCP4 {CLIENT_V4} 127.0.0.1 4242 443\r\n".encode()
    headers = await asyncio.to_thread(tls_request, ctx, gw.port, line, pieces=4)
    assert headers["X-Forwarded-For"] == CLIENT_V4


async def test_a_trusted_peer_without_a_header_is_closed(gateway) -> None:
    gw, _ = await gateway()

    def silent() -> float:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10,
                                      source_address=(PEER, 0)) as sock:
            assert sock.recv(100) == b""  # closed by orchd, nothing said
        return time.monotonic() - started

    waited = await asyncio.to_thread(silent)
    assert 0.5 < waited < 8, waited
    assert "no PROXY header within header_timeout" in gw.log()


async def test_an_untrusted_peer_goes_straight_to_tls(gateway) -> None:
    gw, ctx = await gateway()
    headers = await asyncio.to_thread(tls_request, ctx, gw.port, b"", source="127.0.0.1")
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    # Its PROXY header is not read: it breaks its own handshake.
    with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
        await asyncio.to_thread(tls_request, ctx, gw.port, v2_header(CLIENT_V4),
                                source="127.0.0.1")
