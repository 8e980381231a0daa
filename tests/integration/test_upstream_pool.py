"""The proxy's upstream pool end to end: connections are kept alive and reused, and a client
that leaves mid-answer is neither an upstream failure nor a gateway error."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from tests.support import Orchd, Upstream, async_wait_until, base_config


async def test_upstream_connections_are_reused(orchd_factory: Callable[..., Orchd],
                                               upstream_factory: Callable[..., Any],
                                               http: aiohttp.ClientSession) -> None:
    up: Upstream = await upstream_factory()
    orchd = orchd_factory(base_config({"name": "echo", "url": up.url, "methods": ["GET", "POST"]}))
    for i in range(20):
        method = "POST" if i % 2 else "GET"
        async with http.request(method, f"{orchd.url}/orchestrator/echo/n/{i}",
                                data=b"x" * i if i % 2 else None) as r:
            assert r.status == 200
            assert (await r.json())["path"] == f"/n/{i}"
    peers = {req.transport.get_extra_info("peername") for req in up.requests
             if req.transport is not None}
    assert len(up.requests) == 20
    assert len(peers) == 1, f"20 sequential requests used {len(peers)} upstream connections"


async def test_client_gone_before_the_answer(orchd_factory: Callable[..., Orchd],
                                             upstream_factory: Callable[..., Any],
                                             http: aiohttp.ClientSession) -> None:
    """The client hangs up while the upstream is still thinking: when the answer comes there
    is nobody to send it to. That is not an upstream failure and not a gateway error."""
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await asyncio.wait_for(release.wait(), 10)
        resp = web.StreamResponse()  # the head first, the body a moment later: a stream
        await resp.prepare(request)
        await asyncio.sleep(0.05)
        with contextlib.suppress(ConnectionResetError):  # orchd hung up too: nobody to tell
            await resp.write(b"late" * 1000)
        return resp

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/ok", ok)
    up: Upstream = await upstream_factory(app)
    orchd = orchd_factory(base_config({"name": "s", "url": up.url}))

    _reader, writer = await asyncio.open_connection("127.0.0.1", orchd.port)
    writer.write(b"GET /orchestrator/s/slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(arrived.wait(), 10)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()  # the client leaves (with a reset) before the upstream answers
    await writer.wait_closed()
    await asyncio.sleep(0.05)  # let orchd see the close first: the point of the test
    release.set()

    async def settled() -> bool:
        return "GET /orchestrator/s/slow" in orchd.log()

    await async_wait_until(settled, what="the access log line of the abandoned request")
    async with http.get(f"{orchd.url}/orchestrator/s/ok") as r:
        assert r.status == 200
        assert await r.text() == "ok"
    async with http.get(f"{orchd.url}/health/circuit-breakers") as r:
        doc = await r.json()
    (breaker,) = [b for b in doc["circuit_breakers"] if b["endpoint_id"] == "s"]
    assert breaker["state"] == "closed"
    assert breaker["failure_count"] == 0
    log = orchd.log()
    assert "Error handling request" not in log
    assert "Traceback" not in log
