"""The lean upstream pool against real servers: aiohttp upstreams and raw sockets that
misbehave on purpose (close between requests, stop mid-body, answer 100 first)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop
from aiohttp import web

from orchd.upstream import AddressRefused, UpstreamBroke, UpstreamConnectError, UpstreamPool
from tests.support import Upstream, echo_app, free_port

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[int]:
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def body_of(resp, timeout: float = 5.0) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join([c async for c in resp.chunks(timeout)])


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool()
    yield p
    await p.close()


@pytest.fixture
async def echo() -> AsyncIterator[Upstream]:
    up = await Upstream(echo_app()).start()
    yield up
    await up.stop()


async def test_get_reuses_one_connection(pool: UpstreamPool, echo: Upstream) -> None:
    origin = pool.origin("http", "127.0.0.1", echo.port)
    for i in range(3):
        resp = await pool.request(origin, "GET", f"/a/b?x={i}&x=2", [("X-Test", "v")],
                                  None, None, 5.0)
        try:
            assert resp.status == 200
            assert resp.reason == "OK"
            doc = json.loads(await body_of(resp))
        finally:
            resp.release()
        assert doc["raw_path"] == f"/a/b?x={i}&x=2"
        assert doc["headers"]["X-Test"] == "v"
        assert doc["headers"]["Host"] == f"127.0.0.1:{echo.port}"
    assert pool.opened == 1
    assert pool.idle_count() == 1


async def _gen(parts: list[bytes]) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


@pytest.mark.parametrize("known_length", [True, False])
async def test_streamed_body_with_and_without_length(pool: UpstreamPool, echo: Upstream,
                                                     known_length: bool) -> None:
    parts = [b"a" * 70000, b"b" * 3, b"c" * 100000]
    total = sum(map(len, parts))
    origin = pool.origin("http", "127.0.0.1", echo.port)
    resp = await pool.request(origin, "POST", "/up", [], _gen(parts),
                              total if known_length else None, 5.0)
    try:
        doc = json.loads(await body_of(resp))
    finally:
        resp.release()
    assert doc["body_length"] == total
    assert doc["body"] == "".join(p.decode() for p in parts)
    if known_length:
        assert doc["headers"]["Content-Length"] == str(total)
    else:
        assert doc["headers"]["Transfer-Encoding"] == "chunked"


@pytest.mark.parametrize("size", [0, 100, 70000])
@pytest.mark.parametrize("known_length", [True, False])
async def test_whole_body_with_and_without_length(pool: UpstreamPool, echo: Upstream,
                                                  known_length: bool, size: int) -> None:
    """A body that had all arrived is given as bytes: it leaves with the head (joined when
    small, side by side when not), framed as an iterator's would be."""
    body = b"w" * size
    origin = pool.origin("http", "127.0.0.1", echo.port)
    resp = await pool.request(origin, "POST", "/up", [], body,
                              size if known_length else None, 5.0)
    try:
        doc = json.loads(await body_of(resp))
    finally:
        resp.release()
    assert doc["body"] == body.decode()
    if known_length:
        assert doc["headers"]["Content-Length"] == str(size)
    else:
        assert doc["headers"]["Transfer-Encoding"] == "chunked"


async def test_small_whole_body_arrives_with_the_head(pool: UpstreamPool) -> None:
    """One write: the upstream's first read has the whole request, chunk framing included."""
    first: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first.append(await reader.read(65536))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(answer) as port:
        origin = pool.origin("http", "127.0.0.1", port)
        resp = await pool.request(origin, "POST", "/", [], b"x" * 100, None, 5.0)
        resp.release()
    assert first[0].endswith(b"Transfer-Encoding: chunked\r\n\r\n64\r\n" + b"x" * 100
                             + b"\r\n0\r\n\r\n")


async def test_head_has_no_body_and_does_not_hang(pool: UpstreamPool, echo: Upstream) -> None:
    origin = pool.origin("http", "127.0.0.1", echo.port)
    resp = await pool.request(origin, "HEAD", "/h", [], None, None, 5.0)
    try:
        assert resp.status == 200
        assert any(k.lower() == "content-length" and int(v) > 0 for k, v in resp.headers)
        assert await asyncio.wait_for(body_of(resp), 5) == b""
    finally:
        resp.release()
    resp = await pool.request(origin, "GET", "/after-head", [], None, None, 5.0)
    try:
        assert json.loads(await body_of(resp))["path"] == "/after-head"
    finally:
        resp.release()


async def test_large_body_to_a_slow_reader_keeps_flowing(pool: UpstreamPool) -> None:
    blob = bytes(range(256)) * 16384  # 4 MiB

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=blob)

    app = web.Application()
    app.router.add_get("/big", big)
    up = await Upstream(app).start()
    try:
        origin = pool.origin("http", "127.0.0.1", up.port)
        resp = await pool.request(origin, "GET", "/big", [], None, None, 5.0)
        got = []
        try:
            async for chunk in resp.chunks(5.0):
                got.append(chunk)
                if len(got) % 8 == 0:
                    await asyncio.sleep(0.001)
        finally:
            resp.release()
        assert b"".join(got) == blob
    finally:
        await up.stop()


async def test_refused_connection_is_a_connect_error(pool: UpstreamPool) -> None:
    origin = pool.origin("http", "127.0.0.1", free_port())
    with pytest.raises(UpstreamConnectError) as info:
        await pool.request(origin, "GET", "/", [], None, None, 5.0)
    assert info.value.strerror


async def test_connection_closed_while_idle_is_replaced(pool: UpstreamPool) -> None:
    served = 0

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await read_head(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # keep-alive promised, then closed: the pooled connection is stale

    async with raw_server(once) as port:
        origin = pool.origin("http", "127.0.0.1", port)
        for _ in range(3):
            resp = await pool.request(origin, "GET", "/", [], None, None, 5.0)
            try:
                assert await body_of(resp) == b"ok"
            finally:
                resp.release()
            await asyncio.sleep(0.1)
    assert served == 3
    assert pool.opened == 3


async def test_body_until_close(pool: UpstreamPool) -> None:
    async def legacy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil ")
        await writer.drain()
        writer.write(b"close")
        writer.close()

    async with raw_server(legacy) as port:
        origin = pool.origin("http", "127.0.0.1", port)
        resp = await pool.request(origin, "GET", "/", [], None, None, 5.0)
        try:
            assert await body_of(resp) == b"until close"
        finally:
            resp.release()
    assert pool.idle_count() == 0


async def test_upstream_dies_mid_body(pool: UpstreamPool) -> None:
    async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    async with raw_server(dies) as port:
        origin = pool.origin("http", "127.0.0.1", port)
        resp = await pool.request(origin, "GET", "/", [], None, None, 5.0)
        try:
            with pytest.raises(UpstreamBroke):
                await body_of(resp)
        finally:
            resp.release()
    assert pool.idle_count() == 0


async def test_interim_100_continue_is_skipped(pool: UpstreamPool) -> None:
    async def cont(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\nX-A: 1\r\n\r\ndone")
        await writer.drain()
        await reader.read()

    async with raw_server(cont) as port:
        origin = pool.origin("http", "127.0.0.1", port)
        resp = await pool.request(origin, "GET", "/", [], None, None, 5.0)
        try:
            assert resp.status == 201
            assert resp.headers == [("Content-Length", "4"), ("X-A", "1")]
            assert await body_of(resp) == b"done"
        finally:
            resp.release()


async def test_stalled_body_times_out(pool: UpstreamPool) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        await writer.drain()
        await reader.read()

    async with raw_server(stall) as port:
        origin = pool.origin("http", "127.0.0.1", port)
        resp = await pool.request(origin, "GET", "/", [], None, None, 5.0)
        try:
            with pytest.raises(TimeoutError):
                await body_of(resp, timeout=0.2)
        finally:
            resp.release()
    assert pool.idle_count() == 0


async def test_early_answer_abandons_the_body(pool: UpstreamPool) -> None:
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"z" * 65536
            await asyncio.sleep(0)

    async with raw_server(early) as port:
        origin = pool.origin("http", "127.0.0.1", port)
        resp = await asyncio.wait_for(
            pool.request(origin, "POST", "/", [], endless(), None, 5.0), 5)
        try:
            assert resp.status == 413
        finally:
            resp.release()
    assert pool.idle_count() == 0


def test_the_same_on_uvloop() -> None:
    """orchd runs on uvloop, whose transports differ from asyncio's in small ways."""

    async def scenarios() -> None:
        echo = await Upstream(echo_app()).start()
        try:
            for scenario in (
                lambda p: test_get_reuses_one_connection(p, echo),
                lambda p: test_streamed_body_with_and_without_length(p, echo, False),
                lambda p: test_whole_body_with_and_without_length(p, echo, False, 70000),
                test_small_whole_body_arrives_with_the_head,
                lambda p: test_head_has_no_body_and_does_not_hang(p, echo),
                test_connection_closed_while_idle_is_replaced,
                test_body_until_close,
                test_upstream_dies_mid_body,
                test_early_answer_abandons_the_body,
            ):
                pool = UpstreamPool()
                try:
                    await scenario(pool)
                finally:
                    await pool.close()
        finally:
            await echo.stop()

    uvloop.run(scenarios())


async def test_no_head_before_the_deadline_is_a_timeout(pool: UpstreamPool) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await reader.read()

    async with raw_server(silent) as port:
        origin = pool.origin("http", "127.0.0.1", port)
        with pytest.raises(TimeoutError):
            await pool.request(origin, "GET", "/", [], None, None, 5.0, timeout=0.2)
        with pytest.raises(TimeoutError):
            await pool.request(origin, "POST", "/", [], _gen([b"x"] * 3), 3, 5.0, timeout=0.2)
    assert pool.idle_count() == 0


@pytest.mark.parametrize("chunked", [False, True])
async def test_discard_drops_a_body_and_keeps_the_connection(pool: UpstreamPool,
                                                             chunked: bool) -> None:
    body = b"y" * 3000

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            if chunked:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
            await writer.drain()

    async with raw_server(answer) as port:
        origin = pool.origin("http", "127.0.0.1", port)
        loop = asyncio.get_running_loop()
        for _ in range(3):
            resp = await pool.request(origin, "GET", "/h", [], None, None, 5.0, 5.0)
            try:
                assert await resp.discard(len(body), loop.time() + 5.0) is True
                assert resp.take_buffered() == b""
            finally:
                resp.release()
        assert pool.opened == 1


async def test_discard_stops_past_its_limit(pool: UpstreamPool, echo: Upstream) -> None:
    origin = pool.origin("http", "127.0.0.1", echo.port)
    loop = asyncio.get_running_loop()
    resp = await pool.request(origin, "POST", "/big", [], _gen([b"z" * 200000]), 200000,
                              5.0)
    try:
        assert await resp.discard(1000, loop.time() + 5.0) is False
    finally:
        resp.release()
    assert pool.idle_count() == 0  # not read to its end: closed, not kept


async def test_discard_gives_up_at_the_deadline(pool: UpstreamPool) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(stall) as port:
        origin = pool.origin("http", "127.0.0.1", port)
        loop = asyncio.get_running_loop()
        resp = await pool.request(origin, "GET", "/h", [], None, None, 5.0, 5.0)
        started = loop.time()
        try:
            with pytest.raises(TimeoutError):
                await resp.discard(1 << 20, started + 0.2)
        finally:
            resp.release()
        assert loop.time() - started < 1.0
        assert pool.idle_count() == 0


async def test_a_refused_address_names_the_host_and_the_rule(pool: UpstreamPool,
                                                             echo: Upstream) -> None:
    pool.check_address = lambda ip, port: f"{ip} is denied by the rule '!{ip}'"
    origin = pool.origin("http", "localhost", echo.port)
    with pytest.raises(UpstreamConnectError) as raised:
        await pool.request(origin, "GET", "/", [], None, None, 5.0)
    assert raised.value.strerror is not None
    assert raised.value.strerror.startswith("localhost resolved to ")
    cause = raised.value.__cause__
    assert isinstance(cause, AddressRefused) and cause.host == "localhost"
    assert str(cause).startswith("localhost: ") and "is denied by the rule" in cause.reason
    assert echo.requests == []
