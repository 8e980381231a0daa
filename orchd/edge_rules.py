"""The public port's edge rules, once for both listeners.

A proxied request is served by orchd's own listener (``orchd.front``), every other one by
aiohttp's (``orchd.aiohttp_server``); the rules below hold on both, and each is written here
once, so that a fix cannot land on one listener and miss the other. What an edge proxy
(nginx, HAProxy, Envoy) enforces and aiohttp alone does not:

* ``server.header_timeout``: the header section must arrive within it, counted from the
  connection's start or from a keep-alive request's first byte; else 408 (or a silent close
  when nothing was sent) -- slowloris (``header_deadline_passed``);
* ``server.body_timeout``: a request body must advance by ``BODY_PROGRESS`` bytes (or end)
  within every such window, unless orchd itself is the one not reading; else the request
  fails with 408 -- slow POST (``body_stall``, ``cut_slow_body``);
* ``server.send_timeout``: a client that reads nothing of its answer for that long (the
  socket's send buffer stays full) is disconnected -- slow read (``send_deadline_passed``);
* ``server.max_connections``: beyond it, the oldest connection with no request in progress
  (idle keep-alive, or still sending its headers) is closed to make room; when there is
  none, the new connection is answered 503 and closed (``ConnectionCap``);
* ``server.max_url_length`` (414), ``server.max_header_size`` and ``server.max_header_count``
  (431), as nginx and Envoy answer them; other parse errors stay 400 (``*_refusal``);
* requests neither listener honours (``orchd.http1.request_refusal``, ``message_refusal``):
  HTTP/0.9 or another major version than 1 (505), a fragment in the request target
  (400), a transfer coding before ``chunked`` (501, RFC 9112 section 6.1), a target not in
  origin form or a malformed ``Host`` (400);
* a refusal is a problem document, then a lingering close (``refuse``).

Limits are read from the running configuration when a connection opens, so a reload
applies to new connections.

What it does not do: parse (``orchd.http1``) or keep connection state; each listener keeps
its own timers and calls these functions when they fire.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

from aiohttp.streams import StreamReader

from orchd.aiohttp_edge import body_buffered
from orchd.errors import ProblemError
from orchd.http1 import Refusal, host_ok, request_refusal, target_refusal
from orchd.log import server_logger
from orchd.model import ServerSettings
from orchd.problems import problem_bytes

__all__ = ("BODY_PROGRESS", "KEEPALIVE_TIMEOUT", "LINGER", "REQUEST_LINE_SLACK",
           "ConnectionCap", "Guarded", "SettingsFn", "body_stall", "body_too_slow",
           "close_lingering", "cut_slow_body", "head_cannot_fit", "head_size_refusal",
           "header_deadline_passed", "line_size_refusal", "message_refusal",
           "parser_limits", "refuse", "send_deadline_passed",
           "served_head_fits", "target_size_refusal")

BODY_PROGRESS = 1024  # bytes a body must advance by in every body_timeout window
KEEPALIVE_TIMEOUT = 75.0  # idle keep-alive connections (nginx's default)
LINGER = 1.0  # seconds a refused connection stays open after the answer, reading
REQUEST_LINE_SLACK = 64  # method, spaces and version around the request target

SettingsFn = Callable[[], ServerSettings]


class Guarded(Protocol):
    """A connection of either listener, as the connection cap and the deadlines see it."""

    limits: ServerSettings

    def evictable(self) -> bool:
        """No request in progress: idle keep-alive, or still sending its header section."""

    def force_close(self) -> None: ...

    def refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` with a problem document and close, outside any request."""


# -- sizes: 414 and 431

def parser_limits(limits: ServerSettings) -> dict[str, int]:
    """The line and field limits llhttp enforces itself on aiohttp's connections."""
    return {"max_line_size": limits.max_url_length + 2 * REQUEST_LINE_SLACK,
            "max_field_size": limits.max_header_size,
            "max_headers": limits.max_header_count}


def line_size_refusal(received: int, limits: ServerSettings) -> Refusal | None:
    """A request line of which ``received`` bytes arrived without its end: 414 when no
    target within the limit can be in it."""
    if received > limits.max_url_length + REQUEST_LINE_SLACK:
        return 414, f"the request target is longer than the limit of {limits.max_url_length} bytes"
    return None


def target_size_refusal(size: int, limits: ServerSettings) -> Refusal | None:
    """A request target of ``size`` bytes: 414 over ``server.max_url_length``."""
    if size > limits.max_url_length:
        return 414, f"the request target is {size} bytes; the limit is {limits.max_url_length}"
    return None


def head_size_refusal(size: int, limits: ServerSettings) -> Refusal | None:
    """A header section of ``size`` bytes: 431 over ``server.max_header_size``."""
    if size > limits.max_header_size:
        return 431, (f"the header section is larger than the limit of "
                     f"{limits.max_header_size} bytes")
    return None


def head_cannot_fit(received: int, limits: ServerSettings) -> bool:
    """``received`` bytes hold no request line and header section within the limits."""
    return received > limits.max_header_size + limits.max_url_length + 2 * REQUEST_LINE_SLACK


def served_head_fits(url: int, head: int, fields: int, limits: ServerSettings) -> bool:
    """A parsed head (target, whole head and field count) within every size limit, so the
    own listener may serve it; else aiohttp answers it (414 or 431)."""
    return (url <= limits.max_url_length and head <= limits.max_header_size
            and fields <= limits.max_header_count)


def message_refusal(path: str, method: str, version: tuple[int, int],
                    raw_headers: tuple[tuple[bytes, bytes], ...], host: str | None,
                    coding: str | None, limits: ServerSettings) -> Refusal | None:
    """Why a request parsed whole must be refused, if it must: its header section's size,
    its target's form, its Host, its version and its transfer coding."""
    size = len(path) + sum(len(k) + len(v) + 4 for k, v in raw_headers)
    refusal = head_size_refusal(size, limits) or target_refusal(path, method)
    if refusal is not None:
        return refusal
    if host is not None and not host_ok(host):
        return 400, f"the Host header {host[:100]!r} is not a valid host[:port]"
    return request_refusal(path, version, coding)


# -- refusal

def refuse(transport: asyncio.Transport | None, loop: asyncio.AbstractEventLoop,
           status: int, detail: str, peer: str) -> bool:
    """Answer ``status`` with a problem document outside any request, then close lingering;
    False if the connection was already closing (nothing written)."""
    server_logger.debug("refusing a connection from %s: %d %s", peer, status, detail)
    if transport is None or transport.is_closing():
        return False
    transport.write(problem_bytes(status, detail))
    close_lingering(transport, loop)
    return True


def close_lingering(transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
    """End the writing half, then close after ``LINGER`` seconds, taking what the client is
    still sending meanwhile: closing with unread input would reset the connection, and the
    client could lose the answer just written."""
    with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
        if transport.can_write_eof():
            transport.write_eof()
    loop.call_later(LINGER, transport.close)


# -- deadlines

def header_deadline_passed(conn: Guarded, head_begun: bool, first: bool, peer: str) -> None:
    """``server.header_timeout`` passed with no whole head: 408 if part of one came; a
    silent close if the connection never sent anything; else nothing (keep-alive idle
    time is the listener's)."""
    timeout = conn.limits.header_timeout
    if head_begun:
        conn.refuse(408, f"the request's headers did not arrive within {timeout:g}s")
    elif first:
        server_logger.debug("closing a connection from %s that sent nothing within %gs",
                            peer, timeout)
        conn.force_close()


def body_stall(payload: StreamReader, mark: int, reading_paused: bool) -> int:
    """At the end of a ``server.body_timeout`` window that began with ``mark`` bytes of the
    body in: how little it advanced (the body is too slow), or -1 if it is fine. Not the
    client's fault when orchd is the one not reading (a slow upstream)."""
    progress = payload.total_bytes - mark
    if progress >= BODY_PROGRESS or reading_paused or body_buffered(payload):
        return -1
    return progress


def cut_slow_body(payload: StreamReader, progress: int, timeout: float, peer: str) -> None:
    """Fail the body's readers with 408 (``body_too_slow``)."""
    server_logger.info("cutting a request body from %s: %d bytes in the last %gs",
                       peer, progress, timeout)
    payload.set_exception(body_too_slow(progress, timeout))


def body_too_slow(progress: int, timeout: float) -> ProblemError:
    """The error a request body's readers get when it stalls (``server.body_timeout``)."""
    return ProblemError(
        408, "Request body too slow",
        f"the request body advanced by {progress} bytes in {timeout:g}s; "
        f"at least {BODY_PROGRESS} bytes (or its end) must arrive in every {timeout:g}s",
        headers={"Connection": "close"})


def send_deadline_passed(transport: asyncio.Transport | None, timeout: float,
                         peer: str) -> None:
    """The client read nothing of its answer for ``server.send_timeout``: cut it (the
    writer waiting on it fails; the upstream is let go)."""
    server_logger.info("closing a connection from %s: it read nothing of the answer "
                       "for %gs", peer, timeout)
    if transport is not None:
        transport.abort()


# -- the connection cap

class ConnectionCap:
    """``server.max_connections`` over both listeners' connections, oldest first."""

    def __init__(self) -> None:
        self.guarded: dict[Guarded, None] = {}  # oldest first
        self.evicted = 0
        self.refused = 0

    def admit(self, conn: Guarded) -> None:
        """Count a new connection; over the cap, close idle ones to make room, or refuse
        it with 503 when none is idle."""
        self.guarded[conn] = None
        cap = conn.limits.max_connections
        over = len(self.guarded) - cap
        if over <= 0:
            return
        victims = [c for c in self.guarded if c is not conn and c.evictable()][:over]
        for victim in victims:
            self.evicted += 1
            victim.force_close()
            self.guarded.pop(victim, None)
        if len(victims) < over:
            self.refused += 1
            server_logger.warning("server.max_connections (%d) reached: refusing a connection",
                                  cap)
            conn.refuse(503, "too many connections; retry later")
            self.guarded.pop(conn, None)

    def forget(self, conn: Guarded) -> None:
        self.guarded.pop(conn, None)
