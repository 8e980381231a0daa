"""The server-side ceiling of a Python gateway: answer a constant body with no proxying.

``aiohttp``: a web.Application with one catch-all route (what orchd's public app is built on).
``llhttp``: a bare asyncio protocol that parses requests with httptools (llhttp) and writes
a prepared answer. The gap between the two is what aiohttp's server costs per request before
any gateway work is done; bench/throughput.py --ceiling prints both next to the proxies.

Usage: python bench/ceiling.py aiohttp|llhttp PORT
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop
from aiohttp import web

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


def run_llhttp(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            _Constant, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    {"aiohttp": run_aiohttp, "llhttp": run_llhttp}[kind](port)
