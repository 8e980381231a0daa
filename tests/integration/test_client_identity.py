"""Client identity on a real orchd (design section 11): PROXY headers, X-Forwarded-*,
ip_allow/ip_deny, and admin trust by the socket's peer.

Clients bind to other loopback addresses (127.0.0.2, 127.0.0.3) so that orchd sees
different peers; the readiness probe of the harness comes from 127.0.0.1, which no test
trusts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import struct
from typing import Any

from tests.integration.rawhttp import RawAnswer, endpoint, read_answer
from tests.support import Orchd, async_wait_until, base_config

PROXY_PEER = "127.0.0.2"  # the trusted proxy
OTHER_PEER = "127.0.0.3"  # anyone else
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(source: str, port: int) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 40000 {port}\r\n".encode()


def proxy_v2_tcp6(source: str, port: int) -> bytes:
    addresses = (socket.inet_pton(socket.AF_INET6, source)
                 + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("!HH", 40000, port))
    return V2_SIGNATURE + b"\x21\x21" + struct.pack("!H", len(addresses)) + addresses


def get(path: str, *headers: str) -> bytes:
    lines = "".join(f"{h}\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nHost: gw.internal\r\n{lines}\r\n".encode()


async def talk(port: int, source: str, *messages: bytes) -> list[RawAnswer]:
    """Open a connection from ``source``, send each message and read its answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    answers = []
    try:
        for data in messages:
            writer.write(data)
            await writer.drain()
            answers.append(await read_answer(reader))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return answers


def sent_headers(answer: RawAnswer) -> dict[str, str]:
    """What the echo upstream received."""
    assert answer.status == 200, (answer.head, answer.body)
    headers: dict[str, str] = json.loads(answer.body)["headers"]
    return headers


async def access_line(gw: Orchd, path: str) -> str:
    """The access log line of ``path`` (polled: the log is written after the answer)."""
    found: list[str] = []

    async def seen() -> bool:
        found[:] = [line for line in gw.log().splitlines() if f'"GET {path}"' in line]
        return bool(found)

    await async_wait_until(seen, 10, what=f"the access line of {path}")
    return found[-1]


def _server(**settings: Any) -> dict[str, Any]:
    return {"server": {"trusted_proxies": [f"{PROXY_PEER}/32"], **settings}}


# -- PROXY protocol

async def test_a_trusted_proxys_header_names_the_client_on_both_listeners(
        orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(base_config(endpoint("echo", up.url), **_server(proxy_protocol=True)))
    [answer] = await talk(gw.port, PROXY_PEER,
                          proxy_v1("203.0.113.7", gw.port) + get("/orchestrator/echo/v1"))
    assert sent_headers(answer)["X-Forwarded-For"] == "203.0.113.7"
    assert "203.0.113.7 " in await access_line(gw, "/orchestrator/echo/v1")
    # Version 2 with an IPv6 client; the connection moves to aiohttp at /health, and its
    # requests keep the client the header named.
    health, proxied = await talk(gw.port, PROXY_PEER,
                                 proxy_v2_tcp6("2001:db8::7", gw.port) + get("/health"),
                                 get("/orchestrator/echo/v2"))
    assert health.status == 200
    assert sent_headers(proxied)["X-Forwarded-For"] == "2001:db8::7"
    assert "2001:db8::7 " in await access_line(gw, "/health")
    assert "2001:db8::7 " in await access_line(gw, "/orchestrator/echo/v2")


async def test_an_untrusted_peers_proxy_header_is_refused_and_a_trusted_peer_needs_one(
        orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(base_config(endpoint("echo", up.url), **_server(proxy_protocol=True)))
    for header in (proxy_v1("203.0.113.7", gw.port), proxy_v2_tcp6("2001:db8::7", gw.port)):
        [refused] = await talk(gw.port, OTHER_PEER, header + get("/orchestrator/echo/x"))
        assert refused.status == 400, refused.head
        assert b"PROXY" in refused.body
    # The trusted proxy without the header: closed, nothing answered.
    [closed] = await talk(gw.port, PROXY_PEER, get("/orchestrator/echo/x"))
    assert closed.status is None and closed.head == b""
    assert len(up.requests) == 0


async def test_admin_calls_through_a_trusted_proxy_are_judged_by_the_socket_peer(
        orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(base_config(endpoint("echo", up.url), **_server(proxy_protocol=True)))
    post = b"POST /health/check/nope HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
    # The header names a remote client, but the socket's peer is loopback: admitted (404,
    # no such endpoint), not refused as a remote admin call (403).
    [answer] = await talk(gw.port, PROXY_PEER, proxy_v1("203.0.113.7", gw.port) + post)
    assert answer.status == 404, answer.body
    forwarded = post.replace(b"Content-Length", b"X-Forwarded-For: 203.0.113.8\r\n"
                             b"Content-Length")
    [answer] = await talk(gw.port, PROXY_PEER, proxy_v1("127.0.0.9", gw.port) + forwarded)
    assert answer.status == 404, answer.body


# -- X-Forwarded-*

async def test_forwarded_headers_are_kept_from_a_trusted_peer_and_replaced_otherwise(
        orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(base_config(endpoint("echo", up.url), **_server()))
    sent = ("X-Forwarded-For: 198.51.100.1, 203.0.113.9", "X-Forwarded-Proto: https",
            "X-Forwarded-Host: public.example")
    [trusted] = await talk(gw.port, PROXY_PEER, get("/orchestrator/echo/t", *sent))
    got = sent_headers(trusted)
    assert got["X-Forwarded-For"] == f"198.51.100.1, 203.0.113.9, {PROXY_PEER}"
    assert got["X-Forwarded-Proto"] == "https"
    assert got["X-Forwarded-Host"] == "public.example"
    assert "203.0.113.9 " in await access_line(gw, "/orchestrator/echo/t")
    [other] = await talk(gw.port, OTHER_PEER, get("/orchestrator/echo/u", *sent))
    got = sent_headers(other)
    assert got["X-Forwarded-For"] == f"198.51.100.1, 203.0.113.9, {OTHER_PEER}"
    assert got["X-Forwarded-Proto"] == "http"
    assert got["X-Forwarded-Host"] == "gw.internal"
    line = await access_line(gw, "/orchestrator/echo/u")
    assert f"{OTHER_PEER} " in line and "203.0.113.9 " not in line
    # On aiohttp's side of a connection too (after /health).
    _health, later = await talk(gw.port, PROXY_PEER, get("/health", *sent),
                                get("/orchestrator/echo/w", *sent))
    assert sent_headers(later)["X-Forwarded-Proto"] == "https"
    assert "203.0.113.9 " in await access_line(gw, "/orchestrator/echo/w")


# -- ip_allow / ip_deny, and the rate limit key

async def test_ip_allow_and_ip_deny_by_client_address(orchd_factory, upstream_factory):
    up = await upstream_factory()
    guarded = endpoint("guarded", up.url, ip_allow=[f"{PROXY_PEER}/32", "203.0.113.0/24"],
                       ip_deny=["203.0.113.66/32"])
    gw = orchd_factory(base_config(endpoint("echo", up.url), guarded, **_server()))
    path = "/orchestrator/guarded/x"
    [other] = await talk(gw.port, OTHER_PEER, get(path))
    assert other.status == 403 and b"ip_allow" in other.body
    assert json.loads(other.body)["reason"] == "ip_denied"
    statuses = []
    for xff in (None, "203.0.113.5", "203.0.113.66", "198.51.100.1", "203.0.113.66, 10.0.0.1"):
        [answer] = await talk(gw.port, PROXY_PEER,
                              get(path, *([f"X-Forwarded-For: {xff}"] if xff else [])))
        statuses.append(answer.status)
    assert statuses == [200, 200, 403, 403, 403]
    # Through aiohttp's side of a connection as well.
    _health, denied = await talk(gw.port, OTHER_PEER, get("/health"), get(path))
    assert denied.status == 403
    [fine] = await talk(gw.port, OTHER_PEER, get("/orchestrator/echo/x"))
    assert fine.status == 200


async def test_ip_deny_is_hot_reloaded(orchd_factory, upstream_factory):
    up = await upstream_factory()
    config = base_config(endpoint("echo", up.url))
    gw = orchd_factory(config)
    [before] = await talk(gw.port, OTHER_PEER, get("/orchestrator/echo/x"))
    assert before.status == 200
    config["endpoints"][0]["ip_deny"] = [f"{OTHER_PEER}/32"]
    gw.write_config(config)
    gw.signal(signal.SIGHUP)

    async def refused() -> bool:
        [answer] = await talk(gw.port, OTHER_PEER, get("/orchestrator/echo/x"))
        return answer.status == 403

    await async_wait_until(refused, 10, what="ip_deny to apply after SIGHUP")
    [other] = await talk(gw.port, PROXY_PEER, get("/orchestrator/echo/x"))
    assert other.status == 200


async def test_rate_limits_by_client_ip_count_the_forwarded_client(orchd_factory,
                                                                   upstream_factory):
    up = await upstream_factory()
    limited = endpoint("limited", up.url, rate_limit={"rate": 1, "per": 60, "key": "client_ip"})
    gw = orchd_factory(base_config(limited, **_server()))
    path = "/orchestrator/limited/x"
    statuses = []
    for client in ("203.0.113.1", "203.0.113.2", "203.0.113.1"):
        [answer] = await talk(gw.port, PROXY_PEER, get(path, f"X-Forwarded-For: {client}"))
        statuses.append(answer.status)
    assert statuses == [200, 200, 429]
