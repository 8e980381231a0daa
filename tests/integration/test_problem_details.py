"""Problem documents: gateway errors name the endpoint and the request, never the upstream
behind it, and every problem answer carries the same fields, whoever sends it.

A 502/503/504 from the proxy says which endpoint failed and how (its ``reason`` field), and
gives the request id; the upstream's address and the failure's own words are in orchd's log
only, on one line with that request id.

The admin API, the proxy and both listeners' refusals answer with ``type``, ``title``,
``status``, ``detail``, ``timestamp`` and ``timestamp_iso`` (``orchd.problems``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.integration.rawhttp import connect, exchange, wait_closed_by_peer
from tests.support import async_wait_until, base_config, free_port

PROBLEM = "application/problem+json"


def _endpoint(name: str, url: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "retries": 0, **kw}


async def _garbage_server() -> tuple[asyncio.Server, str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"SSH-2.0-OpenSSH_9.6 secret-banner\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _slow_app() -> web.Application:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="no websocket here")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/plain", plain)
    return app


async def test_gateway_errors_name_the_endpoint_not_the_upstream(orchd_factory,
                                                                 upstream_factory, http):
    up = await upstream_factory(_slow_app())
    garbage, garbage_url = await _garbage_server()
    dead = f"http://127.0.0.1:{free_port()}"
    daemon = orchd_factory(base_config(
        _endpoint("refused", dead, circuit_breaker={"failure_threshold": 1000}),
        _endpoint("opened", dead, circuit_breaker={"failure_threshold": 1,
                                                   "reset_timeout": 60}),
        _endpoint("slow", up.url, timeout=1),
        _endpoint("broke", garbage_url),
        _endpoint("plain", up.url),
    ))
    gw = f"{daemon.url}/orchestrator"
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    cases = [  # (path, headers, status, reason)
        ("refused/x", {}, 502, "upstream_refused"),
        ("opened/x", {}, 502, "upstream_refused"),  # this failure opens its breaker
        ("opened/x", {}, 503, "circuit_breaker_open"),
        ("slow/slow", {}, 504, "upstream_timeout"),
        ("broke/x", {}, 502, "upstream_broke"),
        ("refused/ws", upgrade, 502, "upstream_refused"),
        ("plain/plain", upgrade, 502, "websocket_refused"),
    ]
    try:
        seen: list[tuple[str, str]] = []
        for i, (path, headers, status, reason) in enumerate(cases):
            rid = f"case-{i}-{path.replace('/', '-')}"
            async with http.get(f"{gw}/{path}", headers={**headers, "X-Request-ID": rid}) as r:
                text = await r.text()
                assert r.status == status, (path, text)
                assert r.headers["Content-Type"].startswith(PROBLEM)
                assert r.headers["X-Request-ID"] == rid
            doc = json.loads(text)
            assert doc["reason"] == reason, (path, doc)
            endpoint = path.split("/", 1)[0]
            assert f"endpoint '{endpoint}'" in doc["detail"], doc
            assert rid in doc["detail"], doc
            for secret in ("127.0.0.1", "http://", "SSH", "Connect call failed", "HTTP 200",
                           str(up.port), dead.rsplit(":", 1)[1]):
                assert secret not in text, (path, secret, text)
            seen.append((rid, endpoint))
    finally:
        garbage.close()

    # The detail is in the log: one warning line with the request id, endpoint and target.
    def logged(rid: str, endpoint: str) -> list[str]:
        return [line for line in daemon.log().splitlines()
                if "WARNING" in line and rid in line and endpoint in line]

    async def all_logged() -> bool:
        return all(logged(rid, ep) for rid, ep in seen if not rid.startswith("case-2-"))

    await async_wait_until(all_logged, 10, what="a warning line for every failure")
    assert any(dead in line for line in logged("case-0-refused-x", "refused"))
    assert any(up.url in line for line in logged("case-3-slow-slow", "slow"))
    assert any(re.search(r"SSH|malformed", line) for line in logged("case-4-broke-x", "broke"))


FIELDS = ("type", "title", "status", "detail", "timestamp", "timestamp_iso")


def _assert_fields(doc: dict[str, Any], status: int) -> None:
    missing = [name for name in FIELDS if name not in doc]
    assert not missing, (missing, doc)
    assert doc["status"] == status and doc["timestamp_iso"].endswith("Z"), doc


async def test_admin_and_proxy_problems_carry_every_field(orchd_factory, http):
    dead = f"http://127.0.0.1:{free_port()}"
    daemon = orchd_factory(base_config(_endpoint("refused", dead)))
    cases = [("/registry/endpoints/nope", 404), ("/health/endpoints/nope", 404),
             ("/no/such/route", 404), ("/orchestrator/nope/x", 404),
             ("/orchestrator/refused/x", 502)]
    for path, status in cases:
        async with http.get(f"{daemon.url}{path}") as r:
            assert r.status == status, path
            assert r.headers["Content-Type"].startswith(PROBLEM), path
            doc = await r.json(content_type=None)
        _assert_fields(doc, status)


def _split(answer: bytes) -> tuple[bytes, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, json.loads(body)


async def _huge_header(port: int) -> bytes:
    answer = await exchange(port, (f"GET /orchestrator/echo/ HTTP/1.1\r\nHost: x\r\n"
                                   f"Cookie: {'c' * 6000}\r\n\r\n").encode())
    return answer.head + answer.body


async def _slow_head(port: int) -> bytes:
    reader, writer = await connect(port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await writer.drain()
        return await wait_closed_by_peer(reader, 10)
    finally:
        writer.close()


async def _malformed_header(port: int) -> bytes:
    answer = await exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n")
    return answer.head + answer.body


@pytest.mark.parametrize(("send", "status"), [
    pytest.param(_huge_header, 431, id="431-huge-header"),
    pytest.param(_slow_head, 408, id="408-slow-head"),
    pytest.param(_malformed_header, 400, id="400-parser"),
])
async def test_listener_refusals_carry_every_field(
        orchd_factory, upstream_factory, send: Callable[[int], Awaitable[bytes]],
        status: int) -> None:
    up = await upstream_factory()
    daemon = orchd_factory(base_config(_endpoint("echo", up.url),
                                       server={"header_timeout": 0.5, "max_header_size": 4096}))
    head, doc = _split(await send(daemon.port))
    assert re.match(rb"HTTP/1\.[01] %d " % status, head), head
    assert PROBLEM.encode() in head.lower(), head
    _assert_fields(doc, status)
    assert up.requests == []
