"""The public port's own HTTP/1.1 listener: proxied requests are served here, below aiohttp.

Why this module exists: aiohttp's web server spends about 100 µs of CPU per request before
any gateway work (its request object, URL parsing, router, middlewares, ``StreamResponse``),
more than half of what a Go gateway spends on a whole proxied exchange (see
docs/performance.md). A request for ``/orchestrator/`` needs none of that. This protocol finds
the end of each request head itself, parses it with llhttp (``httptools``), hands it to
``Proxy.serve`` as a small ``FrontRequest`` and writes the answer to the socket itself.

Two objects, as uvicorn's protocol and its ``RequestResponseCycle``: ``FrontConnection`` is
the connection (parser callbacks, the buffer, one worker task serving its requests in turn,
the hand-off to aiohttp, the deadlines, write flow control); ``FrontReply`` is the answer to
the request being served, the proxy's ``Reply``, with a named state (``NOT_STARTED`` →
``HEAD_SENT`` → ``FINISHED``, or ``ABORTED``) that the connection reads when the request is
done: keep the connection for the next request, or cut it. A connection has one
``FrontReply``, reset for each request.

Every other request goes to aiohttp, together with its connection: at the first request this
listener does not serve (admin API, health, metrics, dashboard, docs, a WebSocket upgrade,
``Expect``, anything malformed or over a size limit), the transport is given to a
``GuardedHandler`` (``orchd.aiohttp_server``) and the bytes read so far are replayed to it, so
it answers exactly as it would have alone. The connection stays with aiohttp from then on.
Handing over only ever happens between requests, with the new request's first byte at the
start of what is replayed: heads are cut at their ``CRLF CRLF`` here, and bodies with a
``Content-Length`` are fed to llhttp to their exact end (chunked ones: ``orchd.http1``).

The edge rules of ``orchd.edge_rules`` hold on these connections too: the header and body
deadlines, the send timeout, the connection cap (one count for both kinds of connection), and
the URL and header sizes (a request over them goes to aiohttp, which refuses it with 414 or
431). Stop and restart treat them as aiohttp's: ``close()``, ``shutdown()``, and answers with
``Connection: close`` while the daemon drains. ``orchd.edge`` has the map of the whole edge.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import parse_qsl, unquote

import httptools
from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import MultiDict, MultiDictProxy

from orchd import aiohttp_edge as private
from orchd import edge_rules as rules
from orchd import proxy_protocol
from orchd.aiohttp_server import GuardedServer
from orchd.client_ip import FORWARDED_BY, Networks, address_in, client_from_forwarded, forwarded_for
from orchd.errors import ProblemError
from orchd.http1 import HEAD_END, HTTP1_LINE_ENDS, ChunkedEnd, answer_head, host_ok, split_unsafe
from orchd.log import escape_controls, server_logger
from orchd.model import ServerSettings
from orchd.problems import problem_response
from orchd.router import PREFIX

Relay = Callable[[asyncio.Transport, str, bool, bytes, bool], None]

if TYPE_CHECKING:
    from orchd.proxy import Headers, Proxy
    from orchd.state import GatewayState
    from orchd.traffic import RequestHook
    from orchd.upstream import Body

__all__ = ("ABORTED", "FINISHED", "HEAD_SENT", "NOT_STARTED", "FrontConnection", "FrontHeaders",
           "FrontReply", "FrontRequest", "FrontServer")

_PREFIX = PREFIX.encode()
_BODY_READ_LIMIT = 2**16  # a request body's buffer pauses the socket past twice this
_PIPELINE_LIMIT = 2**16  # bytes of following requests held while an answer is produced


class FrontHeaders:
    """A request's headers as the proxy reads them, the part of ``CIMultiDictProxy`` it uses:
    ``get`` by name in any case gives the first value, ``items()`` every header in the order
    received. Built from what the head's parse has already decoded and lower-cased."""

    def __init__(self, pairs: list[tuple[str, str]], first: dict[str, str]) -> None:
        self._pairs = pairs
        self._first = first  # lower-case name -> its first value

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._first.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._first[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._pairs)

    def items(self) -> list[tuple[str, str]]:
        return self._pairs


class FrontRequest(dict[str, Any]):
    """A request as ``Proxy.serve``, the access log and the metrics read it: the attributes
    of ``web.Request`` they use, and its item store (``request["endpoint"]``)."""

    __slots__ = ("body_exists", "content", "content_length", "headers", "keep_alive",
                 "method", "raw_path", "remote", "secure", "task", "transport", "version")

    def __init__(self, method: str, raw_path: str, version: str,
                 headers: FrontHeaders, remote: str,
                 transport: asyncio.Transport, keep_alive: bool, secure: bool = False) -> None:
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.headers = headers
        self.remote = remote
        self.transport = transport
        self.keep_alive = keep_alive
        self.secure = secure  # the connection came over TLS (server.tls)
        self.content_length: int | None = None
        self.body_exists = False
        self.content: StreamReader = EMPTY_PAYLOAD
        self.task: asyncio.Task[None] | None = None  # the one serving it

    @property
    def path(self) -> str:
        """The decoded path, without the query (logs and problem documents only)."""
        path = self.raw_path.partition("?")[0]
        return unquote(path) if "%" in path else path

    @property
    def query(self) -> MultiDictProxy[str]:
        return MultiDictProxy(MultiDict(
            parse_qsl(self.raw_path.partition("?")[2], keep_blank_values=True)))


# How a connection's first bytes are read (``FrontConnection._opening``).
_OPEN: Final = 0  # requests follow
_SNIFF: Final = 1  # a PROXY header here is refused: the peer may not send one
_PROXY_HEADER: Final = 2  # a PROXY header must come first (a trusted peer, proxy_protocol)

# The states of an answer (``FrontReply.state``).
NOT_STARTED: Final = 0  # nothing written: a problem document can still take its place
HEAD_SENT: Final = 1  # the head is out, the body not complete: cut short if it ends here
FINISHED: Final = 2  # all of it is out: the connection may serve the next request
ABORTED: Final = 3  # the connection was cut: nothing more goes out


class FrontReply:
    """The answer to the request a ``FrontConnection`` is serving: the proxy's ``Reply``
    (``orchd.proxy.Reply``), written straight to the socket. Its ``state`` says how far the
    answer got; ``status`` and ``sent_bytes`` are for the access log and the metrics;
    ``keep_alive`` is False once the answer said ``Connection: close`` or the connection was
    cut, and the connection ends after it.

    One per connection, reset for each request (``reset``): the requests of a connection are
    answered one after the other, and an object per request would be an allocation on the hot
    path. It reads its connection's state where the answer depends on it: whether the
    connection is lost or already closing, whether the request body is still arriving, and the
    connection's write flow control (``_write_paused``, ``_drain``)."""

    def __init__(self, conn: FrontConnection, gateway: GatewayState) -> None:
        self._conn = conn
        self._gateway = gateway  # its ``stopping``: answers say ``Connection: close``
        self.transport: asyncio.Transport | None = None  # the connection's, once made
        self.state = NOT_STARTED
        self.status = 0
        self.sent_bytes = 0  # of the body
        self.keep_alive = True
        self._chunked = False
        # Of the request being answered:
        self._version = "1.1"
        self._head_only = False  # a HEAD: the answer has no body
        self._client_keep = False  # the client would keep the connection

    def reset(self, request: FrontRequest) -> None:
        """Ready to answer ``request``."""
        self.state = NOT_STARTED
        self.status = self.sent_bytes = 0
        self.keep_alive = True
        self._version = request.version
        self._head_only = request.method == "HEAD"
        self._client_keep = request.keep_alive

    async def send_response(self, response: web.Response) -> None:
        """An answer built as an aiohttp response (a problem document)."""
        body = response.body
        headers = [(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                   for k, v in response.headers.items()]
        await self.whole(response.status, response.reason, headers,
                         body if isinstance(body, bytes) else b"")

    # The proxy's Reply (orchd.proxy.Reply).

    async def whole(self, status: int, reason: str, headers: Headers, body: Body, *,
                    close: bool = False) -> None:
        transport = self._writable()
        head = self._head(status, reason, headers, len(body), close)
        if body and not self._head_only and status not in (204, 304):
            if len(body) < 4096:
                transport.write(head + body)
            else:  # one vectored write, no copy of the body
                transport.writelines((head, body))
            self.sent_bytes = len(body)
        else:
            transport.write(head)
        self.state = FINISHED
        if self._conn._write_paused:
            await self._drained()

    async def start(self, status: int, reason: str, headers: Headers, *,
                    close: bool = False) -> None:
        self._writable().write(self._head(status, reason, headers, None, close))

    async def write(self, chunk: Body) -> None:
        transport = self._writable()
        if not chunk:
            return
        if self._chunked:
            transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            transport.write(chunk)
        self.sent_bytes += len(chunk)
        if self._conn._write_paused:
            await self._drained()

    async def finish(self) -> None:
        if self._chunked:
            self._writable().write(b"0\r\n\r\n")
        self.state = FINISHED
        if self._conn._write_paused:
            await self._drained()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            self.state = ABORTED
            self.keep_alive = False
            transport.abort()

    def _head(self, status: int, reason: str, headers: Headers, length: int | None,
              close: bool) -> bytes:
        """The answer's head (``orchd.http1.answer_head``); the answer's state follows it:
        chunked or not, the connection kept open or not."""
        conn = self._conn
        self.state = HEAD_SENT
        may_keep = (self._client_keep and not close and not conn._ending and not conn._in_body
                    and not self._gateway.stopping)
        head, chunked, keep = answer_head(self._version, self._head_only, status, reason,
                                          headers, length, may_keep)
        if not head:  # a CR, LF or NUL in a header or the reason: never written
            safe, dropped = split_unsafe(headers)
            for name in dropped:
                server_logger.warning("dropped the answer header %s: its name or value holds "
                                      "CR, LF or NUL", escape_controls(name.decode("latin-1")))
            head, chunked, keep = answer_head(self._version, self._head_only, status, "", safe,
                                              length, may_keep)
        self._chunked = chunked
        self.keep_alive = keep
        self.status = status
        return head

    def _writable(self) -> asyncio.Transport:
        transport = self.transport
        if transport is None or self._conn._lost or transport.is_closing():
            raise ConnectionResetError("the client went away")
        return transport

    async def _drained(self) -> None:
        conn = self._conn
        if conn._lost:
            raise ConnectionResetError("the client went away")
        drain = conn._drain
        if drain is None:
            drain = conn._drain = conn._loop.create_future()
        await drain


class FrontConnection(asyncio.Protocol):
    """One client connection on the public port (see the module's docstring); the answer to
    its current request is its ``reply``."""

    def __init__(self, server: FrontServer, limits: ServerSettings) -> None:
        self._server = server
        self.limits = limits  # in force when the connection opened
        self._loop = server.loop
        self.transport: asyncio.Transport | None = None
        self._remote = ""  # the peer: the socket's, or the PROXY header's
        self._proxied = False  # a PROXY header named the peer
        # server.trusted_proxies when the peer is one of them (its X-Forwarded-For names the
        # client), else empty: the one check a request pays when nothing is configured.
        self._trusted: Networks = ()
        self._opening = _SNIFF
        self._secure = False
        # Relayed by a worker process (``orchd.workers``): ``_secure`` is what the worker
        # says, and its client comes by ``told``.
        self._relayed = False
        self._socket_peer = ""  # a relayed connection's: the client socket's peer address
        # The client named before the connection started: by a trusted proxy's PROXY header
        # read before TLS (orchd.proxy_accept), or by the worker that relays it (None: the
        # peer's own connection).
        self._told = False
        self._told_client: str | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._buf = bytearray()  # received bytes not given to the parser yet
        # What the parser callbacks collect for the head being parsed.
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._good_host = ""  # the last Host value found well-formed on this connection
        self._complete = False  # the parser reached the end of the current message
        self._head_info: tuple[bytes, str, bool] = (b"", "", False)  # method, version, keep
        self._head = b""  # the head being parsed
        self._feeding_head = False
        self._request: FrontRequest | None = None  # the request being answered
        # One task serves the connection's requests one after the other (``_work``): a task
        # per request cost ~3% of a request's CPU time (creation, registration, teardown).
        self._worker: asyncio.Task[None] | None = None
        self._idle: asyncio.Future[None] | None = None  # the worker waits for a request
        self._in_body = False  # the current request's body is still arriving
        self._body_left = -1  # its Content-Length still to come; -1: chunked
        self._body_mark = 0
        self._body_error = ""
        self._chunks = ChunkedEnd()
        self._served = 0
        self._ending = False  # end the connection after the current answer
        self._handed = False
        self._lost = False
        self.reply = FrontReply(self, server.state)  # the answer to the current request
        # Flow control: the body reader's and the client's socket (the reply waits on _drain).
        self._reading_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        # One timer watches the header deadline and the keep-alive idle time; it is armed
        # once and re-armed when it fires, not per request (``_tick``).
        self._clock: asyncio.TimerHandle | None = None
        self._since = 0.0  # when the current wait began: idle since, or head since
        self._in_head = False  # a request head has begun to arrive
        self._body_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (TCP_NODELAY is set already: uvloop's and asyncio's TCP transports set it.)
        self.transport = self.reply.transport = tr = cast(asyncio.Transport, transport)
        peer = tr.get_extra_info("peername")
        self._remote = remote = str(peer[0]) if peer else ""
        limits = self.limits
        trusted = limits.trusted_proxies
        if self._told:  # the client is known already: requests follow
            self._opening = _OPEN
            if self._told_client is not None:
                self._remote = remote = self._told_client
                self._proxied = True
            self._trusted = trusted if address_in(remote, trusted) else ()
        elif trusted and address_in(remote, trusted):
            if limits.proxy_protocol:
                self._opening = _PROXY_HEADER
            else:
                self._opening = _OPEN
                self._trusted = trusted
        if not self._relayed:
            self._secure = tr.get_extra_info("sslcontext") is not None  # once per connection
        self._server.track(self, tr)
        self._since = self._loop.time()
        self._clock = self._loop.call_later(self.limits.header_timeout, self._tick)
        self._server.cap.admit(self)

    def relayed(self, secure: bool, socket_peer: str) -> None:
        """Before ``connection_made``: a worker relays this connection (see ``_relayed``);
        ``socket_peer`` is what admin trust judges (never a PROXY header's client)."""
        self._relayed = True
        self._secure = secure
        self._socket_peer = socket_peer

    def told(self, client: str | None) -> None:
        """Before ``connection_made``: ``client`` was named already, by a trusted proxy's
        PROXY header read before the TLS handshake (``orchd.proxy_accept``) or by the worker
        relaying the connection (None: the peer's own)."""
        self._told = True
        self._told_client = client

    def data_received(self, data: bytes) -> None:
        if self._in_body:
            if not self._feed_body(data):
                self._body_broke()
            return
        if self._lost or (self._ending and self._request is None):
            return
        self._buf += data
        if self._opening and not self._opened():
            return
        if self._request is None:
            self._next()
        elif len(self._buf) > _PIPELINE_LIMIT:
            self.pause_reading()  # the next requests wait for the current answer

    def eof_received(self) -> bool:
        if self._in_body and self._request is not None:
            self._request.content.set_exception(
                ConnectionResetError("the client ended the connection mid-body"))
            self._in_body = False
        self._ending = True
        return self._request is not None  # keep the writing half for the answer

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self._server.release(self)
        self._cancel_timers()
        self._wake_worker()  # it ends once the current request, if any, is answered
        request = self._request
        if request is not None and self._in_body:
            request.content.set_exception(ConnectionResetError("the client went away"))
        self._in_body = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("the client went away"))

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._send_timer is None:
            self._send_timer = self._loop.call_later(self.limits.send_timeout,
                                                     self._send_expired)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- the body reader's flow control (aiohttp's StreamReader calls these)

    @property
    def connected(self) -> bool:
        return not self._lost

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            with contextlib.suppress(RuntimeError, NotImplementedError):
                self.transport.pause_reading()

    def resume_reading(self, resume_parser: bool = True) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            with contextlib.suppress(RuntimeError, NotImplementedError):
                self.transport.resume_reading()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if not self._feeding_head:
            # llhttp found a message's end before _ChunkedEnd did (they should agree): where
            # the next request starts is unknown, so it is not served; the connection ends
            # after the current answer (a pipelining client retries, RFC 9112 section 9.3.2).
            self._ending = True
            raise _Stop

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        # Read now: once the message is complete, llhttp's fields describe the next one.
        parser = self._parser
        # The version off the request line llhttp just accepted, when it is one of the two
        # served here: get_http_version formats a new string each time (~0.4 us).
        head = self._head
        end = head.find(b"\n")
        tail = head[end - 9:end] if end >= 9 else b""
        version = ("1.1" if tail == b"HTTP/1.1\r" else "1.0" if tail == b"HTTP/1.0\r"
                   else parser.get_http_version())
        self._head_info = (parser.get_method(), version, parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        request = self._request
        if request is not None:
            request.content.feed_data(body)

    def on_message_complete(self) -> None:
        self._complete = True
        if self._in_body:
            self._end_body()

    # -- requests in

    def _opened(self) -> bool:
        """Read what must come before the first request: True once requests follow; False
        while more bytes are needed, or when the connection was refused or closed.

        A trusted peer with ``server.proxy_protocol`` must open with a PROXY header; it names
        the peer from then on. Any other peer that opens with one is refused with 400."""
        buf = self._buf
        if self._opening == _SNIFF:
            kind = proxy_protocol.sniff(buf)
            if kind == proxy_protocol.UNDECIDED:
                return False
            self._opening = _OPEN
            if kind == proxy_protocol.NOT_PROXY:
                return True
            buf.clear()
            self.refuse(400, "a PROXY protocol header is accepted only from a peer in "
                        "server.trusted_proxies, with server.proxy_protocol on")
            return False
        try:
            header = proxy_protocol.parse(buf)
        except proxy_protocol.ProxyHeaderError as exc:
            server_logger.info("closing a connection from %s, a trusted proxy: %s",
                               self._remote, exc)
            self._opening = _OPEN
            buf.clear()
            self.force_close()
            return False
        if header is None:
            return False
        del buf[:header.length]
        self._opening = _OPEN
        if header.source is not None:
            self._remote = header.source
            self._proxied = True
        trusted = self.limits.trusted_proxies
        self._trusted = trusted if address_in(self._remote, trusted) else ()
        return True

    def _next(self) -> None:
        """Serve the next request whose head is in the buffer, or hand the connection over."""
        buf = self._buf
        while buf and buf[0] in (13, 10):  # stray line ends between requests are allowed
            del buf[:1]
        if not buf:
            return
        if not self._in_head:  # the header deadline runs from a request's first byte
            self._in_head = True
            self._since = self._loop.time()
        space = buf.find(b" ")
        if (space >= 0 and len(buf) > space + len(_PREFIX)
                and not buf.startswith(_PREFIX, space + 1)):
            self._hand_off()  # not a proxied request: aiohttp's
            return
        end = buf.find(HEAD_END)
        if end < 0:
            limits = self.limits
            line_end = buf.find(b"\n")
            if line_end >= 0 and not buf[:line_end].rstrip(b"\r").endswith(HTTP1_LINE_ENDS):
                self._hand_off()  # HTTP/0.9 or 2.0 (orchd.http1.request_refusal), or malformed
                return
            if ((line_end < 0  # a request line over the URL limit: 414
                 and rules.line_size_refusal(len(buf), limits) is not None)
                    or rules.head_cannot_fit(len(buf), limits)  # over the header limit: 431
                    or b"\n\n" in buf or b"\n\r\n" in buf):  # bare line feeds
                self._hand_off()  # aiohttp answers, as it would have alone
            return
        end += len(HEAD_END)
        request = self._parse_head(bytes(buf[:end]))
        if request is None:
            self._hand_off()
            return
        self._in_head = False
        self._request = request
        self.reply.reset(request)
        if self._complete:
            del buf[:end]
        else:
            # aiohttp's reader: its flow control calls pause_reading/resume_reading here.
            request.content = StreamReader(cast(Any, self), _BODY_READ_LIMIT, loop=self._loop)
            self._in_body = True
            self._body_mark = 0
            read = bytes(buf)
            buf.clear()
            if len(read) > end and not self._feed_body(read[end:]):
                # Malformed within what has arrived: aiohttp refuses it, as it would have.
                self._request = None
                self._in_body = False
                buf += read
                self._hand_off()
                return
            if self._in_body:
                self._body_timer = self._loop.call_later(self.limits.body_timeout,
                                                         self._body_check)
        worker = self._worker
        if worker is None:
            worker = self._worker = self._loop.create_task(self._work())
        else:
            self._wake_worker()  # idle; or finishing the previous request: it takes this next
        request.task = worker

    def _parse_head(self, head: bytes) -> FrontRequest | None:
        """The request of ``head`` (its target starts with the prefix) if this listener
        serves it; None to hand it to aiohttp."""
        self._url = b""
        self._raw_headers = []
        self._complete = False
        self._head_info = (b"", "", False)
        self._feeding_head = True
        self._head = head
        try:
            self._parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None  # an upgrade; or aiohttp's parser refuses it, with its own words
        finally:
            self._feeding_head = False
            self._head = b""
        method, version, keep_alive = self._head_info
        limits = self.limits
        raw = self._raw_headers
        if (version not in ("1.1", "1.0") or b"#" in self._url
                or not rules.served_head_fits(len(self._url), len(head), len(raw), limits)):
            return None  # aiohttp's: it answers these (orchd.edge_rules)
        pairs: list[tuple[str, str]] = []
        first: dict[str, str] = {}
        length = -1
        hosts = 0
        for name, value in raw:
            key = name.decode("utf-8", "surrogateescape")
            val = value.decode("utf-8", "surrogateescape")
            low = key.lower()
            if low in ("upgrade", "expect", "transfer-encoding", "host", "content-length"):
                if low == "content-length":
                    if length >= 0:
                        return None  # repeated: aiohttp refuses it
                    length = int(val)
                elif low == "host":
                    hosts += 1
                    if hosts > 1:
                        return None
                    if val != self._good_host:  # a connection keeps its Host: check it once
                        if not host_ok(val):
                            return None
                        self._good_host = val
                elif low != "transfer-encoding" or val.lower() != "chunked" or version != "1.1":
                    return None  # upgrades, Expect, other codings: aiohttp's part
            pairs.append((key, val))
            if low not in first:
                first[low] = val
        if hosts == 0 and version == "1.1":
            return None  # HTTP/1.1 without Host: aiohttp refuses it
        path = self._url.decode("utf-8", "surrogateescape")
        if "/." in path.partition("?")[0]:
            return None  # dot segments: aiohttp's URL handling decides what they mean
        tr = self.transport
        assert tr is not None
        remote = self._remote
        trusted = self._trusted
        if trusted:  # from a trusted proxy: X-Forwarded-For names the client
            remote = client_from_forwarded(forwarded_for(pairs), remote, trusted)
        request = FrontRequest(method.decode("ascii", "replace"), path, version,
                               FrontHeaders(pairs, first), remote, tr, keep_alive,
                               self._secure)
        if trusted:
            request[FORWARDED_BY] = self._remote
        if length >= 0:
            request.content_length = length
            request.body_exists = length > 0
            self._body_left = length
        else:
            request.body_exists = not self._complete
            self._body_left = -1
            self._chunks = ChunkedEnd()
        return request

    def _feed_body(self, data: bytes) -> bool:
        """Body bytes to the parser; bytes past the body's end wait in the buffer for the
        next request. False, with nothing kept, when the body is malformed."""
        left = self._body_left
        rest = b""
        if left < 0:  # chunked: where does it end?
            end = self._chunks.end(data)
            if end >= 0:
                data, rest = data[:end], data[end:]
        elif left < len(data):
            data, rest = data[:left], data[left:]
        if left >= 0:
            self._body_left = left - len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _Stop):
                self._body_error = f"the request body is malformed: {exc}"
                return False
        if rest:
            self._buf += rest
            if len(self._buf) > _PIPELINE_LIMIT:
                self.pause_reading()
        return True

    def _body_broke(self) -> None:
        request = self._request
        if request is not None and self._in_body:
            request.content.set_exception(ConnectionResetError(self._body_error))
            self._in_body = False
        self._ending = True
        self._stop_body_timer()

    def _end_body(self) -> None:
        self._in_body = False
        if self._request is not None:
            self._request.content.feed_eof()
        self._stop_body_timer()

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _hand_off(self) -> None:
        """Give the connection, and what it sent so far, to aiohttp."""
        transport = self.transport
        if transport is None or self._lost:
            return
        data = bytes(self._buf)
        self._buf.clear()
        self._cancel_timers()
        self._handed = True
        self._wake_worker()
        self._server.release(self)
        relay = self._server.relay
        if relay is not None:  # a worker: the supervisor serves what this listener does not
            relay(transport, self._remote, self._secure, data, self._reading_paused)
            return
        handler = self._server.aiohttp_handler()
        if self._proxied or self._trusted:  # its requests' client is not the socket's peer
            handler.set_peer(self._remote, self._trusted)
        if self._relayed:
            handler.relayed(self._secure, self._socket_peer)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if self._write_paused:
            handler.pause_writing()
        if data:
            handler.data_received(data)

    # -- answers out

    async def _work(self) -> None:
        """Serve requests as ``_next`` hands them over, until the connection is done."""
        try:
            while True:
                request = self._request
                if request is not None:
                    try:
                        await self._serve(request)
                    except Exception:  # _serve answers every error; this would be a bug's
                        server_logger.exception("serving a connection from %s failed",
                                                self._remote)
                        self._ending = True
                        self.reply.abort()
                        return
                    continue
                if self._lost or self._handed or self._ending:
                    return
                idle = self._idle = self._loop.create_future()
                await idle
        finally:
            self._worker = self._idle = None

    def _wake_worker(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)

    async def _serve(self, request: FrontRequest) -> None:
        server = self._server
        reply = self.reply
        answer: web.Response | None = None
        try:
            try:
                answer = await server.proxy.serve(request, reply)
            except ProblemError as exc:
                answer = problem_response(exc, request)
            except ConnectionResetError:
                pass  # the client went away: nothing to send it
            except Exception:
                server_logger.exception("%s %s failed", request.method,
                                        escape_controls(request.path))
                answer = problem_response(ProblemError(
                    500, "Internal Server Error",
                    "the gateway failed to handle this request; see its log"))
            if answer is not None:
                if reply.state != NOT_STARTED:
                    reply.abort()  # part of another answer is out: it cannot be completed
                else:
                    await reply.send_response(answer)
        except ConnectionResetError:
            pass
        except asyncio.CancelledError:
            reply.abort()  # cut (its endpoint was removed, or the stop's deadline passed)
            raise
        finally:
            hook = server.hook
            if hook is not None:
                started = request.get("started")
                hook.finished(request.remote, request.method, request.path, reply.status,
                              reply.sent_bytes,
                              time.perf_counter() - started if started else 0.0,
                              request.get("endpoint"), request.get("target"),
                              request.get("request_id") or "-", request.get("upstream_error"))
            self._answered()

    def _answered(self) -> None:
        reply = self.reply
        self._request = None
        self._served += 1
        self._since = self._loop.time()  # idle from now
        if not reply.keep_alive:  # it said Connection: close, or it was cut
            self._ending = True
        transport = self.transport
        if transport is None or self._lost:
            return
        state = reply.state
        if state == HEAD_SENT:
            # Cut short (the request was cancelled, or its answer broke off): the client
            # cannot tell where this answer would have ended, so the connection goes.
            reply.abort()
            return
        if state == ABORTED:
            return  # the transport is gone
        if self._in_body:  # the body was not read to its end: the next request cannot be found
            self._ending = True
        if self._ending:
            if self._in_body or self._buf:  # unread input
                self._in_body = False
                rules.close_lingering(transport, self._loop)
            else:
                transport.close()
            return
        if self._reading_paused:
            self.resume_reading()
        self._next()

    # -- deadlines

    def _tick(self) -> None:
        """The header deadline (408, or a silent close if nothing came) and the keep-alive
        idle time, checked when due; re-armed for whatever is due next."""
        self._clock = None
        if self._lost or self._handed:
            return
        limits = self.limits
        now = self._loop.time()
        if self._request is not None:
            wait = limits.header_timeout  # answering: the body and send deadlines watch it
        elif self._in_head or self._served == 0:
            wait = self._since + limits.header_timeout - now
            if wait <= 0:
                rules.header_deadline_passed(self, self._in_head, self._served == 0,
                                             self._remote)
                return
        else:
            wait = self._since + rules.KEEPALIVE_TIMEOUT - now
            if wait <= 0:
                self.force_close()
                return
        # Never later than one header timeout: a head may begin at any moment.
        self._clock = self._loop.call_later(min(wait, limits.header_timeout), self._tick)

    def _body_check(self) -> None:
        self._body_timer = None
        request = self._request
        if request is None or not self._in_body:
            return
        payload = request.content
        stall = rules.body_stall(payload, self._body_mark, self._reading_paused)
        if stall < 0:
            self._body_mark = payload.total_bytes
            self._body_timer = self._loop.call_later(self.limits.body_timeout,
                                                     self._body_check)
            return
        rules.cut_slow_body(payload, stall, self.limits.body_timeout, self._remote)
        self._in_body = False
        self._ending = True

    def _send_expired(self) -> None:
        self._send_timer = None
        rules.send_deadline_passed(self.transport, self.limits.send_timeout, self._remote)

    def _cancel_timers(self) -> None:
        for name in ("_clock", "_body_timer", "_send_timer"):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

    # -- what the server and the daemon's stop call (as on aiohttp's handlers)

    def evictable(self) -> bool:
        """See ``orchd.edge_rules.Guarded.evictable``."""
        return self._request is None

    def refuse(self, status: int, detail: str) -> None:
        """See ``orchd.edge_rules.Guarded.refuse``."""
        self._cancel_timers()
        self._ending = True
        rules.refuse(self.transport, self._loop, status, detail, self._remote)

    def force_close(self) -> None:
        self._ending = True
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        """Stop taking requests: now if idle, else after the current answer."""
        self._ending = True
        self._wake_worker()
        if self._request is None and self.transport is not None:
            self.transport.close()

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        self.close()
        task = self._worker  # it ends after the current answer, the connection closing
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.transport is not None and not self._handed:
            self.transport.close()


class _Stop(Exception):
    """Stops the parser (raised from a callback)."""


class FrontServer(GuardedServer):
    """The public port's connection factory: ``FrontConnection``s, which pass connections
    they do not serve on to aiohttp's ``GuardedHandler``s; both kinds counted together."""

    def __init__(self, *args: Any, proxy: Proxy, hook: RequestHook | None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proxy = proxy
        self.state = proxy.state
        self.loop = private.server_options(self)[0]
        self.hook = hook  # None: no access log and no metrics
        # In a worker process: takes each connection this listener does not serve
        # (transport, client address, TLS or not, the bytes read, reading paused) and relays
        # it to the supervisor (orchd.workers.relay).
        self.relay: Relay | None = None

    def __call__(self) -> FrontConnection:  # type: ignore[override]  # not a RequestHandler
        return FrontConnection(self, self._settings())

    def track(self, conn: FrontConnection, transport: asyncio.Transport) -> None:
        private.track_connection(self, conn, transport)  # for stop and restart

    def release(self, conn: FrontConnection) -> None:
        private.untrack_connection(self, conn)
        self.cap.forget(conn)
