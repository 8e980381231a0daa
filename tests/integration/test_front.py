"""The public port's own listener (orchd/front.py) and its hand-over to aiohttp.

Proxied requests are answered by orchd's own HTTP/1.1 code; the first request on a
connection that it does not serve moves the connection to aiohttp for good. These tests
check that both paths answer alike, that the hand-over loses no byte in either direction
(keep-alive and pipelined), and the HTTP/1.x framing rules of the listener's own answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

from aiohttp import web

from tests.integration.rawhttp import RawAnswer, connect, endpoint, read_answer
from tests.support import base_config, free_port

_VARYING = {b"date", b"x-request-id", b"x-response-time", b"content-length"}


def _headers(head: bytes) -> dict[bytes, bytes]:
    lines = head.split(b"\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in
            (line.partition(b":") for line in lines if line)}


async def _on_one_connection(port: int, *requests: bytes) -> list:
    """Send ``requests`` one after another on one connection, reading each answer first."""
    reader, writer = await connect(port)
    answers = []
    try:
        for data in requests:
            writer.write(data)
            await writer.drain()
            answers.append(await read_answer(reader))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return answers


GET_PROXIED = b"GET /orchestrator/echo/x?a=1 HTTP/1.1\r\nHost: gw\r\n\r\n"
GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"


async def test_proxied_answers_alike_before_and_after_the_hand_over(orchd_factory,
                                                                    upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(base_config(endpoint("echo", up.url)))
    # The first answer comes from orchd's listener; after /health the connection is
    # aiohttp's, and the same proxied request is answered there.
    fast, health, slow, health2 = await _on_one_connection(
        gw.port, GET_PROXIED, GET_HEALTH, GET_PROXIED, GET_HEALTH)
    assert (fast.status, health.status, slow.status, health2.status) == (200, 200, 200, 200)
    assert json.loads(health.body)["status"] == "healthy"
    a, b = _headers(fast.head), _headers(slow.head)
    assert set(a) == set(b), (fast.head, slow.head)
    assert {k: v for k, v in a.items() if k not in _VARYING} == \
        {k: v for k, v in b.items() if k not in _VARYING}
    sent_fast, sent_slow = json.loads(fast.body), json.loads(slow.body)
    assert sent_fast["raw_path"] == sent_slow["raw_path"] == "/x?a=1"
    for got in (sent_fast, sent_slow):
        assert got["headers"]["X-Forwarded-Host"] == "gw"
        assert got["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert not fast.closed and not slow.closed


async def test_gateway_errors_answer_alike_on_both_paths(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(base_config(endpoint("echo", up.url)))
    missing = b"GET /orchestrator/nope/x HTTP/1.1\r\nHost: gw\r\n\r\n"
    fast, _health, slow = await _on_one_connection(gw.port, missing, GET_HEALTH, missing)
    assert fast.status == slow.status == 404
    a, b = json.loads(fast.body), json.loads(slow.body)
    for doc in (a, b):
        doc.pop("timestamp"), doc.pop("timestamp_iso")
    assert a == b
    assert b"application/problem+json" in fast.head
    assert _headers(fast.head).keys() == _headers(slow.head).keys()


async def test_pipelined_requests_across_the_hand_over_are_answered_in_order(
        orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(base_config(endpoint("echo", up.url)))
    post = (b"POST /orchestrator/echo/p HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\n"
            b"hello")
    chunked = (b"POST /orchestrator/echo/c HTTP/1.1\r\nHost: gw\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    reader, writer = await connect(gw.port)
    try:
        writer.write(post + chunked + GET_HEALTH + GET_PROXIED)
        await writer.drain()
        answers = [await read_answer(reader) for _ in range(4)]
    finally:
        writer.close()
    assert [a.status for a in answers] == [200, 200, 200, 200]
    bodies = [json.loads(a.body) for a in answers]
    assert (bodies[0]["path"], bodies[0]["body"]) == ("/p", "hello")
    assert (bodies[1]["path"], bodies[1]["body"]) == ("/c", "abcde")
    assert bodies[2]["status"] == "healthy"
    assert bodies[3]["raw_path"] == "/x?a=1"


async def test_a_body_split_across_many_writes_arrives_whole(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(base_config(endpoint("echo", up.url)))
    body = bytes(range(256)) * 40  # 10 KiB
    head = (b"POST /orchestrator/echo/s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked"
            b"\r\n\r\n")
    framed = b"".join(b"%x\r\n%b\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                      for i in range(0, len(body), 1000)) + b"0\r\n\r\n"
    reader, writer = await connect(gw.port)
    try:
        writer.write(head[:10])
        await writer.drain()
        await asyncio.sleep(0.05)
        rest = head[10:] + framed
        for i in range(0, len(rest), 777):  # cuts through heads, sizes and data alike
            writer.write(rest[i:i + 777])
            await writer.drain()
            await asyncio.sleep(0.002)
        writer.write(GET_PROXIED)
        answers = [await read_answer(reader) for _ in range(2)]
    finally:
        writer.close()
    got = json.loads(answers[0].body)
    assert answers[0].status == 200
    assert got["body"].encode("latin-1") == body
    assert answers[1].status == 200


async def test_http_1_0_framing_and_keep_alive(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(base_config(endpoint("echo", up.url)))
    # HTTP/1.0 without keep-alive: one request per connection, closed after it.
    answer = await _answer_then_close(gw.port, b"GET /orchestrator/echo/a HTTP/1.0\r\n"
                                               b"Host: gw\r\n\r\n")
    assert answer.head.startswith(b"HTTP/1.0 200"), answer.head
    keep = b"GET /orchestrator/echo/a HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n"
    first, second = await _on_one_connection(gw.port, keep, keep)
    assert (first.status, second.status) == (200, 200)
    assert _headers(first.head)[b"connection"].lower() == b"keep-alive"
    # The version is the request line's, whatever a header value ends with.
    answer = await _answer_then_close(gw.port, b"GET /orchestrator/echo/a HTTP/1.0\r\n"
                                               b"X-Note: HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert answer.head.startswith(b"HTTP/1.0 200"), answer.head


async def _answer_then_close(port: int, raw: bytes) -> RawAnswer:
    """The answer to ``raw``, sent alone on a new connection, which must close after it."""
    reader, writer = await connect(port)
    try:
        writer.write(raw)
        answer = await read_answer(reader)
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    return answer


async def test_head_and_streamed_answers(orchd_factory, upstream_factory):
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(3):
            await resp.write(b"part%d;" % i)
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1234)

    app = web.Application()
    app.router.add_get("/stream", stream)
    app.router.add_get("/sized", sized)
    up = await upstream_factory(app)
    gw = orchd_factory(base_config(endpoint("echo", up.url)))
    reader, writer = await connect(gw.port)
    try:
        writer.write(b"HEAD /orchestrator/echo/sized HTTP/1.1\r\nHost: gw\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        assert _headers(head)[b"content-length"] == b"1234"  # the upstream's, no body sent
        writer.write(b"GET /orchestrator/echo/stream HTTP/1.1\r\nHost: gw\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200"), head  # not a byte of the HEAD's body before
        assert _headers(head)[b"transfer-encoding"] == b"chunked"
        body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
        parts = re.findall(rb"part\d;", body)
        assert parts == [b"part0;", b"part1;", b"part2;"]
    finally:
        writer.close()


async def test_connection_close_request_is_honoured(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(base_config(endpoint("echo", up.url)))
    closing = b"GET /orchestrator/echo/a HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    (answer,) = await _on_one_connection(gw.port, closing)
    assert answer.status == 200
    assert _headers(answer.head)[b"connection"] == b"close"
    assert answer.closed


async def test_a_websocket_to_an_unreachable_upstream_gets_502(orchd_factory):
    # Upgrades go to aiohttp's side of the listener; the failure is still a problem document.
    gw = orchd_factory(base_config(endpoint("dead", f"http://127.0.0.1:{free_port()}")))
    head = (b"GET /orchestrator/dead/ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n")
    (answer,) = await _on_one_connection(gw.port, head)
    assert answer.status == 502, (answer.head, answer.body)
    assert json.loads(answer.body)["title"] == "Upstream refused the WebSocket"
