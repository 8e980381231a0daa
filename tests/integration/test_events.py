"""``/events``: Server-Sent Events from a real orchd, a slow client dropped, memory bounded."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.rawhttp import RawAnswer, endpoint, exchange
from tests.support import async_wait_until, base_config

TOKEN = "events-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def next_event(resp: aiohttp.ClientResponse, want: str,
                     timeout: float = 10.0) -> dict[str, Any]:
    """Read SSE frames until one of type ``want``; answer its data."""
    kind = None
    async with asyncio.timeout(timeout):
        while True:
            line = (await resp.content.readline()).decode()
            if not line:
                raise AssertionError(f"stream ended before a {want!r} event")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: ") and kind == want:
                data: dict[str, Any] = json.loads(line[len("data: "):])
                return data


async def test_client_receives_breaker_transition_with_reason(
        orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    daemon = orchd_factory(base_config({"name": "svc", "url": up.url},
                                       server={"admin_token": TOKEN}))
    async with http.get(f"{daemon.url}/events?types=breaker") as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream"
        first = await stream.content.readline()
        assert first.startswith(b"retry:")
        async with http.post(f"{daemon.url}/health/circuit-breakers/svc/trip",
                             headers=AUTH) as r:
            assert r.status == 200
        event = await next_event(stream, "breaker")
        assert event["endpoint_id"] == "svc"
        assert event["url"] == up.url
        assert event["old_state"] == "closed"
        assert event["state"] == "forced_open"
        assert event["reason"] == "tripped by an operator"
        assert isinstance(event["id"], int) and event["time"] > 0

        async with http.post(f"{daemon.url}/health/circuit-breakers/svc/reset",
                             headers=AUTH) as r:
            assert r.status == 200
        event = await next_event(stream, "breaker")
        assert (event["old_state"], event["state"]) == ("forced_open", "closed")


async def test_stream_ends_when_orchd_stops(orchd_factory, upstream_factory, http):
    daemon = orchd_factory(base_config())
    async with http.get(f"{daemon.url}/events") as stream:
        await stream.content.readline()
        daemon.signal(15)
        async with asyncio.timeout(20):
            rest = await stream.content.read()  # returns at end of stream
        assert b"event:" not in rest
    assert await asyncio.to_thread(daemon.proc.wait, 20) == 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_slow_client_is_dropped_and_memory_stays_flat(orchd_factory, http):
    # 64 targets: one trip or reset call publishes 64 breaker events, so a bounded burst of
    # calls overflows the subscriber queue (1000 events) and every socket buffer in between.
    urls = [f"http://127.0.0.1:9/t{i}" for i in range(64)]
    daemon = orchd_factory(base_config({"name": "wide", "urls": urls},
                                       server={"admin_token": TOKEN}))
    pid = daemon.proc.pid

    async def metric(name: str) -> float:
        async with http.get(f"{daemon.url}/metrics") as r:
            for line in (await r.text()).splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise AssertionError(f"no {name}")

    # A client that reads the first frame, then never reads again; small buffers make the
    # kernel push back soon.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", daemon.port))
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    sock.settimeout(10)
    head = sock.recv(4096)
    assert b"200 OK" in head
    await async_wait_until(lambda: metric("orchd_events_subscribers"), what="subscriber")

    async def burst(rounds: int) -> None:
        for _ in range(rounds):
            for action in ("trip", "reset"):
                async with http.post(f"{daemon.url}/health/circuit-breakers/wide/{action}",
                                     headers=AUTH) as r:
                    assert r.status == 200

    await burst(5)  # warm up: allocations that happen once
    rss_before = rss_kib(pid)
    deadline = time.monotonic() + 60
    rounds = 0
    while await metric("orchd_events_subscribers_dropped_total") < 1:
        assert time.monotonic() < deadline and rounds < 400, "slow client was never dropped"
        await burst(10)
        rounds += 10
    assert await metric("orchd_events_subscribers") == 0
    await burst(40)  # events now go nowhere for the dropped client
    rss_after = rss_kib(pid)
    # Flat: the dropped stream holds at most its bounded queue and socket buffers.
    assert rss_after - rss_before < 16 * 1024, (rss_before, rss_after)

    # The client reads again: what was buffered, then the final event, then the end.
    sock.settimeout(10)
    data = head
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    text = data.decode(errors="replace")
    assert "event: subscriber_dropped" in text
    frames = [f for f in text.split("\n\n") if "event: " in f]
    assert "event: subscriber_dropped" in frames[-1]


# -- caps on long-lived streams (server.max_streams, server.max_streams_per_client)

class OpenStream:
    """One raw ``GET /events`` from a chosen loopback source address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 answer: RawAnswer | None, head: bytes) -> None:
        self.reader, self.writer, self.answer, self.head = reader, writer, answer, head

    @property
    def status(self) -> int | None:
        if self.answer is not None:
            return self.answer.status
        return int(self.head.split(b" ", 2)[1])

    def close(self) -> None:
        self.writer.close()


async def open_stream(port: int, source: str = "127.0.0.1") -> OpenStream:
    """Open ``/events`` from ``source``: a 200 stays open (its head read), any other answer
    is read whole."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 200 "):
        async with asyncio.timeout(10):
            await reader.readuntil(b": connected\n\n")  # the stream is subscribed
        return OpenStream(reader, writer, None, head)
    length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    async with asyncio.timeout(10):
        body = await reader.readexactly(length)
    writer.close()
    return OpenStream(reader, writer, RawAnswer(int(head.split(b" ", 2)[1]), head, body, True),
                      head)


async def open_until_refused(port: int, limit: int, sources: list[str],
                             streams: list[OpenStream]) -> OpenStream:
    """Open streams round robin over ``sources`` (at most ``limit``) until one is refused;
    the open ones are appended to ``streams``."""
    for i in range(limit):
        stream = await open_stream(port, sources[i % len(sources)])
        if stream.status != 200:
            return stream
        streams.append(stream)
    raise AssertionError(f"{limit} streams were all accepted")


async def reopen_when_freed(port: int, source: str, streams: list[OpenStream]) -> None:
    """Poll until a new stream from ``source`` is accepted; it joins ``streams``."""

    async def reopened() -> bool:
        stream = await open_stream(port, source)
        if stream.status == 200:
            streams.append(stream)
            return True
        return False

    await async_wait_until(reopened, what="a freed stream slot")


def assert_stream_refusal(refused: OpenStream, key: str) -> dict[str, Any]:
    assert refused.answer is not None
    assert refused.status == 429, refused.head
    head = refused.head.decode().lower()
    assert "content-type: application/problem+json" in head
    retry = head.split("retry-after:", 1)[1].split("\r\n", 1)[0].strip()
    assert int(retry) >= 1
    problem: dict[str, Any] = json.loads(refused.answer.body)
    assert problem["status"] == 429 and problem["title"] and problem["type"]
    assert f"server.{key}" in problem["detail"] and problem["reason"] == key, problem
    return problem


async def test_event_streams_cannot_take_every_connection(orchd_factory, upstream_factory):
    up = await upstream_factory()
    gw = orchd_factory(base_config(endpoint("echo", up.url), server={"max_connections": 20}))
    streams: list[OpenStream] = []
    try:
        # Defaults: at most max_connections // 2 streams, whoever opens them.
        refused = await open_until_refused(gw.port, 25, ["127.0.0.1"], streams)
        assert_stream_refusal(refused, "max_streams")
        assert len(streams) == 10
        # The public port still serves, on new connections, while the streams stay open.
        for _ in range(3):
            answer = await exchange(gw.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.status == 200, answer.head
            answer = await exchange(gw.port, b"GET /orchestrator/echo/x HTTP/1.1\r\n"
                                             b"Host: x\r\n\r\n")
            assert answer.status == 200, answer.head
        for stream in streams:
            assert not stream.reader.at_eof()
        # Closing a stream frees its slot.
        streams.pop().close()
        await reopen_when_freed(gw.port, "127.0.0.1", streams)
    finally:
        for stream in streams:
            stream.close()


async def test_streams_are_capped_per_client_address_and_in_total(orchd_factory):
    gw = orchd_factory(base_config(server={"max_connections": 20, "max_streams": 8,
                                           "max_streams_per_client": 3}))
    streams: list[OpenStream] = []
    try:
        refused = await open_until_refused(gw.port, 10, ["127.0.0.2"], streams)
        problem = assert_stream_refusal(refused, "max_streams_per_client")
        assert "127.0.0.2" in problem["detail"]
        assert len(streams) == 3
        # Another address has its own allowance ...
        for _ in range(3):
            stream = await open_stream(gw.port, "127.0.0.3")
            assert stream.status == 200, stream.head
            streams.append(stream)
        # ... until the total is reached, whoever asks.
        refused = await open_until_refused(gw.port, 10, ["127.0.0.4", "127.0.0.5"], streams)
        problem = assert_stream_refusal(refused, "max_streams")
        assert "server.max_streams is 8" in problem["detail"]
        assert len(streams) == 8
        answer = await exchange(gw.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.status == 200, answer.head
        # A stream that ends gives its slot back, to any address.
        streams.pop(0).close()
        await reopen_when_freed(gw.port, "127.0.0.6", streams)
    finally:
        for stream in streams:
            stream.close()


async def test_stream_caps_change_on_reload_and_open_streams_stay(orchd_factory, http):
    config = base_config(server={"max_connections": 20, "max_streams_per_client": 1})
    gw = orchd_factory(config)
    streams: list[OpenStream] = []
    try:
        streams.append(await open_stream(gw.port, "127.0.0.2"))
        assert streams[0].status == 200
        assert_stream_refusal(await open_stream(gw.port, "127.0.0.2"), "max_streams_per_client")
        gw.write_config(base_config(server={"max_connections": 20,
                                            "max_streams_per_client": 2}))
        async with http.post(f"{gw.url}/config/reload") as r:
            assert r.status == 200, await r.text()
        second = await open_stream(gw.port, "127.0.0.2")
        assert second.status == 200, second.head
        streams.append(second)
        assert_stream_refusal(await open_stream(gw.port, "127.0.0.2"), "max_streams_per_client")
        assert not streams[0].reader.at_eof()
    finally:
        for stream in streams:
            stream.close()


async def test_control_socket_streams_are_not_capped(orchd_factory):
    gw = orchd_factory(base_config(server={"max_connections": 20,
                                           "max_streams_per_client": 1}))
    streams: list[OpenStream] = [await open_stream(gw.port)]
    assert streams[0].status == 200
    connector = aiohttp.UnixConnector(str(gw.socket))
    try:
        async with aiohttp.ClientSession(connector=connector) as admin:
            opened = []
            for _ in range(3):
                resp = await admin.get("http://orchd/events")
                opened.append(resp)
                assert resp.status == 200
                async with asyncio.timeout(10):
                    assert (await resp.content.readline()).startswith(b"retry:")
            # The TCP port's cap still holds for that address.
            assert_stream_refusal(await open_stream(gw.port), "max_streams_per_client")
            for resp in opened:
                resp.close()
    finally:
        for stream in streams:
            stream.close()


def test_stream_caps_are_config_keys_and_validated():
    from orchd.errors import ConfigError
    from orchd.loader import parse_config

    cfg = parse_config("server:\n  max_streams: 50\n  max_streams_per_client: 2\n")
    assert (cfg.server.max_streams, cfg.server.max_streams_per_client) == (50, 2)
    assert parse_config("").server.max_streams == 1024
    assert parse_config("").server.max_streams_per_client == 16
    for key, bad in (("max_streams", "0"), ("max_streams_per_client", "1.5"),
                     ("max_streams_per_client", "'many'")):
        try:
            parse_config(f"log_level: INFO\nserver:\n  {key}: {bad}\n")
        except ConfigError as exc:
            assert f"server.{key} (line 3)" in exc.summary(), exc.summary()
        else:
            raise AssertionError(f"{key}: {bad} was accepted")
