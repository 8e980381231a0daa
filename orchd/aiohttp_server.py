"""Edge limits on the public port: slow clients, oversized requests, too many connections.

aiohttp's server parses requests with llhttp and enforces per-line limits, but it answers
every parse error with 400, waits for headers for as long as the keep-alive timer allows
(an hour by default), has no floor on how slowly a body may arrive and accepts connections
without bound. ``GuardedRunner`` serves the public app through ``GuardedHandler``, which adds
what an edge proxy (nginx, HAProxy, Envoy) has:

* ``server.header_timeout``: the header section must arrive within it, counted from the
  connection's start or from a keep-alive request's first byte; else 408 (or a silent close
  when nothing was sent) -- slowloris;
* ``server.body_timeout``: a request body must advance by ``BODY_PROGRESS`` bytes (or end)
  within every such window, unless orchd itself is the one not reading; else the request
  fails with 408 -- slow POST;
* ``server.send_timeout``: a client that reads nothing of its answer for that long (the
  socket's send buffer stays full) is disconnected -- slow read;
* ``server.max_connections``: beyond it, the oldest connection with no request in progress
  (idle keep-alive, or still sending its headers) is closed to make room; when there is
  none, the new connection is answered 503 and closed;
* ``server.max_url_length`` (414), ``server.max_header_size`` and ``server.max_header_count``
  (431), as nginx and Envoy answer them; other parse errors stay 400;
* requests it cannot honour (``request_refusal``): HTTP/0.9 (400), a major version other
  than 1 (505), a fragment in the request target (400), a transfer coding before ``chunked``
  (501, RFC 9112 section 6.1); orchd.front hands such requests here, so both listeners
  give the same answer.

Limits are read from the running configuration when a connection opens, so a reload
applies to new connections. The answers are problem documents, like every other error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from orchd.errors import ProblemError
from orchd.log import escape_controls, server_logger
from orchd.model import ServerSettings

if TYPE_CHECKING:
    from orchd.proxy import Proxy
    from orchd.traffic import RequestHook

__all__ = ("BODY_PROGRESS", "HOST_RE", "KEEPALIVE_TIMEOUT", "LINGER", "REQUEST_LINE_SLACK",
           "GuardedHandler", "GuardedRunner", "GuardedServer", "body_too_slow",
           "close_lingering", "raw_problem", "request_refusal")

BODY_PROGRESS = 1024  # bytes a body must advance by in every body_timeout window
KEEPALIVE_TIMEOUT = 75.0  # idle keep-alive connections (nginx's default)
LINGER = 1.0  # seconds a refused connection stays open after the answer, reading
REQUEST_LINE_SLACK = 64  # method, spaces and version around the request target

SettingsFn = Callable[[], ServerSettings]
# RFC 3986 host (reg-name, IPv4, or IP literal) and an optional port: no userinfo, no path.
HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(:[0-9]*)?")
_VERSION_RE = re.compile(rb"HTTP/([0-9])\.([0-9])")


def request_refusal(target: str, version: tuple[int, int] | None,
                    coding: str | None = None) -> tuple[int, str] | None:
    """Why a request must be refused although it parses, if it must: ``version`` is None
    for a request line without one (HTTP/0.9), ``coding`` its ``Transfer-Encoding``."""
    if version is None or version == (0, 9):
        return 400, "HTTP/0.9 requests are not supported; send HTTP/1.1"
    if version[0] != 1:
        return 505, (f"HTTP/{version[0]}.{version[1]} is not supported on this port; "
                     "send HTTP/1.1")
    if "#" in target:
        return 400, "the request target has a fragment (#...); fragments are not sent"
    if coding is not None:
        codings = [c.strip().lower() for c in coding.split(",")]
        if codings[-1] == "chunked" and len(codings) > 1:
            return 501, (f"the transfer coding {coding[:100]!r} is not supported: "
                         "only 'chunked' alone is")
    return None


def _line_refusal(line: bytes) -> tuple[int, str] | None:
    """``request_refusal`` of a request line, before the parser sees it."""
    parts = line.split()
    if len(parts) == 2:
        return request_refusal(parts[1].decode("latin-1"), None)
    if len(parts) == 3:
        match = _VERSION_RE.fullmatch(parts[2])
        if match is not None:
            return request_refusal(parts[1].decode("latin-1"), (int(match[1]), int(match[2])))
    return None  # the parser says what is wrong with it


def raw_problem(status: int, detail: str) -> bytes:
    phrase = HTTPStatus(status).phrase
    body = json.dumps({"type": "about:blank", "title": phrase, "status": status,
                       "detail": detail}).encode()
    head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/problem+json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body


def close_lingering(transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
    """End the writing half, then close after ``LINGER`` seconds, taking what the client is
    still sending meanwhile: closing with unread input would reset the connection, and the
    client could lose the answer just written."""
    with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
        if transport.can_write_eof():
            transport.write_eof()
    loop.call_later(LINGER, transport.close)


def body_too_slow(progress: int, timeout: float) -> ProblemError:
    """The error a request body's readers get when it stalls (``server.body_timeout``)."""
    return ProblemError(
        408, "Request body too slow",
        f"the request body advanced by {progress} bytes in {timeout:g}s; "
        f"at least {BODY_PROGRESS} bytes (or its end) must arrive in every {timeout:g}s",
        headers={"Connection": "close"})


class Guarded(Protocol):
    """A connection the server counts against ``server.max_connections``."""

    _limits: ServerSettings

    def evictable(self) -> bool: ...

    def force_close(self) -> None: ...

    def refuse(self, status: int, detail: str) -> None: ...


class GuardedHandler(RequestHandler):
    """One client connection with header and body deadlines and size limits."""

    __slots__ = ("_awaiting_head", "_body", "_body_handle", "_body_mark", "_guard",
                 "_head_bytes", "_head_handle", "_limits", "_line", "_send_handle")

    def __init__(self, manager: GuardedServer, limits: ServerSettings, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._limits = limits
        self._awaiting_head = True
        self._head_bytes = 0
        self._line: bytearray | None = bytearray()
        self._head_handle: asyncio.TimerHandle | None = None
        self._body_handle: asyncio.TimerHandle | None = None
        self._body: Any = None  # the StreamReader of the request whose body is arriving
        self._send_handle: asyncio.TimerHandle | None = None
        self._body_mark = 0

    # -- connection

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_head()
        self._guard.admit(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.forget(self)
        self._cancel_timers()
        self._body = None
        super().connection_lost(exc)

    def evictable(self) -> bool:
        """No request in progress: idle keep-alive, or still sending its header section."""
        return self._awaiting_head and not self._request_in_progress and not self._messages

    def refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` with a problem document and close, outside any request."""
        server_logger.debug("refusing a connection from %s: %d %s",
                            self._peer(), status, detail)
        self._cancel_timers()
        transport = self.transport
        if transport is None or transport.is_closing():
            self.force_close()
            return
        # Close gracefully: the answer, then FIN, then a moment to take what the client is
        # still sending. Closing with unread input would reset the connection and the
        # client could lose the answer.
        self._force_close = True
        if self._waiter:
            self._waiter.cancel()
        self.transport = None
        transport.write(raw_problem(status, detail))
        close_lingering(transport, self._loop)

    def _peer(self) -> str:
        transport = self.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        return str(peer[0]) if peer else "?"

    # -- bytes in

    def data_received(self, data: bytes) -> None:
        if self._force_close or self._close or self._upgraded or self._payload_parser:
            super().data_received(data)
            return
        limits = self._limits
        if not self._awaiting_head and self._body is not None and self._body.is_eof():
            self._body_done()  # the body ended before this read: a new request begins
        if self._awaiting_head and data:
            if self._head_handle is None:  # a keep-alive request's first byte
                self._arm_head()
                self._head_bytes = 0
                self._line = bytearray()
            self._head_bytes += len(data)
            line = self._line
            if line is not None:
                end = data.find(b"\n")
                line += data if end < 0 else data[:end]
                if end >= 0:
                    self._line = None
                    parts = bytes(line).split()
                    target = parts[1] if len(parts) > 1 else b""
                    if len(target) > limits.max_url_length:
                        self.refuse(414, f"the request target is {len(target)} bytes; "
                                         f"the limit is {limits.max_url_length}")
                        return
                    refusal = _line_refusal(bytes(line))
                    if refusal is not None:
                        self.refuse(*refusal)
                        return
                elif len(line) > limits.max_url_length + REQUEST_LINE_SLACK:
                    self.refuse(414, f"the request target is longer than the limit of "
                                     f"{limits.max_url_length} bytes")
                    return
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            new = list(self._messages)[-(self._request_count - before):]
            refusal = self._refusal(new)
            if refusal is not None:
                self._messages.clear()  # none of them is handled
                self.refuse(*refusal)
                return
            self._message_started()
        elif self._awaiting_head and self._head_bytes > limits.max_header_size:
            self.refuse(431, f"the header section is larger than the limit of "
                             f"{limits.max_header_size} bytes")

    def _refusal(self, new: list[Any]) -> tuple[int, str] | None:
        """Why requests parsed whole in one read must be refused, if they must."""
        limit = self._limits.max_header_size
        for message, _payload in new:
            if not isinstance(message, RawRequestMessage):
                continue
            if len(message.path) + sum(len(k) + len(v) + 4
                                       for k, v in message.raw_headers) > limit:
                return 431, f"the header section is larger than the limit of {limit} bytes"
            # An origin server takes origin-form targets only: an absolute-form target
            # (a forward proxy's) names a host of its own that could disagree with Host.
            if not message.path.startswith("/") and not (
                    message.path == "*" and message.method == "OPTIONS"):
                return 400, ("the request target must be a path (origin-form); "
                             "absolute-form and authority-form targets are refused")
            host = message.headers.get("Host")
            if host is not None and not HOST_RE.fullmatch(host):
                return 400, f"the Host header {host[:100]!r} is not a valid host[:port]"
            refusal = request_refusal(message.path, (message.version.major,
                                                      message.version.minor),
                                      message.headers.get("Transfer-Encoding"))
            if refusal is not None:
                return refusal
        return None

    def _message_started(self) -> None:
        """A header section was parsed: its body (if any) is on the clock now."""
        self._cancel_head()
        payload = self._messages[-1][1] if self._messages else None
        self._line = None  # the next request's line may have arrived in the same read
        self._head_bytes = 0
        if payload is not None and not payload.is_eof():
            self._awaiting_head = False
            self._body = payload
            self._body_mark = payload.total_bytes
            self._arm_body()
        else:
            self._awaiting_head = True

    # -- deadlines

    def _arm_head(self) -> None:
        self._cancel_head()
        self._head_handle = self._loop.call_later(self._limits.header_timeout,
                                                  self._head_expired)

    def _cancel_head(self) -> None:
        if self._head_handle is not None:
            self._head_handle.cancel()
            self._head_handle = None

    def _head_expired(self) -> None:
        self._head_handle = None
        if self._force_close or not self._awaiting_head:
            return
        if self._request_in_progress or self._messages:
            self._arm_head()  # a pipelined request waits for the current one
            return
        if self._head_bytes:
            self.refuse(408, f"the request's headers did not arrive within "
                             f"{self._limits.header_timeout:g}s")
        elif self._request_count == 0:
            server_logger.debug("closing a connection from %s that sent nothing within %gs",
                                self._peer(), self._limits.header_timeout)
            self.force_close()

    def _arm_body(self) -> None:
        if self._body_handle is not None:
            self._body_handle.cancel()
        self._body_handle = self._loop.call_later(self._limits.body_timeout,
                                                  self._body_check)

    def _body_check(self) -> None:
        self._body_handle = None
        payload = self._body
        if payload is None or self._force_close:
            return
        if payload.is_eof() or payload.exception() is not None:
            self._body_done()
            return
        progress = payload.total_bytes - self._body_mark
        # Not the client's fault when orchd is the one not reading (a slow upstream).
        ours = self._reading_paused or len(payload._buffer) > 0
        if progress >= BODY_PROGRESS or ours:
            self._body_mark = payload.total_bytes
            self._arm_body()
            return
        timeout = self._limits.body_timeout
        server_logger.info("cutting a request body from %s: %d bytes in the last %gs",
                           self._peer(), progress, timeout)
        self._body = None
        payload.set_exception(body_too_slow(progress, timeout))
        payload.feed_eof()  # readers raise the error; nothing more is read
        self.close()  # no keep-alive after this request

    def _body_done(self) -> None:
        self._body = None
        self._awaiting_head = True
        if self._body_handle is not None:
            self._body_handle.cancel()
            self._body_handle = None

    # -- a client that does not read what it asked for

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_handle is None:
            self._send_handle = self._loop.call_later(self._limits.send_timeout,
                                                      self._send_expired)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_handle is not None:
            self._send_handle.cancel()
            self._send_handle = None

    def _send_expired(self) -> None:
        self._send_handle = None
        server_logger.info("closing a connection from %s: it read nothing of the answer "
                           "for %gs", self._peer(), self._limits.send_timeout)
        transport = self.transport
        if transport is not None:
            transport.abort()  # the writer waiting on it fails; the upstream is let go

    def _cancel_timers(self) -> None:
        if self._send_handle is not None:
            self._send_handle.cancel()
            self._send_handle = None
        self._cancel_head()
        if self._body_handle is not None:
            self._body_handle.cancel()
            self._body_handle = None

    # -- parse errors: 431 for oversized headers, problem documents, no log noise

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        self._cancel_timers()
        detail = exc.message if isinstance(exc.message, str) else str(exc)
        if isinstance(exc, LineTooLong) or "Too many headers" in detail:
            status = 431
            detail = (f"a header field is too large or there are more than "
                      f"{self._limits.max_header_count} of them: {detail}")
        server_logger.debug("bad request from %s: %s", request.remote, escape_controls(detail))
        body = {"type": "about:blank", "title": HTTPStatus(status).phrase,
                "status": status, "detail": detail[:500]}
        resp = web.Response(status=status, text=json.dumps(body),
                            content_type="application/problem+json")
        resp.force_close()
        return resp


class GuardedServer(web.Server):
    """aiohttp's low-level server with ``GuardedHandler`` connections, counted and capped."""

    def __init__(self, *args: Any, settings: SettingsFn, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._settings = settings
        self.guarded: dict[Guarded, None] = {}  # oldest first
        self.evicted = 0
        self.refused = 0

    def __call__(self) -> GuardedHandler:
        limits = self._settings()
        kwargs = {**self._kwargs,
                  "keepalive_timeout": KEEPALIVE_TIMEOUT,
                  "max_line_size": limits.max_url_length + 2 * REQUEST_LINE_SLACK,
                  "max_field_size": limits.max_header_size,
                  "max_headers": limits.max_header_count}
        return GuardedHandler(self, limits, loop=self._loop, **kwargs)

    def admit(self, handler: Guarded) -> None:
        self.guarded[handler] = None
        over = len(self.guarded) - handler._limits.max_connections
        if over <= 0:
            return
        victims = [h for h in self.guarded if h is not handler and h.evictable()][:over]
        for victim in victims:
            self.evicted += 1
            victim.force_close()
            self.guarded.pop(victim, None)
        if len(victims) < over:
            self.refused += 1
            server_logger.warning("server.max_connections (%d) reached: refusing a connection",
                                  handler._limits.max_connections)
            handler.refuse(503, "too many connections; retry later")
            self.guarded.pop(handler, None)

    def forget(self, handler: Guarded) -> None:
        self.guarded.pop(handler, None)


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` whose connections are ``GuardedHandler``s; given ``proxy``, they
    start as ``orchd.front`` connections, which serve proxied requests themselves and hand
    each finished one to ``hook`` (aiohttp's connections, to their access logger)."""

    def __init__(self, app: web.Application, *, settings: SettingsFn,
                 proxy: Proxy | None = None, hook: RequestHook | None = None,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._settings = settings
        self._proxy = proxy
        self._hook = hook

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        kwargs = dict(request_factory=base.request_factory,
                      handler_cancellation=base.handler_cancellation,
                      loop=base._loop, settings=self._settings, **base._kwargs)
        if self._proxy is not None:
            from orchd.front import FrontServer  # it builds on this module

            hook = self._hook if self._hook is not None and self._hook.enabled else None
            return FrontServer(base.request_handler, proxy=self._proxy, hook=hook, **kwargs)
        return GuardedServer(base.request_handler, **kwargs)
