"""The one place orchd touches aiohttp's private attributes.

The public port's edge rules need to see, and in a few places steer, state aiohttp keeps to
itself: whether a connection's handler has a request in progress (eviction, the header
deadline), whether it is past HTTP (an upgrade, a close under way), how many bytes a request
body holds unread (a slow body is not the client's fault when orchd is the one not reading),
how a refused connection is stopped, the server's table of connections (stop and restart
close them all) and the runner's shutdown timeout (hot-reloadable). Each is read or written
here only, through a function named for what it means; ``PRIVATE`` lists every attribute
used, and tests/unit/test_aiohttp_edge.py fails naming the missing ones when an aiohttp
release drops one. pyproject.toml pins aiohttp to the range that test has passed on.

What it does not do: decide anything (``orchd.edge_rules``) or serve (``orchd.aiohttp_server``,
``orchd.front``). It imports nothing of orchd.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

__all__ = ("PRIVATE", "body_buffered", "drop_messages", "handler_busy", "handler_loop",
           "handler_messages", "handler_passes_through", "handler_reading_paused",
           "handler_request_count", "make_base_server", "missing_private", "server_options",
           "set_shutdown_timeout", "stop_handler", "track_connection", "untrack_connection")

# Every private attribute of aiohttp this module uses, by the class that holds it.
PRIVATE: dict[type[Any], tuple[str, ...]] = {
    RequestHandler: ("_request_count", "_messages", "_payload_parser", "_upgraded",
                     "_force_close", "_close", "_waiter", "_request_in_progress",
                     "_reading_paused", "_loop"),
    StreamReader: ("_buffer",),
    web.Server: ("_connections", "_kwargs", "_loop"),
    web.AppRunner: ("_shutdown_timeout", "_make_server"),
}


# -- RequestHandler (one aiohttp connection)

def handler_passes_through(handler: RequestHandler) -> bool:
    """Past HTTP request heads: closing, upgraded (WebSocket), or inside a body aiohttp's
    own payload parser reads; the edge rules leave its bytes alone."""
    return bool(handler._force_close or handler._close or handler._upgraded
                or handler._payload_parser)


def handler_request_count(handler: RequestHandler) -> int:
    """Request heads parsed on this connection so far."""
    return handler._request_count


def handler_messages(handler: RequestHandler) -> list[tuple[Any, StreamReader]]:
    """Parsed requests waiting for the handler (pipelined), oldest first: (message, body)."""
    return list(handler._messages)


def handler_busy(handler: RequestHandler) -> bool:
    """A request is being handled, or parsed ones wait for it."""
    return bool(handler._request_in_progress or handler._messages)


def handler_reading_paused(handler: RequestHandler) -> bool:
    """aiohttp paused the socket: a request body is not being read (orchd's doing)."""
    return bool(handler._reading_paused)


def handler_loop(handler: RequestHandler) -> asyncio.AbstractEventLoop:
    return handler._loop


def drop_messages(handler: RequestHandler) -> None:
    """Forget the parsed requests that wait for the handler: none of them is handled."""
    handler._messages.clear()


def stop_handler(handler: RequestHandler) -> None:
    """Stop handling requests on this connection without closing it (a refusal writes its
    answer and closes it itself): the handler's loop wakes and ends."""
    handler._force_close = True
    if handler._waiter:
        handler._waiter.cancel()
    handler.transport = None


# -- a request body

def body_buffered(payload: StreamReader) -> bool:
    """Bytes of the body have arrived that nobody has read yet."""
    return len(payload._buffer) > 0


# -- web.Server (the connection factory) and the runner

def server_options(server: web.Server) -> tuple[asyncio.AbstractEventLoop, dict[str, Any]]:
    """The loop and the keyword arguments a server gives each connection's handler."""
    return server._loop, server._kwargs


def track_connection(server: web.Server, protocol: object,
                     transport: asyncio.Transport) -> None:
    """Count a connection that is not a ``RequestHandler`` as the server's own, so that
    ``shutdown`` and ``connections`` see it (orchd's own listener)."""
    server._connections[protocol] = transport  # type: ignore[index]


def untrack_connection(server: web.Server, protocol: object) -> None:
    server._connections.pop(protocol, None)  # type: ignore[call-overload]


async def make_base_server(runner: web.AppRunner) -> web.Server:
    """The server ``runner`` would make itself (a runner subclass builds its own from it)."""
    return await web.AppRunner._make_server(runner)


def set_shutdown_timeout(runner: web.BaseRunner, timeout: float) -> None:
    """The seconds ``runner.cleanup()`` lets requests in flight finish (read there, so a
    value set just before it is the one in force); aiohttp reads 0 as no limit."""
    runner._shutdown_timeout = max(timeout, 0.001)


# -- what the installed aiohttp lacks

def missing_private() -> list[str]:
    """``Class.attribute`` for every entry of ``PRIVATE`` the installed aiohttp lacks."""
    missing = []
    for cls, names in PRIVATE.items():
        known = set(dir(cls))
        for klass in cls.__mro__:
            known.update(getattr(klass, "__slots__", ()))
            init = getattr(klass, "__init__", None)
            code = getattr(init, "__code__", None)
            if code is not None:
                known.update(code.co_names)  # attributes assigned in __init__ (self._x = ...)
        missing += [f"{cls.__module__}.{cls.__qualname__}.{name}" for name in names
                    if name not in known]
    return missing
