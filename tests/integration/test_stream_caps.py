"""Proxied WebSockets share the long-lived stream caps with ``/events`` (DESIGN §13)."""

from __future__ import annotations

import contextlib

import aiohttp
from aiohttp import web

from tests.integration.rawhttp import endpoint
from tests.support import base_config


def ws_echo_app() -> web.Application:
    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str(msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/ws", ws)
    return app


async def test_websockets_and_event_streams_share_the_per_client_cap(orchd_factory,
                                                                     upstream_factory):
    up = await upstream_factory(ws_echo_app())
    gw = orchd_factory(base_config(endpoint("chat", up.url),
                                   server={"max_connections": 20, "max_streams_per_client": 2}))
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as client, \
            contextlib.AsyncExitStack() as held:
        events = await held.enter_async_context(client.get(f"{gw.url}/events"))
        assert events.status == 200
        ws = await held.enter_async_context(client.ws_connect(f"{gw.url}/orchestrator/chat/ws"))
        await ws.send_str("hello")
        assert (await ws.receive_str(timeout=10)) == "hello"
        refused: aiohttp.WSServerHandshakeError | None = None
        try:
            extra = await client.ws_connect(f"{gw.url}/orchestrator/chat/ws")
            await extra.close()
        except aiohttp.WSServerHandshakeError as exc:
            refused = exc
        assert refused is not None and refused.status == 429, "a third stream was accepted"
        async with client.get(f"{gw.url}/events") as again:
            assert again.status == 429
