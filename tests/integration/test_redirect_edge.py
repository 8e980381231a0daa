"""The plain listener of ``server.redirect_http_port`` keeps the public port's edge rules: a
head sent slowly is cut at ``server.header_timeout``, an oversized one gets 431, a silent
connection is closed, and ``server.max_connections`` holds on it too."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.rawhttp import connect, exchange, wait_closed_by_peer
from tests.integration.test_tls import NAMES, TlsOrchd
from tests.support import base_config, free_port
from tests.tls_support import CA, write_pair


@pytest.fixture
def redirecting(tmp_path: Path) -> Iterator[Callable[..., tuple[TlsOrchd, int]]]:
    """orchd on HTTPS with a redirect port and the ``server`` limits given; (orchd, port)."""
    started: list[TlsOrchd] = []
    ca = CA()
    cert, key = write_pair(tmp_path / "tls", "site", ca.issue(*NAMES))

    def make(**limits: Any) -> tuple[TlsOrchd, int]:
        port = free_port()
        config = base_config()
        config["server"] = {"tls": {"certificates": [{"cert_file": str(cert),
                                                      "key_file": str(key)}]},
                            "redirect_http_port": port, **limits}
        daemon = TlsOrchd(config, ca)
        started.append(daemon)
        daemon.start()
        return daemon, port

    yield make
    for daemon in started:
        daemon.cleanup()


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> int:
    """Send ``data`` a byte every ``every`` seconds; how many bytes went before the peer
    closed the connection."""
    for sent in range(len(data)):
        try:
            writer.write(data[sent:sent + 1])
            await writer.drain()
        except ConnectionError:
            return sent
        await asyncio.sleep(every)
    return len(data)


async def test_a_slowly_sent_head_is_cut_at_the_header_timeout(
        redirecting: Callable[..., tuple[TlsOrchd, int]]) -> None:
    _, port = redirecting(header_timeout=1)
    reader, writer = await connect(port)
    try:
        writer.write(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n")
        # A header field a byte every 50 ms: 200 bytes would take 10 s.
        sender = asyncio.create_task(trickle(writer, b"X-Slow: " + b"x" * 192, 0.05))
        answer = await wait_closed_by_peer(reader, 15)
        sent = await asyncio.wait_for(sender, 15)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert sent < 200  # closed by the deadline, not by the end of the head


async def test_a_silent_connection_is_closed(
        redirecting: Callable[..., tuple[TlsOrchd, int]]) -> None:
    _, port = redirecting(header_timeout=0.5)
    reader, writer = await connect(port)
    try:
        assert await wait_closed_by_peer(reader, 10) == b""
    finally:
        writer.close()


async def test_an_oversized_head_gets_431_and_a_fitting_one_its_redirect(
        redirecting: Callable[..., tuple[TlsOrchd, int]]) -> None:
    daemon, port = redirecting(max_header_size=4096, max_header_count=20)
    answer = await exchange(port, (f"GET /big HTTP/1.1\r\nHost: localhost\r\n"
                                   f"Cookie: {'c' * 6000}\r\n\r\n").encode())
    assert answer.status == 431, answer.head
    assert json.loads(answer.body)["status"] == 431
    fields = "".join(f"X-H{i}: v\r\n" for i in range(30))
    answer = await exchange(port, f"GET /many HTTP/1.1\r\nHost: localhost\r\n{fields}\r\n"
                            .encode())
    assert answer.status == 431, answer.head
    answer = await exchange(port, b"GET /fits?a=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert answer.status == 308, answer.head
    assert f"https://localhost:{daemon.port}/fits?a=1".encode() in answer.head


async def test_a_request_without_a_host_gets_a_400_problem_document(
        redirecting: Callable[..., tuple[TlsOrchd, int]]) -> None:
    _, port = redirecting()
    answer = await exchange(port, b"GET /x HTTP/1.0\r\n\r\n")
    assert answer.status == 400, answer.head
    assert b"application/problem+json" in answer.head.lower(), answer.head
    document = json.loads(answer.body)
    assert document["status"] == 400 and "Host" in document["detail"], document
    assert b"location" not in answer.head.lower()


async def test_max_connections_holds_on_the_redirect_port(
        redirecting: Callable[..., tuple[TlsOrchd, int]]) -> None:
    _, port = redirecting(max_connections=2, header_timeout=30)
    first = await connect(port)
    second = await connect(port)
    third = await connect(port)
    try:
        # The oldest connection with no request in progress makes room for the new one.
        assert await wait_closed_by_peer(first[0], 10) == b""
        third[1].write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (await asyncio.wait_for(third[0].readuntil(b"\r\n"), 10)).startswith(
            b"HTTP/1.1 308")
    finally:
        for _, writer in (first, second, third):
            writer.close()
