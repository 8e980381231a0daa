"""Raw-socket HTTP helpers for tests that send what a well-behaved client never would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RawAnswer:
    status: int | None
    head: bytes
    body: bytes
    closed: bool  # the server closed the connection after the answer


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_answer(reader: asyncio.StreamReader, timeout: float = 10.0) -> RawAnswer:
    """Read one answer (head, then Content-Length bytes or up to EOF)."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError as exc:
        return RawAnswer(None, exc.partial, b"", True)
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    status = int(m.group(1)) if m else None
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if length is not None:
        body = await asyncio.wait_for(reader.readexactly(int(length.group(1))), timeout)
    else:
        body = await asyncio.wait_for(reader.read(), timeout)
    closed = b"connection: close" in head.lower()
    return RawAnswer(status, head, body, closed)


async def exchange(port: int, data: bytes, timeout: float = 10.0) -> RawAnswer:
    reader, writer = await connect(port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_answer(reader, timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def wait_closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk


@dataclass
class CountingUpstream:
    """A raw asyncio HTTP server that records every request it parsed (bytes as received)."""

    port: int = 0
    raw: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> CountingUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                body = b""
                if length is not None:
                    body = await reader.readexactly(int(length.group(1)))
                elif re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
                    while True:
                        size_line = await reader.readuntil(b"\r\n")
                        size = int(size_line.split(b";")[0], 16)
                        chunk = await reader.readexactly(size + 2)
                        body += chunk[:-2]
                        if size == 0:
                            break
                self.raw.append(head + body)
                payload = b"ok %d" % len(self.raw)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload)
                             + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                ValueError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.close()
            for _ in range(100):  # the handlers see EOF and return
                if not self.writers:
                    break
                await asyncio.sleep(0.01)
            await self.server.wait_closed()


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def endpoint(name: str, url: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "methods": ["GET", "POST", "PUT"], **kw}


__all__ = ("CountingUpstream", "RawAnswer", "connect", "endpoint", "exchange", "fd_count",
           "read_answer", "rss_kib", "wait_closed_by_peer")
