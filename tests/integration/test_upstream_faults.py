"""Upstream faults: resets, garbage, endless bodies and headers, short bodies, silence.

The client gets a clear 502/504 or a cut stream; afterwards orchd's open descriptors and
memory are back to where they were.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import re
import socket
import struct
import subprocess
import sys

import aiohttp
import pytest

from tests.integration.rawhttp import endpoint, exchange, fd_count, rss_kib
from tests.support import IN_CI, ROOT, async_wait_until, base_config


class FaultyUpstream:
    """A raw asyncio server whose behaviour is chosen by the request path."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.open = 0  # connections currently open
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultyUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                if not await self._act(path, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            self.tasks.discard(task)
            writer.close()

    async def _act(self, path: str, r: asyncio.StreamReader, w: asyncio.StreamWriter
                   ) -> bool:
        if path == "/ok":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()
            return True
        canned = _ANSWER_THEN_CLOSE.get(path)
        if canned is not None:
            w.write(canned)
            await w.drain()
            return False
        if path == "/trailers-streamed":
            # The head and a first chunk, then (once the proxy has begun to stream) the end.
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Set-Cookie"
                    b"\r\n\r\n5\r\nhello\r\n")
            await w.drain()
            await asyncio.sleep(0.3)
            w.write(b"5\r\nworld\r\n" + _TRAILERS)
            await w.drain()
            return False
        if path == "/garbage-in-later-read":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await w.drain()
            await asyncio.sleep(0.3)
            w.write(b"\x00\x01 not a chunk\r\n\r\n")
            await w.drain()
            return False
        if path == "/reset-before-head":
            _reset(w)
            return False
        if path == "/reset-mid-body":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 5000)
            await w.drain()
            await asyncio.sleep(0.05)
            _reset(w)
            return False
        if path == "/short-body-silent":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"c" * 10)
            await w.drain()
            await _until_closed(r)
            return False
        if path == "/silent":
            await _until_closed(r)
            return False
        if path == "/endless-body":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (65536, b"d" * 65536)
            for _ in range(100000):  # bounded: ~6.5 GB, far more than any client reads
                w.write(chunk)
                await w.drain()
            return False
        if path == "/endless-header":
            w.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
            for _ in range(2000):  # bounded: 128 MB of one header line at most
                w.write(b"e" * 65536)
                await w.drain()
            return False
        raise AssertionError(path)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self.tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.server.wait_closed()


_TRAILERS = (b"0\r\nSet-Cookie: trailer=evil\r\nLocation: http://evil.example/\r\n"
             b"Content-Type: text/evil\r\n\r\n")
# Malformed answers that arrive in one read: nothing has reached the client yet, so 502.
_MALFORMED = {
    "/garbage-after-head": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"\x00\x01 not a chunk\r\n\r\n",
    "/bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\nhello\r\n0\r\n\r\n",
    "/invalid-status-line": b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
    "/head-then-garbage": b"HTTP/1.1 200 OK\r\nX-Fine: yes\r\nthis is no header\r\n\r\n"
                          b"body",
}
# Faults that are one write, after which the upstream closes the connection.
_ANSWER_THEN_CLOSE = {
    **_MALFORMED,
    "/trailers-small": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                       b"Trailer: Set-Cookie, Location, Content-Type\r\n\r\n"
                       b"5\r\nhello\r\n" + _TRAILERS,
    "/garbage": b"SSH-2.0-OpenSSH_9.6\r\nthis is not http\r\n\r\n",
    "/short-body-close": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"b" * 10,
    # ambiguous framing: a desync if passed on
    "/cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked"
                  b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "/duplicate-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n"
                     b"hello!!",
    "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                  b"zz\r\nxx\r\n0\r\n\r\n",
}


async def _until_closed(r: asyncio.StreamReader) -> None:
    """Say nothing until the peer closes (at most 30 s)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(r.read(), 30)


def _reset(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


@pytest.fixture
async def faulty():
    up = await FaultyUpstream().start()
    yield up
    await up.stop()


async def _get(s: aiohttp.ClientSession, url: str, read_limit: int | None = None
               ) -> tuple[int, str]:
    """Status and how the body ended: 'complete', 'cut' or 'enough' (we stopped reading)."""
    async with s.get(url, timeout=aiohttp.ClientTimeout(total=20)) as r:
        got = 0
        try:
            async for chunk in r.content.iter_chunked(65536):
                got += len(chunk)
                if read_limit is not None and got >= read_limit:
                    return r.status, "enough"
        except aiohttp.ClientPayloadError:
            return r.status, "cut"
        return r.status, "complete"


async def test_faults_get_clear_answers_and_resources_return(orchd_factory, faulty):
    gw = orchd_factory(base_config(endpoint("up", faulty.url, timeout=1, retries=0),
                                   circuit_breaker={"failure_threshold": 1000}))
    assert gw.proc is not None
    pid = gw.proc.pid
    base = f"{gw.url}/orchestrator/up"
    async with aiohttp.ClientSession() as s:
        for _ in range(50):  # warm up: imports, pools, buffers
            assert await _get(s, f"{base}/ok") == (200, "complete")
    await asyncio.sleep(0)
    fds0, rss0 = fd_count(pid), rss_kib(pid)

    results: dict[str, tuple[int, str]] = {}
    for _ in range(3):  # several rounds: a leak per fault would add up
        async with aiohttp.ClientSession() as s:
            for path in ("garbage", "reset-before-head", "reset-mid-body", "short-body-close",
                         "short-body-silent", "silent", "endless-header", "bad-chunk",
                         "cl-and-te", "duplicate-cl"):
                results[path] = await _get(s, f"{base}/{path}")
            results["endless-body"] = await _get(s, f"{base}/endless-body",
                                                 read_limit=8 * 1024 * 1024)
    assert results == {
        "garbage": (502, "complete"),
        "reset-before-head": (502, "complete"),
        "reset-mid-body": (200, "cut"),
        "short-body-close": (200, "cut"),
        "short-body-silent": (200, "cut"),
        "silent": (504, "complete"),
        "endless-header": (502, "complete"),
        "bad-chunk": (502, "complete"),  # broken before anything was passed on
        "cl-and-te": (502, "complete"),
        "duplicate-cl": (502, "complete"),
        "endless-body": (200, "enough"),
    }, results

    # The upstream side: every connection orchd opened for these is closed again.
    async def upstream_idle() -> bool:
        return faulty.open <= 1  # at most one pooled keep-alive connection from /ok

    await async_wait_until(upstream_idle, 15, what="orchd to close its upstream connections")

    async def back_to_baseline() -> bool:
        return fd_count(pid) <= fds0 + 1

    await async_wait_until(back_to_baseline, 15, what=f"fds back to {fds0}")
    rss1 = rss_kib(pid)
    assert rss1 < rss0 * 1.25 + 8192, (rss0, rss1)
    async with aiohttp.ClientSession() as s:
        assert await _get(s, f"{base}/ok") == (200, "complete")


async def test_upstream_trailers_never_become_headers(orchd_factory, faulty):
    gw = orchd_factory(base_config(endpoint("up", faulty.url, timeout=5, retries=0)))
    for path in ("trailers-small", "trailers-streamed"):
        answer = await exchange(gw.port, f"GET /orchestrator/up/{path} HTTP/1.1\r\n"
                                         "Host: gw\r\nConnection: close\r\n\r\n".encode())
        assert answer.status == 200, (path, answer)
        head = answer.head.lower()
        for name in (b"set-cookie", b"location"):
            assert b"\r\n" + name + b":" not in head, (path, answer.head)
        # (A listener may add a Content-Type of its own to an answer that has none.)
        assert b"evil" not in head, (path, answer.head)
        assert b"hello" in answer.body, (path, answer.body)


async def test_malformed_answers_get_502_without_a_traceback(orchd_factory, faulty):
    gw = orchd_factory(base_config(endpoint("up", faulty.url, timeout=5, retries=0),
                                   circuit_breaker={"failure_threshold": 1000}))
    base = f"{gw.url}/orchestrator/up"
    async with aiohttp.ClientSession() as s:
        results = {path: await _get(s, f"{base}{path}") for path in _MALFORMED}
        # Garbage after a head that has already been passed on: the answer is cut.
        results["/garbage-in-later-read"] = await _get(s, f"{base}/garbage-in-later-read")
        assert await _get(s, f"{base}/ok") == (200, "complete")
    log = gw.log()
    assert "Traceback" not in log and "Fatal error" not in log, log
    assert results == {**{path: (502, "complete") for path in _MALFORMED},
                       "/garbage-in-later-read": (200, "cut")}, results


def _compiled_modules() -> list[str]:
    """The modules setup.py compiles (its ``COMPILED`` list), as module names."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "COMPILED"
                                                 for t in node.targets)):
            paths = ast.literal_eval(node.value)
            return [p.removesuffix(".py").replace("/", ".") for p in paths]
    raise AssertionError("setup.py has no COMPILED list")


def test_request_path_is_compiled():
    """orchd as the tests start it (``python -m orchd`` from the repository) runs the
    mypyc-compiled request path, unless ORCHD_PURE asks for the pure-Python one."""
    if os.environ.get("ORCHD_PURE"):
        pytest.skip("ORCHD_PURE is set: the pure-Python modules are meant")
    modules = _compiled_modules()
    assert "orchd.upstream" in modules and "orchd.proxy" in modules, modules
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    " \
           "print(m, importlib.import_module(m).__file__)"
    out = subprocess.run([sys.executable, "-c", code, *modules], cwd=str(ROOT),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    files = dict(line.split(" ", 1) for line in out.splitlines())
    pure = sorted(m for m in modules if not re.search(r"\.(so|pyd)$", files[m]))
    if pure and not IN_CI:
        pytest.skip(f"not compiled here (run `make`): {', '.join(pure)}")
    assert not pure, f"these request path modules are not compiled: {files}"
