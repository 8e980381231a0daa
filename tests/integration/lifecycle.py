"""Helpers shared by the reload, shutdown, restart and stream tests: an upstream with slow,
streaming and WebSocket routes, control-socket calls and polling on a process's exit."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from tests.support import async_wait_until


def lifecycle_app(release: asyncio.Event | None = None) -> web.Application:
    """``/slow`` answers once ``release`` is set; ``/sse`` sends ``data: N`` every 50 ms with
    N counting up from 0; ``/ws`` echoes text messages as ``echo <text>``."""

    async def slow(request: web.Request) -> web.Response:
        assert release is not None
        await release.wait()
        return web.Response(text="slow and complete")

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(100_000):
            await resp.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(0.05)
        return resp

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"echo {msg.data}")
        return ws

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/sse", sse)
    app.router.add_get("/ws", ws_echo)
    return app


async def control(daemon: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """Call orchd's control socket: (status, JSON body)."""
    connector = aiohttp.UnixConnector(str(daemon.socket))
    async with (aiohttp.ClientSession(connector=connector) as session,
                session.request(method, f"http://orchd{path}", json=body) as r):
        return r.status, await r.json(content_type=None)


async def wait_exit(daemon: Any, timeout: float = 20.0) -> int:
    """Wait for the orchd subprocess to exit; its exit status."""
    async def exited() -> bool:
        return daemon.proc.poll() is not None
    await async_wait_until(exited, timeout, what="orchd to exit")
    return int(daemon.proc.returncode)
