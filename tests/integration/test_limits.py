"""Slow and oversized clients: header and body deadlines, size limits, connection cap."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp

from tests.integration.rawhttp import (
    connect,
    endpoint,
    exchange,
    fd_count,
    read_answer,
    wait_closed_by_peer,
)
from tests.support import base_config


def limited(up_url: str, **server: Any) -> dict[str, Any]:
    return base_config(endpoint("echo", up_url), server=server)


async def test_within_limits_a_request_is_served(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url))
    headers = "".join(f"X-H{i}: {'v' * 50}\r\n" for i in range(90))
    answer = await exchange(gw.port, (f"GET /orchestrator/echo/{'a' * 8000} HTTP/1.1\r\n"
                                      f"Host: x\r\n{headers}\r\n").encode())
    assert answer.status == 200, answer.head
    assert json.loads(answer.body)["headers"]["X-H89"] == "v" * 50


async def test_too_many_headers_get_431(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url, max_header_count=20))
    headers = "".join(f"X-H{i}: v\r\n" for i in range(30))
    answer = await exchange(gw.port, f"GET /health HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    assert answer.status == 431, answer.head
    assert b"application/problem+json" in answer.head
    assert json.loads(answer.body)["status"] == 431
    assert up.requests == []


async def test_one_oversized_header_gets_431(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url, max_header_size=4096))
    answer = await exchange(gw.port, (f"GET /orchestrator/echo/ HTTP/1.1\r\nHost: x\r\n"
                                      f"Cookie: {'c' * 6000}\r\n\r\n").encode())
    assert answer.status == 431, answer.head
    assert up.requests == []


async def test_header_section_too_large_in_total_gets_431(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url, max_header_size=4096))
    # Each field is small; together they cross the limit.
    headers = "".join(f"X-H{i}: {'v' * 200}\r\n" for i in range(40))
    answer = await exchange(gw.port, (f"GET /orchestrator/echo/ HTTP/1.1\r\nHost: x\r\n"
                                      f"{headers}\r\n").encode())
    assert answer.status == 431, answer.head
    assert up.requests == []


async def test_url_too_long_gets_414(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url, max_url_length=1024))
    answer = await exchange(gw.port, (f"GET /orchestrator/echo/{'a' * 2000} HTTP/1.1\r\n"
                                      "Host: x\r\n\r\n").encode())
    assert answer.status == 414, answer.head
    assert b"application/problem+json" in answer.head
    # A request line that never ends is cut as soon as it is over the limit.
    reader, writer = await connect(gw.port)
    try:
        writer.write(b"GET /" + b"a" * 4000)
        await writer.drain()
        answer = await read_answer(reader)
        assert answer.status == 414
    finally:
        writer.close()
    assert up.requests == []


async def test_body_over_max_body_size_gets_413(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url, max_body_size=1000))
    answer = await exchange(gw.port, (b"POST /orchestrator/echo/ HTTP/1.1\r\nHost: x\r\n"
                                      b"Content-Length: 5000\r\n\r\n" + b"x" * 5000))
    assert answer.status == 413


async def test_expect_100_continue_is_refused_413_before_the_body(orchd_factory,
                                                                   upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url, max_body_size=1000))
    head = (b"PUT /orchestrator/echo/up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n")
    # Over the limit: 413 straight away (no 100 Continue), and the connection ends.
    answer = await exchange(gw.port, head % 5000)
    assert answer.status == 413, answer.head
    assert answer.closed
    assert b"x-request-id" in answer.head.lower()
    assert json.loads(answer.body)["status"] == 413
    # Within it: 100 Continue, then the body goes to the upstream and its answer comes back.
    reader, writer = await connect(gw.port)
    try:
        writer.write(head % 10)
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        writer.write(b"0123456789")
        await writer.drain()
        final = await read_answer(reader)
        assert final.status == 200, final.head
        assert json.loads(final.body)["body"] == "0123456789"
    finally:
        writer.close()
    assert len(up.requests) == 1


async def test_slowloris_headers_are_cut_with_408(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url, header_timeout=1))
    reader, writer = await connect(gw.port)
    sent = b""
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        # One byte of a header at a time; bounded: at most 200 bytes over 10 s.
        answer = b""
        for _ in range(200):
            try:
                writer.write(b"X")
                await writer.drain()
            except ConnectionError:
                break
            sent += b"X"
            with contextlib.suppress(TimeoutError):
                answer += await asyncio.wait_for(reader.read(4096), 0.05)
            if answer or reader.at_eof():
                break
        answer += await wait_closed_by_peer(reader, 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert len(sent) < 200


async def test_connection_that_sends_nothing_is_closed(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url, header_timeout=0.5))
    reader, writer = await connect(gw.port)
    try:
        assert await wait_closed_by_peer(reader, 10) == b""
    finally:
        writer.close()


async def test_slow_body_is_cut_with_408_and_the_upstream_request_aborted(
        orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url, body_timeout=1))
    reader, writer = await connect(gw.port)
    answer = b""
    try:
        writer.write(b"POST /orchestrator/echo/ HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"y" * 100)
        for _ in range(100):  # a byte every 0.1 s: far below 1 KiB per second
            try:
                writer.write(b"y")
                await writer.drain()
            except ConnectionError:
                break
            with contextlib.suppress(TimeoutError):
                answer += await asyncio.wait_for(reader.read(4096), 0.1)
            if answer or reader.at_eof():
                break
        answer += await wait_closed_by_peer(reader, 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"Request body too slow" in answer
    # The echo upstream never got a whole body to answer.
    assert all(r.content_length == 100000 for r in up.requests)
    assert "Traceback" not in gw.log(), gw.log()[-3000:]


async def test_a_body_that_keeps_a_steady_pace_is_not_cut(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url, body_timeout=1.5))
    reader, writer = await connect(gw.port)
    try:
        writer.write(b"POST /orchestrator/echo/ HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 30000\r\n\r\n")
        for _ in range(10):  # 3000 bytes every 0.3 s for 3 s: twice the body_timeout
            writer.write(b"z" * 3000)
            await writer.drain()
            await asyncio.sleep(0.3)
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert answer.status == 200, answer.head
    assert json.loads(answer.body)["body_length"] == 30000


async def test_health_answers_during_a_slowloris_attack(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url, header_timeout=3, max_connections=20))
    attackers: list[asyncio.StreamWriter] = []
    base_fds = fd_count(gw.proc.pid)
    try:
        for _ in range(60):  # three times max_connections, each sending headers slowly
            with contextlib.suppress(OSError):
                _r, w = await connect(gw.port)
                w.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                attackers.append(w)

        async def trickle() -> None:
            for _ in range(40):
                for w in attackers:
                    with contextlib.suppress(Exception):
                        w.write(b"a")
                await asyncio.sleep(0.05)

        feeder = asyncio.create_task(trickle())
        ok = 0
        async with aiohttp.ClientSession() as s:
            for _ in range(10):
                async with s.get(f"{gw.url}/health",
                                 timeout=aiohttp.ClientTimeout(total=5)) as r:
                    ok += r.status == 200
                await asyncio.sleep(0.05)
        await feeder
        assert ok == 10
        # orchd holds at most max_connections client sockets, whatever the attackers open.
        assert fd_count(gw.proc.pid) <= base_fds + 20 + 5
    finally:
        for w in attackers:
            w.close()
    log = gw.log()
    assert "Traceback" not in log


async def test_max_connections_evicts_idle_then_refuses_busy(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url, max_connections=4, body_timeout=60))
    busy: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        # Four connections in the middle of a request body: none may be evicted.
        for _ in range(4):
            r, w = await connect(gw.port)
            w.write(b"POST /orchestrator/echo/ HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 10\r\n\r\nab")
            await w.drain()
            busy.append((r, w))

        async def upstream_sees_all() -> bool:
            return len(up.requests) == 4

        for _ in range(200):
            if await upstream_sees_all():
                break
            await asyncio.sleep(0.05)
        assert len(up.requests) == 4
        answer = await exchange(gw.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.status == 503, answer.head
        assert b"too many connections" in answer.body
        # They finish; their connections stay open, idle: now they can make room.
        for r, w in busy:
            w.write(b"cdefghij")
            await w.drain()
            assert (await read_answer(r)).status == 200
        answer = await exchange(gw.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.status == 200, answer.head
        # The oldest idle connection was closed to make room.
        assert await wait_closed_by_peer(busy[0][0], 10) == b""
    finally:
        for _r, w in busy:
            w.close()


async def test_limits_are_config_keys_and_validated(orchd_factory):
    from orchd.errors import ConfigError
    from orchd.loader import parse_config

    cfg = parse_config("server:\n  header_timeout: 2.5\n  max_connections: 10\n")
    assert cfg.server.header_timeout == 2.5 and cfg.server.max_connections == 10
    try:
        parse_config("server:\n  max_connections: 0\n")
    except ConfigError as exc:
        assert "server.max_connections" in exc.summary()
    else:
        raise AssertionError("max_connections: 0 was accepted")


async def test_a_client_leaving_mid_upload_is_not_held_against_the_upstream(
        orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    gw = orchd_factory(base_config(endpoint("echo", up.url),
                                   circuit_breaker={"failure_threshold": 2}))
    for i in range(3):
        _reader, writer = await connect(gw.port)
        writer.write(b"POST /orchestrator/echo/ HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"u" * 1000)
        await writer.drain()
        for _ in range(200):  # the upstream has the request: the body is streaming
            if len(up.requests) > i:
                break
            await asyncio.sleep(0.02)
        assert len(up.requests) == i + 1
        writer.transport.abort()
    async with http.get(f"{gw.url}/orchestrator/echo/after") as r:
        assert r.status == 200, await r.text()
    async with http.get(f"{gw.url}/health/endpoints/echo") as r:
        target = (await r.json())["targets"][0]
    assert target["circuit_breaker"]["state"] == "closed", target
    assert target["circuit_breaker"]["failure_count"] == 0, target


async def test_header_timeout_applies_to_each_keep_alive_request(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url, header_timeout=1))
    reader, writer = await connect(gw.port)
    try:
        for _ in range(3):  # idle gaps between requests are not header time
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert (await read_answer(reader)).status == 200
            await asyncio.sleep(0.7)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # ... and the rest never comes
        await writer.drain()
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert answer.status == 408, answer.head


async def test_a_client_that_reads_nothing_is_disconnected_and_the_upstream_let_go(
        orchd_factory, upstream_factory):
    from aiohttp import web

    finished = asyncio.Event()
    sent = [0]

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(20000):  # bounded: 1.3 GB, far more than the buffers hold
                await resp.write(b"r" * 65536)
                sent[0] += 65536
        except ConnectionError:
            pass
        finally:
            finished.set()
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", endless)
    up = await upstream_factory(app)
    gw = orchd_factory(limited(up.url, send_timeout=1))
    reader, writer = await connect(gw.port)
    try:
        writer.write(b"GET /orchestrator/echo/big HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        # The client reads nothing: orchd's buffers fill, then it must let go of both sides.
        await asyncio.wait_for(finished.wait(), 30)
        assert sent[0] < 1024**3
        with contextlib.suppress(ConnectionError):
            await wait_closed_by_peer(reader, 30)
    finally:
        writer.close()


async def test_a_slow_admin_body_is_cut_with_408(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url, body_timeout=1))
    reader, writer = await connect(gw.port)
    try:
        writer.write(b"POST /registry/endpoints HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{")
        await writer.drain()
        answer = await read_answer(reader, timeout=15)
    finally:
        writer.close()
    assert answer.status == 408, answer.head
    assert json.loads(answer.body)["title"] == "Request body too slow"


async def test_an_admin_body_split_across_packets_is_read_whole(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url))
    body = json.dumps({"config": {"name": "split", "url": up.url}}).encode()
    reader, writer = await connect(gw.port)
    try:
        writer.write(b"POST /registry/endpoints HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
        await writer.drain()
        await asyncio.sleep(0.3)  # the rest comes in a later packet
        writer.write(body[10:])
        await writer.drain()
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert answer.status == 201, answer.body


async def test_a_config_document_split_across_packets_is_validated_whole(
        orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(limited(up.url))
    doc = "endpoints:\n" + "".join(f"  - name: e{i}\n    url: {up.url}\n" for i in range(50))
    body = doc.encode()
    reader, writer = await connect(gw.port)
    try:
        writer.write(b"POST /config/validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/yaml\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:100])
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(body[100:])
        await writer.drain()
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["endpoints_count"] == 50
