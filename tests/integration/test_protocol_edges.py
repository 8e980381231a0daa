"""Request lines and framing the public port does not take: same answer on both listeners.

A proxied path is served by orchd's own listener (orchd/front.py) and an admin path by
aiohttp's (orchd/aiohttp_server.py); a request either of them cannot honour gets the same problem
document from both: HTTP/0.9 and a major version other than 1 are 505, a fragment in the
request target is 400, and a transfer coding other than ``chunked`` alone is 501 (RFC 9112
section 6.1), the connection closing after it. Nothing of such a request reaches the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from tests.integration.rawhttp import (
    CountingUpstream,
    connect,
    endpoint,
    read_answer,
    wait_closed_by_peer,
)
from tests.support import Orchd, base_config

PATHS = {"proxied": "/orchestrator/up/x", "admin": "/registry/endpoints"}

CASES: dict[str, tuple[str, int]] = {
    "http09": ("GET {path}\r\n\r\n", 505),
    "http09_one_line": ("GET {path}\r\n", 505),  # as HTTP/0.9 clients send it
    "http09_versioned": ("GET {path} HTTP/0.9\r\nHost: gw\r\n\r\n", 505),
    "http20_line_only": ("GET {path} HTTP/2.0\r\n", 505),
    "http20": ("GET {path} HTTP/2.0\r\nHost: gw\r\n\r\n", 505),
    "http30": ("GET {path} HTTP/3.0\r\nHost: gw\r\n\r\n", 505),
    "fragment": ("GET {path}#frag HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
    "fragment_after_query": ("GET {path}?a=1#frag HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
    "te_gzip_chunked": ("POST {path} HTTP/1.1\r\nHost: gw\r\n"
                        "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    # Repeated, the field is refused as ambiguous framing (see test_smuggling.py).
    "te_gzip_chunked_split": ("POST {path} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip\r\n"
                              "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
}


@pytest.fixture(scope="module")
def shared_orchd() -> AsyncIterator[Orchd]:
    gw = Orchd(base_config())
    try:
        gw.start()
        yield gw  # type: ignore[misc]
    finally:
        gw.cleanup()


@pytest.fixture
async def gateway(shared_orchd: Orchd) -> AsyncIterator[tuple[Orchd, CountingUpstream]]:
    import aiohttp

    up = await CountingUpstream().start()
    async with aiohttp.ClientSession() as s:
        async with s.delete(f"{shared_orchd.url}/registry/endpoints/up"):
            pass
        async with s.post(f"{shared_orchd.url}/registry/endpoints",
                          json={"config": endpoint("up", up.url)}) as r:
            assert r.status == 201, await r.text()
    yield shared_orchd, up
    await up.stop()


@pytest.mark.parametrize("where", sorted(PATHS))
@pytest.mark.parametrize("case", sorted(CASES))
async def test_unsupported_request_gets_its_problem_on_both_listeners(gateway, case, where):
    gw, up = gateway
    template, status = CASES[case]
    path = PATHS[where]
    reader, writer = await connect(gw.port)
    try:
        writer.write(template.format(path=path).encode())
        await writer.drain()
        answer = await read_answer(reader)
        assert answer.status == status, (case, where, answer.head, answer.body)
        rest = await wait_closed_by_peer(reader, 5)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert answer.status == status, (case, where, answer.head, answer.body)
    assert answer.head.startswith(b"HTTP/1."), answer.head
    assert b"application/problem+json" in answer.head.lower(), answer.head
    problem = json.loads(answer.body)
    assert problem["status"] == status and problem["detail"], problem
    assert rest == b"", rest  # and the connection ended (wait_closed_by_peer returned)
    await asyncio.sleep(0)
    assert up.raw == [], up.raw  # nothing was forwarded
