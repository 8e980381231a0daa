"""aiohttp's side of the public port: its server, connection handler and runner, with the
edge rules of ``orchd.edge_rules`` on every connection.

aiohttp's server parses requests with llhttp and enforces per-line limits, but it answers
every parse error with 400, waits for headers for as long as the keep-alive timer allows
(an hour by default), has no floor on how slowly a body may arrive and accepts connections
without bound. ``GuardedHandler`` is its connection handler with the header, body and send
deadlines, the size limits, the refusals and the connection cap of ``orchd.edge_rules``;
``GuardedServer`` makes them and counts them; ``GuardedRunner`` serves an app through a
``GuardedServer`` (or, given ``server_class``, a subclass of it: ``orchd.front``'s).

Connections reach a ``GuardedHandler`` two ways: accepted by aiohttp (the control app), or
handed over by ``orchd.front`` at the first request it does not serve itself, the bytes
read so far replayed. What aiohttp keeps private is read through ``orchd.aiohttp_edge``.

A connection handed over keeps the peer ``orchd.front`` found (a PROXY header's, and
whether it is a trusted proxy): ``GuardedServer``'s request factory gives each request the
client address of design section 11 as ``request.remote``, so aiohttp's access log and
every route read the same client as the proxied path. Admin trust reads the socket's own
peer instead (``socket_peer``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from orchd import aiohttp_edge as private
from orchd import edge_rules as rules
from orchd.client_ip import FORWARDED_BY, Networks, client_from_forwarded, forwarded_for
from orchd.edge_rules import ConnectionCap, Guarded, SettingsFn
from orchd.errors import ProblemError
from orchd.http1 import Refusal, line_refusal
from orchd.log import escape_controls, server_logger
from orchd.model import ServerSettings
from orchd.problems import problem_response

__all__ = ("GuardedHandler", "GuardedRunner", "GuardedServer", "socket_peer")


def socket_peer(request: web.BaseRequest) -> str | None:
    """The address of the socket's peer: what admin trust judges (design section 2),
    never a forwarding header's or a PROXY header's client (``request.remote``)."""
    protocol = request.protocol
    if isinstance(protocol, GuardedHandler) and protocol.socket_peer is not None:
        return protocol.socket_peer or None  # relayed by a worker (orchd.workers.relay)
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, list | tuple):
        return str(peer[0]) if peer else None
    return str(peer) if peer else None


class GuardedHandler(RequestHandler):
    """One aiohttp client connection with header and body deadlines and size limits."""

    __slots__ = ("_awaiting_head", "_body", "_body_handle", "_body_mark", "_guard",
                 "_head_bytes", "_head_handle", "_line", "_send_handle", "limits", "peer",
                 "secure", "socket_peer", "trusted")

    def __init__(self, manager: GuardedServer, limits: ServerSettings, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self.limits = limits
        self._awaiting_head = True
        self._head_bytes = 0
        self._line: bytearray | None = bytearray()
        self._head_handle: asyncio.TimerHandle | None = None
        self._body_handle: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  # the request whose body is arriving
        self._send_handle: asyncio.TimerHandle | None = None
        self._body_mark = 0
        self.peer: str | None = None  # None: the socket's peer is the connection's
        self.trusted: Networks = ()  # server.trusted_proxies, when ``peer`` is in them
        # Relayed by a worker (orchd.workers): whether the client's connection is TLS (the
        # socket here is not); None for a connection of its own.
        self.secure: bool | None = None
        self.socket_peer: str | None = None  # and the client socket's peer there

    def set_peer(self, peer: str, trusted: Networks) -> None:
        """The connection's peer as ``orchd.front`` found it (a PROXY header's), and
        ``trusted`` (server.trusted_proxies) if it is a trusted proxy, else empty."""
        self.peer = peer
        self.trusted = trusted

    def relayed(self, secure: bool, socket_peer: str) -> None:
        """A worker relays this connection; its client's is TLS when ``secure``, and its
        client socket's peer is ``socket_peer``."""
        self.secure = secure
        self.socket_peer = socket_peer

    # -- connection

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_head()
        self._guard.cap.admit(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.cap.forget(self)
        self._cancel_timers()
        self._body = None
        super().connection_lost(exc)

    def evictable(self) -> bool:
        """See ``orchd.edge_rules.Guarded.evictable``."""
        return self._awaiting_head and not private.handler_busy(self)

    def refuse(self, status: int, detail: str) -> None:
        """See ``orchd.edge_rules.Guarded.refuse``."""
        self._cancel_timers()
        transport = self.transport
        if transport is None or transport.is_closing():
            rules.refuse(None, private.handler_loop(self), status, detail, self._peer())
            self.force_close()
            return
        private.stop_handler(self)  # the answer below is the connection's last word
        rules.refuse(transport, private.handler_loop(self), status, detail, self._peer())

    def _peer(self) -> str:
        transport = self.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        return str(peer[0]) if peer else "?"

    # -- bytes in

    def data_received(self, data: bytes) -> None:
        if private.handler_passes_through(self):
            super().data_received(data)
            return
        limits = self.limits
        body = self._body
        if not self._awaiting_head and body is not None and body.is_eof():
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
                refusal: Refusal | None = None
                if end >= 0:
                    self._line = None
                    parts = bytes(line).split()
                    target = parts[1] if len(parts) > 1 else b""
                    refusal = (rules.target_size_refusal(len(target), limits)
                               or line_refusal(bytes(line)))
                else:
                    refusal = rules.line_size_refusal(len(line), limits)
                if refusal is not None:
                    self.refuse(*refusal)
                    return
        before = private.handler_request_count(self)
        super().data_received(data)
        count = private.handler_request_count(self)
        if count != before:
            new = private.handler_messages(self)[-(count - before):]
            refusal = self._refusal(new)
            if refusal is not None:
                private.drop_messages(self)  # none of them is handled
                self.refuse(*refusal)
                return
            self._message_started()
        elif self._awaiting_head:
            refusal = rules.head_size_refusal(self._head_bytes, limits)
            if refusal is not None:
                self.refuse(*refusal)

    def _refusal(self, new: list[tuple[Any, StreamReader]]) -> Refusal | None:
        """Why requests parsed whole in one read must be refused, if they must."""
        for message, _payload in new:
            if not isinstance(message, RawRequestMessage):
                continue
            headers = message.headers
            refusal = rules.message_refusal(
                message.path, message.method, (message.version.major, message.version.minor),
                message.raw_headers, headers.get("Host"), headers.get("Transfer-Encoding"),
                self.limits)
            if refusal is not None:
                return refusal
        return None

    def _message_started(self) -> None:
        """A header section was parsed: its body (if any) is on the clock now."""
        self._cancel_head()
        messages = private.handler_messages(self)
        payload = messages[-1][1] if messages else None
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
        self._head_handle = private.handler_loop(self).call_later(
            self.limits.header_timeout, self._head_expired)

    def _cancel_head(self) -> None:
        if self._head_handle is not None:
            self._head_handle.cancel()
            self._head_handle = None

    def _head_expired(self) -> None:
        self._head_handle = None
        if not self._awaiting_head or private.handler_passes_through(self):
            return
        if private.handler_busy(self):
            self._arm_head()  # a pipelined request waits for the current one
            return
        rules.header_deadline_passed(self, self._head_bytes > 0,
                                     private.handler_request_count(self) == 0, self._peer())

    def _arm_body(self) -> None:
        if self._body_handle is not None:
            self._body_handle.cancel()
        self._body_handle = private.handler_loop(self).call_later(self.limits.body_timeout,
                                                                  self._body_check)

    def _body_check(self) -> None:
        self._body_handle = None
        payload = self._body
        if payload is None or private.handler_passes_through(self):
            return
        if payload.is_eof() or payload.exception() is not None:
            self._body_done()
            return
        stall = rules.body_stall(payload, self._body_mark,
                                 private.handler_reading_paused(self))
        if stall < 0:
            self._body_mark = payload.total_bytes
            self._arm_body()
            return
        self._body = None
        rules.cut_slow_body(payload, stall, self.limits.body_timeout, self._peer())
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
            self._send_handle = private.handler_loop(self).call_later(
                self.limits.send_timeout, self._send_expired)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_handle is not None:
            self._send_handle.cancel()
            self._send_handle = None

    def _send_expired(self) -> None:
        self._send_handle = None
        rules.send_deadline_passed(self.transport, self.limits.send_timeout, self._peer())

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
                      f"{self.limits.max_header_count} of them: {detail}")
        server_logger.debug("bad request from %s: %s", request.remote, escape_controls(detail))
        resp = problem_response(ProblemError(status, HTTPStatus(status).phrase, detail[:500]),
                                request)
        resp.force_close()
        return resp


class GuardedServer(web.Server):
    """aiohttp's low-level server with ``GuardedHandler`` connections, counted and capped
    (``cap``: one count for every connection of the port, whichever listener has it)."""

    def __init__(self, *args: Any, settings: SettingsFn, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._settings = settings
        self.cap = ConnectionCap()
        self._base_factory = self.request_factory
        self.request_factory = self._client_request

    def _client_request(self, message: RawRequestMessage, payload: StreamReader,
                        protocol: RequestHandler, writer: AbstractStreamWriter,
                        task: asyncio.Task[None]) -> BaseRequest:
        """The app's request, its ``remote`` the client of design section 11 when the
        connection's peer is not simply the socket's (``GuardedHandler.set_peer``)."""
        request = self._base_factory(message, payload, protocol, writer, task)
        if not isinstance(protocol, GuardedHandler):
            return request
        # A relayed connection's client came over TLS (orchd.workers.relay); one clone for
        # both changes (a clone keeps neither the scheme nor the remote given another's).
        scheme = "https" if protocol.secure else None
        if protocol.peer is None:
            return request.clone(scheme=scheme) if scheme else request
        peer, trusted = protocol.peer, protocol.trusted
        client = peer
        if trusted:
            client = client_from_forwarded(forwarded_for(message.headers.items()), peer,
                                           trusted)
        if scheme:
            request = request.clone(remote=client, scheme=scheme)
        elif client != request.remote:
            request = request.clone(remote=client)
        if trusted:
            request[FORWARDED_BY] = peer
        return request

    def __call__(self) -> GuardedHandler:
        return self.aiohttp_handler()

    def aiohttp_handler(self) -> GuardedHandler:
        """A new aiohttp connection handler, with the limits in force now."""
        limits = self._settings()
        loop, options = private.server_options(self)
        kwargs = {**options, "keepalive_timeout": rules.KEEPALIVE_TIMEOUT,
                  **rules.parser_limits(limits)}
        return GuardedHandler(self, limits, loop=loop, **kwargs)

    def admit(self, conn: Guarded) -> None:
        self.cap.admit(conn)

    def forget(self, conn: Guarded) -> None:
        self.cap.forget(conn)


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` whose server is a ``GuardedServer``, or the ``server_class`` given
    (called as ``GuardedServer`` is, with the runner's settings)."""

    def __init__(self, app: web.Application, *, settings: SettingsFn,
                 server_class: Callable[..., web.Server] = GuardedServer, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._settings = settings
        self._server_class = server_class

    async def _make_server(self) -> web.Server:
        base = await private.make_base_server(self)
        loop, options = private.server_options(base)
        server: web.Server = self._server_class(
            base.request_handler, request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation, loop=loop,
            settings=self._settings, **options)
        return server
