"""Upstream HTTP/1.1 exchanges for the proxy: a lean keep-alive pool on asyncio protocols.

Why this module exists: on the proxy path, aiohttp's ``ClientSession`` cost more CPU per
request than everything else together (a ``ClientRequest``, a ``ClientResponse``, a yarl URL,
a header multidict, timer handles and several tasks' worth of bookkeeping for every call; see
docs/performance.md for the profile). Here a request is one bytes write on a pooled
connection, and the answer is parsed by llhttp (through ``httptools``, the parser uvicorn
uses) into a status, a header list and body chunks that are handed on as they arrive, with
no copy and no per-chunk task. Flow control holds both ways: the request body waits for the
upstream socket to drain, and a slow client pauses reading from the upstream.

Health probes use a pool of their own (orchd/health.py): one request, the body read and
dropped up to a limit (``UpstreamResponse.discard``), the connection kept for the next probe.

What it does not do: WebSocket upgrades keep using aiohttp's client; this module speaks plain
HTTP/1.1 (TLS included) request/response and nothing else.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Final, cast

import httptools
from yarl import URL

from orchd.errors import UpstreamBroke, UpstreamConnectError
from orchd.model import UpstreamTls
from orchd.tls import TlsError, upstream_context

__all__ = ("AddressRefused", "Body", "UpstreamBroke", "UpstreamConnectError", "UpstreamPool",
           "UpstreamResponse")

# What the pool hands over of a body: bytes, or a view into what the socket delivered.
Body = bytes | memoryview
# Pause reading from an upstream once this much of its body waits for a slow client.
_READ_HIGH_WATER: Final = 512 * 1024
_READ_LOW_WATER: Final = 128 * 1024
# An answer's status line and headers may not exceed this (Envoy's default is 60 KiB).
MAX_RESPONSE_HEAD: Final = 64 * 1024
# How often the deadlines of requests waiting for an answer's head are checked (seconds):
# a timeout is noticed at most this late.
DEADLINE_TICK: Final = 0.05


class AddressRefused(Exception):
    """Why ``server.allowed_upstreams`` refused the address a host led to: the cause
    (``__cause__``) of the ``UpstreamConnectError`` the pool raises then, for callers that
    show the rule apart from the connect error (the health checker)."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason


def _connect_error(code: int | None, message: str,
                   cause: BaseException) -> UpstreamConnectError:
    """An ``UpstreamConnectError`` with its ``__cause__`` set by hand: in the module compiled
    by mypyc, ``raise ... from cause`` does not set it (the callers' ``from`` is for Python)."""
    error = UpstreamConnectError(code, message)
    error.__cause__ = cause
    return error


class _Origin:
    """Where connections go, and the idle ones waiting to be reused (newest last)."""

    __slots__ = ("host", "host_header", "idle", "port", "server_hostname", "ssl")

    def __init__(self, scheme: str, host: str, port: int,
                 ssl_context: ssl.SSLContext | None, server_name: str | None = None) -> None:
        self.host = host
        self.port = port
        tls = scheme == "https"
        self.ssl = ssl_context if tls else None
        self.server_hostname = (server_name or host) if tls else None
        default = 443 if tls else 80
        name = f"[{host}]" if ":" in host else host
        self.host_header = name if port == default else f"{name}:{port}"
        self.idle: list[_Connection] = []


class UpstreamResponse:
    """The status line and headers of an upstream answer; the body follows by ``chunks()``.

    ``release()`` must be called once the caller is done (the proxy does it in ``finally``):
    a connection whose answer was read to the end goes back to the pool, any other is closed.
    """

    __slots__ = ("_conn", "_pool", "head_only", "raw_headers", "reason", "status")

    def __init__(self, conn: _Connection, pool: UpstreamPool, status: int, reason: str,
                 raw_headers: list[tuple[bytes, bytes]], head_only: bool) -> None:
        self._conn: _Connection | None = conn
        self._pool = pool
        self.status = status
        self.reason = reason
        self.raw_headers = raw_headers  # as received: the proxy passes them on undecoded
        self.head_only = head_only

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                for k, v in self.raw_headers]

    @property
    def complete(self) -> bool:
        """The whole body has arrived already (typical of small answers)."""
        conn = self._conn
        return conn is not None and conn.eof and conn.exc is None

    def error(self) -> BaseException | None:
        """What broke the answer already (a malformed body, a lost connection), if anything."""
        conn = self._conn
        return conn.failure() if conn is not None else None

    def take_buffered(self) -> Body:
        """The body received so far, removed from the buffer (one join, no copy for one chunk)."""
        conn = self._conn
        if conn is None or not conn.chunks:
            return b""
        chunks = conn.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        conn.buffered = 0
        conn.maybe_resume()
        return data

    def chunks(self, read_timeout: float) -> AsyncIterator[Body]:
        """Body chunks as they arrive; raises ``UpstreamBroke`` or ``TimeoutError``."""
        return _Chunks(self, read_timeout)

    async def body(self, read_timeout: float) -> Body:
        """The whole body, once it has arrived; raises as ``chunks()`` does."""
        conn = self._conn
        if conn is None or self.head_only:
            return b""
        while not conn.eof:
            if conn.exc is not None:
                raise conn.exc
            await conn.wait_body(read_timeout)
        if conn.exc is not None:
            raise conn.exc
        return self.take_buffered()

    async def discard(self, limit: int, deadline: float) -> bool:
        """Read the body and drop it (a health probe's): True when it ended within ``limit``
        bytes, False when more came (the connection is then not reused). ``deadline`` is in
        loop time; raises ``UpstreamBroke`` or ``TimeoutError`` as ``chunks()`` does."""
        conn = self._conn
        if conn is None or self.head_only:
            return True
        seen = 0
        while True:
            if conn.chunks:
                seen += conn.buffered
                conn.chunks.clear()
                conn.buffered = 0
                if seen > limit:
                    return False
                conn.maybe_resume()
            if conn.exc is not None:
                raise conn.exc
            if conn.eof:
                return True
            left = deadline - conn._loop.time()
            if left <= 0:
                raise TimeoutError("the upstream's body did not end in time")
            await conn.wait_body(left)

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.reusable():
            self._pool.put_back(conn)
        else:
            conn.close()


class _Chunks:
    """``UpstreamResponse.chunks()``: an iterator class rather than an async generator, so
    that the module compiles with mypyc (see docs/performance.md)."""

    __slots__ = ("_response", "_timeout")

    def __init__(self, response: UpstreamResponse, read_timeout: float) -> None:
        self._response = response
        self._timeout = read_timeout

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> Body:
        response = self._response
        conn = response._conn
        if conn is None or response.head_only:
            raise StopAsyncIteration
        while True:
            if conn.chunks:
                return response.take_buffered()
            if conn.exc is not None:
                raise conn.exc
            if conn.eof:
                raise StopAsyncIteration
            await conn.wait_body(self._timeout)


class _Connection(asyncio.Protocol):
    """One upstream connection; one exchange at a time."""

    __slots__ = (
        "_drain",
        "_head_waiter",
        "_left",
        "_length",
        "_loop",
        "_lost",
        "_parser",
        "_paused_reading",
        "_received",
        "_stale_parser",
        "_waiter",
        "body_sent",
        "buffered",
        "chunks",
        "eof",
        "exc",
        "framed",
        "got_bytes",
        "head_bytes",
        "head_only",
        "header_list",
        "idle_since",
        "keep_alive",
        "origin",
        "reason",
        "status",
        "transport",
    )

    def __init__(self, origin: _Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        # Kept, not looked up: asyncio.get_running_loop() costs a getpid() system call.
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._lost = False
        self._drain: asyncio.Future[None] | None = None
        self._head_waiter: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._stale_parser = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        if self._stale_parser:
            self._parser = httptools.HttpResponseParser(self)
            self._stale_parser = False
        self._length = -1  # the answer's Content-Length, if it has one
        self._received = 0  # body bytes llhttp has handed over
        self._left = 0  # body bytes still to come past llhttp
        self.reason = b""
        self.header_list: list[tuple[bytes, bytes]] = []  # as received
        self.status = 0
        self.chunks: collections.deque[Body] = collections.deque()
        self.buffered = 0
        self.eof = False
        self.exc: BaseException | None = None
        self.keep_alive = False
        self.got_bytes = False
        self.head_bytes = 0  # of the answer's status line and headers, while they arrive
        self.body_sent = False
        self.head_only = False
        self.framed = False  # Content-Length or chunked: the body does not run until close

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        left = self._left
        if not left and self.status == 0 and self.exc is None:
            end = data.find(b"\r\n\r\n")
            if 0 <= end < len(data) - 4:
                # A head and some body in one read: parse the head alone; if the body has
                # a Content-Length, the rest is taken as a view, not copied by llhttp.
                view = memoryview(data)
                # (Whether the head broke is asked of _feed: ``self.exc`` is narrowed to None
                # by the test above, and compiled code would trust that after the call.)
                if self._feed(view[:end + 4]):
                    return
                if self._left:
                    self._body_bytes(view[end + 4:])
                elif not self.eof:
                    self._feed(view[end + 4:])
                else:
                    self.keep_alive = False  # bytes after a whole answer: not reusable
                return
        if left:
            self._body_bytes(data)
            return
        self._feed(data)

    def _body_bytes(self, data: Body) -> None:
        """The rest of a Content-Length body: taken as it came, past llhttp (no copy)."""
        left = self._left
        if len(data) > left:  # more than the answer announced: not reusable
            data = data[:left]
            self.keep_alive = False
        self._left = left - len(data)
        self._take(data)
        if not self._left:
            self.eof = True
            self._wake()

    def _feed(self, data: Body) -> bool:
        """Parse ``data``; True when the answer is broken (``self.exc`` is set)."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamBroke("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBroke(f"malformed response: {exc}"))
        if self.status == 0 and self.exc is None:
            # httptools buffers a header line whole, however long: bound what it holds.
            self.head_bytes += len(data)
            if self.head_bytes > MAX_RESPONSE_HEAD:
                self._fail(UpstreamBroke(f"response header section larger than "
                                         f"{MAX_RESPONSE_HEAD} bytes"))
        elif (self._length >= 0 and not self.eof and self.exc is None
                and self._received < self._length):
            # The head has been parsed and the body announced its length: what remains of
            # it skips the parser, which is replaced for the connection's next answer.
            self._left = self._length - self._received
            self._stale_parser = True
        return self.failure() is not None

    def failure(self) -> BaseException | None:
        """What broke the exchange, if anything. A call, not an attribute read, wherever a
        test of ``self.exc`` came before a call that may set it (see ``data_received``)."""
        return self.exc

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.keep_alive = False
        if self in self.origin.idle:
            self.origin.idle.remove(self)
        if self.status and not self.framed and not self.eof and exc is None:
            self.eof = True  # a body without Content-Length or chunking ends at close
            self._wake()
        if not self.eof or self.head_pending():
            why = f"connection lost: {exc}" if exc else "the upstream closed the connection"
            broke = UpstreamBroke(why)
            broke.__cause__ = exc  # a TLS alert, a reset: for callers that tell them apart
            self._fail(broke)
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(UpstreamBroke("the upstream closed the connection"))

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status:
            # A trailer field (llhttp reports those of a chunked answer as headers too): never
            # merged into the header section (RFC 9110 section 6.5.1), so dropped.
            return
        if len(name) in (14, 17):
            low = name.lower()
            if low == b"content-length":
                self.framed = True
                self._length = int(value) if value.isdigit() else -1
            elif low == b"transfer-encoding":
                self.framed = True
        self.header_list.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): wait for the final one.
            self.reason = b""
            self.header_list = []
            self.framed = False
            return
        if status in (204, 304):
            self.framed = True
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.head_only:
            # No body follows an answer to HEAD, whatever Content-Length says; llhttp cannot
            # be told so, so this connection is not reused.
            self.keep_alive = False
            self.eof = True

    def on_body(self, body: bytes) -> None:
        if self.head_only or not body:
            return
        self._received += len(body)
        self._take(body)

    def _take(self, body: Body) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _READ_HIGH_WATER and not self._paused_reading:
            self._paused_reading = True
            if self.transport is not None:
                self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # the end of an interim answer
        self.eof = True
        self._wake()

    # -- helpers

    def head_pending(self) -> bool:
        waiter = self._head_waiter
        return waiter is not None and not waiter.done()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.exc is None:
            self.exc = exc
        self.keep_alive = False
        head = self._head_waiter
        if head is not None and not head.done():
            head.set_exception(exc)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def expire(self) -> None:
        """The request's deadline passed before the answer's head arrived."""
        self._fail(TimeoutError("the upstream did not answer in time"))

    def maybe_resume(self) -> None:
        if self._paused_reading and self.buffered < _READ_LOW_WATER:
            self._paused_reading = False
            if self.transport is not None and not self._lost:
                self.transport.resume_reading()

    async def wait_body(self, timeout: float) -> None:
        waiter = self._waiter = self._loop.create_future()
        self.maybe_resume()
        timer = self._loop.call_later(timeout, _time_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()

    async def drain(self) -> None:
        if self._lost:
            raise UpstreamBroke("the upstream closed the connection")
        drain = self._drain
        if drain is not None:
            await drain

    def write(self, parts: list[bytes]) -> None:
        """``parts`` in one system call, when the socket takes them at once."""
        if self._lost or self.transport is None:
            raise UpstreamBroke("the upstream closed the connection")
        if len(parts) == 1:
            self.transport.write(parts[0])
        else:
            self.transport.writelines(parts)

    def reusable(self) -> bool:
        return (self.eof and self.keep_alive and self.body_sent and self.exc is None
                and not self._lost and not self.chunks)

    def usable(self) -> bool:
        return not self._lost and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()

    def start(self, head_only: bool) -> asyncio.Future[None]:
        self._reset()
        self.head_only = head_only
        waiter = self._head_waiter = self._loop.create_future()
        return waiter


def _with_body(head: bytes, body: bytes, chunked: bool) -> list[bytes]:
    """A request's head and its whole body (framed as one chunk and the end, if chunked):
    one write's parts, joined when the body is small (a copy costs less than a vectored
    write's bookkeeping), else side by side (the body is not copied)."""
    if not chunked:
        parts = [head, body]
    elif body:
        parts = [head, b"%x\r\n" % len(body), body, b"\r\n0\r\n\r\n"]
    else:
        parts = [head, b"0\r\n\r\n"]
    return [b"".join(parts)] if len(body) < 4096 else parts


async def _first_done(loop: asyncio.AbstractEventLoop, first: asyncio.Future[None],
                      second: asyncio.Future[None]) -> None:
    """Wait until ``first`` or ``second`` is done: ``asyncio.wait`` for two, without its
    loop lookup (a getpid() system call in Python 3.11) and its sets."""
    if first.done() or second.done():
        return
    waiter = loop.create_future()

    def wake(_: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    first.add_done_callback(wake)
    second.add_done_callback(wake)
    try:
        await waiter
    finally:
        first.remove_done_callback(wake)
        second.remove_done_callback(wake)


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("the upstream sent nothing in time"))


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections per upstream origin, newest reused first.

    No limit on open connections (as before, with aiohttp's ``limit=0``); at most
    ``max_idle_per_origin`` idle ones are kept, each for at most ``keepalive_timeout``.
    """

    def __init__(self, keepalive_timeout: float = 30.0, max_idle_per_origin: int = 512,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.keepalive_timeout = keepalive_timeout
        self.max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._origins: dict[tuple[str, str, int, UpstreamTls | None], _Origin] = {}
        self._by_url: dict[str, _Origin] = {}
        self._by_url_tls: dict[tuple[str, UpstreamTls], _Origin] = {}  # endpoints with tls
        self._last_sweep = time.monotonic()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the first request's
        self.opened = 0  # connections opened so far (tests and the benchmark read it)
        # Asked with the address each new connection reached: a reason refuses it.
        self.check_address: Callable[[str, int], str | None] | None = None
        # Exchanges waiting for an answer's head, and their deadlines: one timer checks them
        # all every DEADLINE_TICK (a timer handle per request cost ~3% of its CPU time).
        self._deadlines: dict[_Connection, float] = {}
        self._watchdog: asyncio.TimerHandle | None = None

    def origin_for(self, url: str, tls: UpstreamTls | None = None) -> _Origin:
        """The origin of an upstream base URL (``http://host:port/base``) reached with an
        endpoint's ``tls`` settings, cached by both."""
        if tls is not None:
            return self._origin_for_tls(url, tls)
        origin = self._by_url.get(url)
        if origin is None:
            if len(self._by_url) > 4096:  # targets come and go with registrations
                self._by_url.clear()
            parsed = URL(url)
            scheme = parsed.scheme
            port = parsed.port or (443 if scheme == "https" else 80)
            origin = self._by_url[url] = self.origin(scheme, parsed.raw_host or "", port)
        return origin

    def _origin_for_tls(self, url: str, tls: UpstreamTls) -> _Origin:
        key = (url, tls)
        origin = self._by_url_tls.get(key)
        if origin is None:
            if len(self._by_url_tls) > 4096:
                self._by_url_tls.clear()
            parsed = URL(url)
            scheme = parsed.scheme
            port = parsed.port or (443 if scheme == "https" else 80)
            origin = self._by_url_tls[key] = self.origin(scheme, parsed.raw_host or "", port,
                                                         tls)
        return origin

    def origin(self, scheme: str, host: str, port: int,
               tls: UpstreamTls | None = None) -> _Origin:
        """Origins are told apart by their TLS settings too: a connection made with one
        endpoint's client certificate or trust anchors is never reused for another's."""
        key = (scheme, host, port, tls)
        origin = self._origins.get(key)
        if origin is None:
            if tls is not None and scheme == "https":
                try:
                    context = upstream_context(tls)
                except TlsError as exc:  # a file that loaded at registration is gone
                    raise _connect_error(errno.EIO, str(exc), exc) from exc
                origin = _Origin(scheme, host, port, context, tls.server_name)
            else:
                if scheme == "https" and self._ssl is None:
                    self._ssl = upstream_context(None)
                origin = _Origin(scheme, host, port, self._ssl)
            self._origins[key] = origin
        return origin

    async def request(self, origin: _Origin, method: str, target: str,
                      headers: list[tuple[str, str]],
                      body: AsyncIterator[bytes] | bytes | None,
                      content_length: int | None, connect_timeout: float,
                      timeout: float | None = None) -> UpstreamResponse:
        """Send one request and wait for the answer's head.

        ``target`` is the encoded path and query; ``headers`` exclude Host, Content-Length
        and Transfer-Encoding (set here). A body with no known length is sent chunked. A
        body given as bytes (it had all arrived) leaves with the head in one write; an
        iterator's is sent as it comes, by a task of its own.
        ``timeout`` bounds everything up to the answer's head (connect, the request body,
        the upstream's think time); it is noticed within ``DEADLINE_TICK`` of passing.
        Raises ``UpstreamConnectError``, ``UpstreamBroke`` or ``TimeoutError``.
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers)
        chunked = False
        if body is not None:
            if content_length is None:
                chunked = True
                lines.append("Transfer-Encoding: chunked\r\n")
            else:
                lines.append(f"Content-Length: {content_length}\r\n")
        elif method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8", "surrogateescape")
        head_only = method == "HEAD"
        stream: AsyncIterator[bytes] | None = None
        out = [head]
        if isinstance(body, bytes):
            out = _with_body(head, body, chunked)
        else:
            stream = body

        # A pooled connection may have been closed by the upstream a moment ago; when
        # nothing of the request could have been consumed yet, try once more on a new one.
        for reuse in (True, False):
            conn = self._idle(origin) if reuse else None
            if conn is None:
                if deadline is not None:
                    connect_timeout = min(connect_timeout, deadline - loop.time())
                conn = await self._connect(origin, connect_timeout)
                reuse = False
            try:
                return await self._exchange(conn, out, stream, chunked, head_only, deadline)
            except UpstreamBroke:
                conn.close()
                if not reuse or conn.got_bytes or body is not None:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, conn: _Connection, out: list[bytes],
                        body: AsyncIterator[bytes] | None, chunked: bool,
                        head_only: bool, deadline: float | None) -> UpstreamResponse:
        """Send ``out`` (the head, and a whole body), then the rest of the body from
        ``body`` if any, and wait for the answer's head."""
        head_waiter = conn.start(head_only)
        sender: asyncio.Task[None] | None = None
        if deadline is not None:
            self._arm(conn, deadline)
        try:
            conn.write(out)
            if body is None:
                conn.body_sent = True
            else:
                # (The loop's own create_task: asyncio's looks the loop up, a getpid() call.)
                sender = conn._loop.create_task(self._send_body(conn, body, chunked))
                # The upstream may answer before the body is sent (an early 4xx): the head
                # arrives first either way, and a body still being sent is then abandoned.
                await _first_done(conn._loop, head_waiter, sender)
                if sender.done():
                    sender.result()  # the body's own errors (BodyTooLarge, broken pipe)
            await head_waiter
        except BaseException:
            if sender is not None and not sender.done():
                sender.cancel()
            conn.close()
            raise
        finally:
            if deadline is not None:
                self._deadlines.pop(conn, None)
        if sender is not None and not sender.done():
            sender.cancel()
            conn.keep_alive = False
        return UpstreamResponse(conn, self, conn.status,
                                conn.reason.decode("latin-1"), conn.header_list, head_only)

    def _arm(self, conn: _Connection, deadline: float) -> None:
        self._deadlines[conn] = deadline
        if self._watchdog is None:
            self._watchdog = conn._loop.call_later(DEADLINE_TICK, self._check_deadlines)

    async def _send_body(self, conn: _Connection, body: AsyncIterator[bytes],
                         chunked: bool) -> None:
        """Send the request body as the client delivers it. The upstream's clock stops while
        this waits for the client: a slow client is not the upstream's slowness (it gets 408
        from ``server.body_timeout`` instead), so only writing to the upstream counts."""
        deadlines, loop = self._deadlines, conn._loop
        chunks = body.__aiter__()
        while True:
            deadline = deadlines.pop(conn, None)
            left = deadline - loop.time() if deadline is not None else 0.0
            try:
                chunk: bytes | None = await chunks.__anext__()
            except StopAsyncIteration:
                chunk = None
            if deadline is not None and conn.head_pending():
                self._arm(conn, loop.time() + left)
            if chunk is None:
                break
            if not chunk:
                continue
            conn.write([b"%x\r\n" % len(chunk), chunk, b"\r\n"] if chunked else [chunk])
            await conn.drain()
        if chunked:
            conn.write([b"0\r\n\r\n"])
        conn.body_sent = True

    def _check_deadlines(self) -> None:
        self._watchdog = None
        deadlines, loop = self._deadlines, self._loop
        if not deadlines or loop is None:
            return
        now = loop.time()
        for conn in [c for c, deadline in deadlines.items() if deadline <= now]:
            del deadlines[conn]
            conn.expire()
        if deadlines:
            self._watchdog = loop.call_later(DEADLINE_TICK, self._check_deadlines)

    def _idle(self, origin: _Origin) -> _Connection | None:
        idle = origin.idle
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable() and now - conn.idle_since < self.keepalive_timeout:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: _Origin, timeout: float) -> _Connection:
        if self._closed:
            raise UpstreamConnectError("the upstream pool is closed")
        if timeout <= 0:
            raise TimeoutError("no time left to connect")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, conn = await loop.create_connection(
                    lambda: _Connection(origin, loop), origin.host, origin.port, ssl=origin.ssl,
                    server_hostname=origin.server_hostname)
        except OSError as exc:
            if isinstance(exc, UpstreamConnectError):
                raise
            raise _connect_error(exc.errno, exc.strerror or str(exc), exc) from exc
        self.opened += 1
        peer = transport.get_extra_info("peername") if self.check_address else None
        why = (self.check_address(str(peer[0]), int(peer[1]))
               if self.check_address and peer else None)
        if why is not None:
            conn.close()
            raise _connect_error(errno.EACCES, f"{origin.host} resolved to {why}",
                                 AddressRefused(origin.host, why))
        return conn

    def put_back(self, conn: _Connection) -> None:
        origin = conn.origin
        now = time.monotonic()
        if self._closed or len(origin.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = now
        origin.idle.append(conn)
        if now - self._last_sweep > self.keepalive_timeout:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        for origin in self._origins.values():
            stale = [c for c in origin.idle if now - c.idle_since >= self.keepalive_timeout]
            for conn in stale:
                origin.idle.remove(conn)
                conn.close()

    def idle_count(self) -> int:
        return sum(len(o.idle) for o in self._origins.values())

    async def close(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for origin in self._origins.values():
            idle, origin.idle = origin.idle, []
            for conn in idle:
                conn.close()
        await asyncio.sleep(0)  # let the transports run their close callbacks

