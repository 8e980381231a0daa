"""The public port's edge driven in process: a fake transport, the real event loop, tiny
limits (as uvicorn's tests/protocols/test_http.py). ``FrontConnection`` (orchd/front.py)
serves proxied paths itself, answering through its ``FrontReply``, and hands every other
request, with its connection, to aiohttp's ``GuardedHandler`` (orchd/aiohttp_server.py); the
edge rules (orchd/edge_rules.py) are run against both listeners by sending the same bytes to a
proxied and an admin path."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web

import orchd.front
from orchd.errors import ProblemError
from orchd.front import ABORTED, FINISHED, HEAD_SENT, FrontConnection, FrontServer
from orchd.model import ServerSettings

# A compiled FrontServer takes only a real orchd.proxy.Proxy; these tests give it a fake one.
pytestmark = pytest.mark.skipif(not orchd.front.__file__.endswith(".py"),
                                reason="orchd.front is compiled: it refuses the fake proxy")

PROXIED = "/orchestrator/up/x"
ADMIN = "/registry/endpoints"
LIMITS = ServerSettings(header_timeout=0.2, body_timeout=0.2, send_timeout=0.2,
                        max_url_length=100, max_header_size=400, max_header_count=10,
                        max_connections=4)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = self.aborted = self.eof = False
        self.reading = True
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.out += chunk

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def answers(self) -> list[tuple[int, bytes]]:
        """Status and head of each whole answer head written so far."""
        return [(int(m[1]), m[0]) for m in _HEAD.finditer(bytes(self.out))]


_HEAD = re.compile(rb"HTTP/1\.[01] ([0-9]{3}) .*?\r\n\r\n", re.S)


class FakeState:
    stopping = False


class FakeProxy:
    """The proxy's side of the contract: answers with what it read of the request."""

    def __init__(self) -> None:
        self.state = FakeState()
        self.seen: list[tuple[str, str, bytes]] = []
        self.gate: asyncio.Event | None = None  # set: the answer waits for it
        self.answer: Callable[[Any], Awaitable[web.Response | None]] | None = None  # not whole
        self.states: list[int] = []  # the reply's state when each answer was written

    async def serve(self, request: Any, reply: Any) -> web.Response | None:
        body = await request.content.read() if request.body_exists else b""
        self.seen.append((request.method, request.raw_path, body))
        if self.gate is not None:
            await self.gate.wait()
        if self.answer is not None:
            return await self.answer(reply)
        await reply.whole(200, "", [(b"Content-Type", b"text/plain")], b"proxied:" + body)
        self.states.append(reply.state)
        return None


async def _aiohttp_app(request: web.BaseRequest) -> web.StreamResponse:
    try:
        body = await request.read()
    except ProblemError as exc:  # as orchd's middleware answers it
        return web.Response(status=exc.status, headers=dict(exc.headers),
                            text=json.dumps({"status": exc.status, "detail": exc.detail}))
    return web.Response(text=f"aiohttp:{request.path}:{len(body)}")


@pytest.fixture
async def server() -> FrontServer:
    loop = asyncio.get_running_loop()
    proxy: Any = FakeProxy()
    return FrontServer(_aiohttp_app, proxy=proxy, hook=None, loop=loop, settings=lambda: LIMITS)


def _connect(server: FrontServer) -> tuple[FrontConnection, FakeTransport]:
    conn = server()
    transport = FakeTransport()
    transport.set_protocol(conn)
    conn.connection_made(transport)
    return conn, transport


async def _until(check: Any, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: gw\r\n{extra}\r\n".encode()


# -- the own listener

async def test_pipelined_requests_are_answered_in_order(server: FrontServer) -> None:
    conn, tr = _connect(server)
    conn.data_received(_get(PROXIED + "?a") + _get(PROXIED + "?b") + _get(PROXIED + "?c"))
    await _until(lambda: len(tr.answers()) == 3)
    assert [s for s, _ in tr.answers()] == [200, 200, 200]
    seen = server.proxy.seen  # type: ignore[attr-defined]
    assert [p for _, p, _ in seen] == [PROXIED + "?a", PROXIED + "?b", PROXIED + "?c"]
    assert tr.protocol is conn and not tr.closed


async def test_a_head_in_pieces_is_served_once_whole(server: FrontServer) -> None:
    conn, tr = _connect(server)
    data = _get(PROXIED)
    for i in range(len(data)):
        conn.data_received(data[i:i + 1])
    await _until(lambda: len(tr.answers()) == 1)
    assert tr.answers()[0][0] == 200


async def test_bodies_with_length_and_chunked_end_exactly(server: FrontServer) -> None:
    conn, tr = _connect(server)
    conn.data_received(f"POST {PROXIED} HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\n"
                       "hello".encode()
                       + f"POST {PROXIED} HTTP/1.1\r\nHost: gw\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".encode()
                       + _get(PROXIED))
    await _until(lambda: len(tr.answers()) == 3)
    seen = server.proxy.seen  # type: ignore[attr-defined]
    assert [b for _, _, b in seen] == [b"hello", b"abc", b""]


async def test_a_request_it_does_not_serve_goes_to_aiohttp_with_its_bytes(
        server: FrontServer) -> None:
    conn, tr = _connect(server)
    conn.data_received(_get(PROXIED) + _get(ADMIN))
    await _until(lambda: len(tr.answers()) == 2)
    assert tr.protocol is not conn  # handed over
    assert b"aiohttp:" + ADMIN.encode() in tr.out
    assert len(server.cap.guarded) == 1  # counted once, as aiohttp's now


async def test_following_requests_pause_reading_until_the_answer(server: FrontServer) -> None:
    proxy: FakeProxy = server.proxy  # type: ignore[assignment]
    proxy.gate = asyncio.Event()
    conn, tr = _connect(server)
    conn.data_received(_get(PROXIED))
    await _until(lambda: len(proxy.seen) == 1)
    conn.data_received(_get(PROXIED, "X-Pad: " + "p" * 2**16 + "\r\n"))
    assert not tr.reading  # the pipelined bytes wait for the current answer
    proxy.gate.set()
    await _until(lambda: tr.reading)


async def test_one_reply_per_connection_reset_for_each_request(server: FrontServer) -> None:
    proxy: FakeProxy = server.proxy  # type: ignore[assignment]
    conn, tr = _connect(server)
    reply = conn.reply
    conn.data_received(_get(PROXIED) + f"HEAD {PROXIED} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    await _until(lambda: len(tr.answers()) == 2)
    assert conn.reply is reply and proxy.states == [FINISHED, FINISHED]
    assert (reply.status, reply.sent_bytes, reply.keep_alive) == (200, 0, True)  # the HEAD's
    assert not tr.out.endswith(b"proxied:")  # no body after a HEAD's head
    conn.data_received(_get(PROXIED, "Connection: close\r\n"))
    await _until(lambda: tr.closed)
    assert reply.state == FINISHED and not reply.keep_alive and not tr.aborted


async def test_a_streamed_answer_is_chunked_and_keeps_the_connection(
        server: FrontServer) -> None:
    proxy: FakeProxy = server.proxy  # type: ignore[assignment]

    async def stream(reply: Any) -> None:
        await reply.start(200, "", [])
        proxy.states.append(reply.state)
        await reply.write(b"abc")
        await reply.write(b"")
        await reply.finish()
        proxy.states.append(reply.state)

    proxy.answer = stream
    conn, tr = _connect(server)
    conn.data_received(_get(PROXIED) + _get(PROXIED))
    await _until(lambda: len(tr.answers()) == 2 and tr.out.endswith(b"0\r\n\r\n"))
    assert proxy.states == [HEAD_SENT, FINISHED] * 2
    assert bytes(tr.out).count(b"3\r\nabc\r\n0\r\n\r\n") == 2
    assert conn.reply.sent_bytes == 3 and not tr.closed


@pytest.mark.parametrize("after_start", ["nothing", "problem"])
async def test_an_answer_cut_short_cuts_the_connection(server: FrontServer,
                                                       after_start: str) -> None:
    proxy: FakeProxy = server.proxy  # type: ignore[assignment]

    async def cut(reply: Any) -> web.Response | None:
        await reply.start(200, "", [(b"Content-Length", b"10")])
        await reply.write(b"abc")
        if after_start == "problem":  # too late for it: the head is out
            raise ProblemError(502, "Bad Gateway", "the upstream broke")
        return None

    proxy.answer = cut
    conn, tr = _connect(server)
    conn.data_received(_get(PROXIED) + _get(PROXIED))
    await _until(lambda: tr.aborted)
    assert len(tr.answers()) == 1 and len(proxy.seen) == 1  # the next request is not served
    assert conn.reply.state == ABORTED and conn.reply.status == 200


async def test_a_problem_before_any_answer_is_written_whole(server: FrontServer) -> None:
    proxy: FakeProxy = server.proxy  # type: ignore[assignment]

    async def problem(reply: Any) -> web.Response | None:
        raise ProblemError(503, "Service Unavailable", "no target")

    proxy.answer = problem
    conn, tr = _connect(server)
    conn.data_received(_get(PROXIED) + _get(PROXIED))
    await _until(lambda: len(tr.answers()) == 2)
    assert [s for s, _ in tr.answers()] == [503, 503]
    assert conn.reply.state == FINISHED and conn.reply.status == 503 and not tr.closed


async def test_a_client_that_reads_nothing_is_cut_after_send_timeout(
        server: FrontServer) -> None:
    proxy: FakeProxy = server.proxy  # type: ignore[assignment]
    conn, tr = _connect(server)
    conn.pause_writing()  # the client's socket buffer is full
    conn.data_received(_get(PROXIED))
    await _until(lambda: tr.aborted, timeout=LIMITS.send_timeout * 5)
    assert len(proxy.seen) == 1


async def test_an_idle_keep_alive_connection_is_evictable(server: FrontServer) -> None:
    proxy: FakeProxy = server.proxy  # type: ignore[assignment]
    proxy.gate = asyncio.Event()
    busy, _ = _connect(server)
    busy.data_received(_get(PROXIED))
    await _until(lambda: len(proxy.seen) == 1)
    idle, idle_tr = _connect(server)
    assert not busy.evictable() and idle.evictable()
    for _ in range(LIMITS.max_connections - 1):
        _connect(server)
    assert idle_tr.closed  # the oldest idle one made room
    proxy.gate.set()


# -- the same edge rules on both listeners

@pytest.mark.parametrize("path", [PROXIED, ADMIN], ids=["own", "aiohttp"])
@pytest.mark.parametrize(("data", "status"), [
    ("GET {path}?{long} HTTP/1.1\r\nHost: gw\r\n\r\n", 414),
    ("GET {path}?{long}", 414),  # a request line over the limit, unfinished
    ("GET {path} HTTP/1.1\r\nHost: gw\r\nX-Big: {big}\r\n\r\n", 431),
    ("GET {path} HTTP/1.1\r\nHost: gw\r\n{many}\r\n", 431),
    ("GET {path} HTTP/2.0\r\nHost: gw\r\n\r\n", 505),
    ("GET {path}#frag HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
    ("GET {path} HTTP/1.1\r\nHost: a@b\r\n\r\n", 400),
    ("GET {path}\r\n\r\n", 505),
], ids=["url", "url_partial", "header_size", "header_count", "version", "fragment",
        "host", "http09"])
async def test_size_and_syntax_rules(server: FrontServer, path: str, data: str,
                                     status: int) -> None:
    conn, tr = _connect(server)
    conn.data_received(data.format(path=path, long="q" * 200, big="b" * 500,
                                   many="".join(f"X-{i}: 1\r\n" for i in range(20))).encode())
    await _until(lambda: bool(tr.answers()))
    assert tr.answers()[0][0] == status
    await _until(lambda: tr.closed or tr.eof)
    assert not server.proxy.seen  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", [PROXIED, ADMIN], ids=["own", "aiohttp"])
async def test_header_deadline_408(server: FrontServer, path: str) -> None:
    conn, tr = _connect(server)
    conn.data_received(f"GET {path} HTTP/1.1\r\nHost: gw\r\n".encode())
    await _until(lambda: bool(tr.answers()), timeout=LIMITS.header_timeout * 10)
    status, _ = tr.answers()[0]
    assert status == 408 and tr.eof


async def test_header_deadline_silent_close_when_nothing_came(server: FrontServer) -> None:
    _conn, tr = _connect(server)
    await _until(lambda: tr.closed, timeout=LIMITS.header_timeout * 10)
    assert not tr.out


@pytest.mark.parametrize("path", [PROXIED, ADMIN], ids=["own", "aiohttp"])
async def test_body_deadline_408(server: FrontServer, path: str) -> None:
    conn, tr = _connect(server)
    conn.data_received(f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\n\r\n"
                       "abc".encode())
    await _until(lambda: bool(tr.answers()), timeout=LIMITS.body_timeout * 10)
    status, head = tr.answers()[0]
    assert status == 408 and b"close" in head.lower()
    body = bytes(tr.out).partition(b"\r\n\r\n")[2]
    assert json.loads(body)["status"] == 408


@pytest.mark.parametrize("path", [PROXIED, ADMIN], ids=["own", "aiohttp"])
async def test_connection_cap_refuses_with_503_when_none_is_idle(
        server: FrontServer, path: str) -> None:
    server._settings = lambda: replace(LIMITS, max_connections=1)  # type: ignore[method-assign]
    proxy: FakeProxy = server.proxy  # type: ignore[assignment]
    proxy.gate = asyncio.Event()
    busy, _ = _connect(server)
    busy.data_received(_get(path, "Content-Length: 10\r\n"))  # a body still to come: busy
    await asyncio.sleep(0.01)
    _late, tr = _connect(server)
    assert tr.answers()[0][0] == 503
    proxy.gate.set()
