"""Ceilings of a Python gateway on one core, for bench/throughput.py --ceiling.

``aiohttp``: a web.Application with one catch-all route (what orchd's public app is built on)
answering a constant body. ``llhttp``: a bare asyncio protocol that parses requests with
httptools (llhttp) and writes a prepared answer. The gap between the two is what aiohttp's
server costs per request before any gateway work is done.

``llhttp-proxy``: the same protocol forwarding every request through orchd's upstream pool
(``orchd.upstream``) to UPSTREAM, one request at a time per connection, with none of the
gateway's work (routing, breakers, headers, logs, metrics): what a listener below aiohttp's
web layer would start from.

Usage: python bench/ceiling.py aiohttp|llhttp PORT | llhttp-proxy PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httptools
import uvloop
from aiohttp import web

from orchd.upstream import UpstreamPool

BODIES = {b"/small": b"x" * 99 + b"\n", b"/big": b"x" * (64 * 1024 - 1) + b"\n"}


def run_aiohttp(port: int) -> None:
    async def constant(request: web.Request) -> web.Response:
        return web.Response(body=BODIES.get(request.path.encode(), b"ok\n"))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", constant)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                loop=uvloop.new_event_loop())


class _Constant(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        body = BODIES.get(self.url, b"ok\n")
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n%b" % (len(body), body))


class _Forward(asyncio.Protocol):
    """Parses requests with llhttp and forwards them through the upstream pool."""

    def __init__(self, pool: UpstreamPool, origin: Any) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pool, self.origin = pool, origin
        self.url = b""
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self.serve())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        self.queue.put_nowait(self.url.decode())

    async def serve(self) -> None:
        while True:
            target = await self.queue.get()
            up = await self.pool.request(self.origin, "GET", target, [], None, None, 5.0,
                                         timeout=10.0)
            try:
                head = [b"HTTP/1.1 %d %s\r\n" % (up.status, up.reason.encode())]
                head += [b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in up.headers
                         if k.lower() not in ("connection", "keep-alive")]
                body = b"".join([c async for c in up.chunks(10.0)])
            finally:
                up.release()
            assert self.transport is not None
            self.transport.writelines((*head, b"\r\n", body))


def run_llhttp_proxy(port: int, upstream_port: int) -> None:
    async def main() -> None:
        pool = UpstreamPool()
        origin = pool.origin("http", "127.0.0.1", upstream_port)
        server = await asyncio.get_running_loop().create_server(
            lambda: _Forward(pool, origin), "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def run_llhttp(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            _Constant, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "llhttp-proxy":
        run_llhttp_proxy(port, int(sys.argv[3]))
    else:
        {"aiohttp": run_aiohttp, "llhttp": run_llhttp}[kind](port)
