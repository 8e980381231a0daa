"""Only an upstream's own failures count against its breaker (DESIGN section 13).

A client that asks a plain HTTP backend for a WebSocket, or that sends its body slowly, gets
its own answer (502, 408) and the breaker of the healthy upstream stays closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from tests.integration.rawhttp import exchange
from tests.integration.resilience import breaker_of
from tests.support import base_config, free_port

THRESHOLD = 3
ATTEMPTS = 5  # more than THRESHOLD: each would open the breaker if it counted


def _endpoint(name: str, url: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "methods": ["GET", "POST"], "retries": 0,
            "circuit_breaker": {"failure_threshold": THRESHOLD, "reset_timeout": 60}, **kw}


def _plain_app() -> web.Application:
    """A backend that does not speak WebSocket: 200 at /plain, 500 at /broken."""

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="not a websocket")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="down")

    async def upload(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"length": len(body)})

    app = web.Application()
    app.router.add_get("/plain", plain)
    app.router.add_get("/broken", broken)
    app.router.add_post("/upload", upload)
    return app


async def _ws_status(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5)):
            return 101
    except aiohttp.WSServerHandshakeError as refused:
        return refused.status


async def test_refused_websocket_upgrade_is_not_an_upstream_failure(orchd_factory,
                                                                    upstream_factory, http):
    up = await upstream_factory(_plain_app())
    dead = f"http://127.0.0.1:{free_port()}"
    daemon = orchd_factory(base_config(_endpoint("plain", up.url),
                                       _endpoint("broken", up.url),
                                       _endpoint("dead", dead)))
    gw = f"{daemon.url}/orchestrator"
    for _ in range(ATTEMPTS):
        assert await _ws_status(http, f"{gw}/plain/plain") == 502
    info = await breaker_of(http, daemon.url, "plain")
    assert (info["state"], info["failure_count"]) == ("closed", 0), info
    async with http.get(f"{gw}/plain/plain") as r:
        assert r.status == 200  # everyone else is still served

    # The upstream's own failures still count: a 5xx answer to the upgrade, no connection.
    assert await _ws_status(http, f"{gw}/broken/broken") == 502
    info = await breaker_of(http, daemon.url, "broken")
    assert (info["state"], info["failure_count"]) == ("closed", 1), info
    assert await _ws_status(http, f"{gw}/dead/x") == 502
    info = await breaker_of(http, daemon.url, "dead")
    assert (info["state"], info["failure_count"]) == ("closed", 1), info


async def _trickle(size: int, pieces: int, pause: float) -> AsyncIterator[bytes]:
    for _ in range(pieces):
        yield b"x" * size
        await asyncio.sleep(pause)


async def test_slow_steady_body_is_forwarded_and_costs_the_upstream_nothing(
        orchd_factory, upstream_factory, http):
    up = await upstream_factory(_plain_app())
    daemon = orchd_factory(base_config(_endpoint("svc", up.url, timeout=1),
                                       server={"body_timeout": 1}))
    url = f"{daemon.url}/orchestrator/svc/upload"

    async def upload() -> tuple[int, Any, float]:
        started = time.monotonic()
        # 2048 bytes every 0.25 s for 2.5 s: well within body_timeout's progress rule, and
        # longer than the endpoint's 1 s timeout.
        async with http.post(url, data=_trickle(2048, 10, 0.25),
                             timeout=aiohttp.ClientTimeout(total=30)) as r:
            return r.status, await r.json(content_type=None), time.monotonic() - started

    results = await asyncio.gather(*(upload() for _ in range(ATTEMPTS)))
    for status, body, took in results:
        assert status == 200, body
        assert body == {"length": 2048 * 10}
        assert took > 1.5  # the body really took longer than the endpoint's timeout
    info = await breaker_of(http, daemon.url, "svc")
    assert (info["state"], info["failure_count"]) == ("closed", 0), info


async def test_stalled_body_gets_408_and_costs_the_upstream_nothing(orchd_factory,
                                                                     upstream_factory, http):
    up = await upstream_factory(_plain_app())
    daemon = orchd_factory(base_config(_endpoint("svc", up.url, timeout=1),
                                       server={"body_timeout": 2}))
    # A body that announces 10000 bytes, sends 100 and stalls: the client's fault.
    stalled = (b"POST /orchestrator/svc/upload HTTP/1.1\r\nHost: gw\r\n"
               b"Content-Length: 10000\r\n\r\n" + b"x" * 100)
    answers = await asyncio.gather(*(exchange(daemon.port, stalled, timeout=15)
                                     for _ in range(ATTEMPTS)))
    assert [a.status for a in answers] == [408] * ATTEMPTS, answers
    info = await breaker_of(http, daemon.url, "svc")
    assert (info["state"], info["failure_count"]) == ("closed", 0), info
    async with http.get(f"{daemon.url}/orchestrator/svc/plain") as r:
        assert r.status == 200
