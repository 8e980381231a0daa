"""Request smuggling and parsing: ambiguous framing is refused with 400 and never forwarded.

Each case sends one malformed request with a second, valid one right behind it on the same
connection (where a desynchronised parser would find a "smuggled" request). The upstream is a
raw asyncio server that records every request it receives: it must see none of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from tests.integration.rawhttp import CountingUpstream, endpoint, exchange, read_answer
from tests.support import Orchd, base_config

P = "/orchestrator/up"
SMUGGLED = f"GET {P}/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
AFTER = f"GET {P}/after HTTP/1.1\r\nHost: gw\r\n\r\n"

CASES = {
    "cl_and_te": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 6\r\n"
                 f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
    "te_and_cl": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                 f"Content-Length: 60\r\n\r\n0\r\n\r\n{SMUGGLED}",
    "duplicate_cl_differing": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n"
                              f"Content-Length: {len(SMUGGLED)}\r\n\r\n{SMUGGLED}",
    "duplicate_cl_equal": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n"
                          "Content-Length: 3\r\n\r\nabc",
    "cl_list": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 3, 3\r\n\r\nabc",
    "cl_plus_sign": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nContent-Length: +3\r\n\r\nabc",
    "cl_hex": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 0x3\r\n\r\nabc",
    "cl_negative": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nContent-Length: -1\r\n\r\nabc",
    "te_obfuscated_value": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n"
                           f"\r\n0\r\n\r\n{SMUGGLED}",
    "te_chunked_not_last": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\n"
                           f"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}",
    "te_space_before_colon": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding : chunked"
                             f"\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}",
    "te_duplicated": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                     f"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n{SMUGGLED}",
    "obs_fold": f"GET {P}/a HTTP/1.1\r\nHost: gw\r\nX-Folded: one\r\n two\r\n\r\n",
    "obs_fold_te": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nX-A: b\r\n Transfer-Encoding: chunked"
                   f"\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}",
    "bare_lf": f"GET {P}/a HTTP/1.1\nHost: gw\n\n",
    "bare_cr_in_value": f"GET {P}/a HTTP/1.1\r\nHost: gw\r\nX-A: b\rX-B: c\r\n\r\n",
    "nul_in_value": f"GET {P}/a HTTP/1.1\r\nHost: gw\r\nX-A: b\x00c\r\n\r\n",
    "chunk_size_invalid": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                          "\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk_size_overflow": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked"
                           "\r\n\r\nffffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
    "chunk_size_negative": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked"
                           "\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
    "chunk_missing_crlf": f"POST {P}/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked"
                          f"\r\n\r\n3\r\nabcX{SMUGGLED}",
    "absolute_form": f"GET http://gw{P}/a HTTP/1.1\r\nHost: gw\r\n\r\n",
    "absolute_form_host_mismatch": f"GET http://evil.example{P}/a HTTP/1.1\r\n"
                                   "Host: gw\r\n\r\n",
    "duplicate_host": f"GET {P}/a HTTP/1.1\r\nHost: gw\r\nHost: evil.example\r\n\r\n",
    "missing_host": f"GET {P}/a HTTP/1.1\r\n\r\n",
    "host_with_userinfo": f"GET {P}/a HTTP/1.1\r\nHost: user@evil.example\r\n\r\n",
    "host_with_path": f"GET {P}/a HTTP/1.1\r\nHost: gw/evil\r\n\r\n",
    "space_in_header_name": f"GET {P}/a HTTP/1.1\r\nHost: gw\r\nX Bad: 1\r\n\r\n",
    "bad_version": f"GET {P}/a HTTP/1.2x\r\nHost: gw\r\n\r\n",
    "space_in_target": f"GET {P}/a b HTTP/1.1\r\nHost: gw\r\n\r\n",
}


@pytest.fixture(scope="module")
def shared_orchd() -> Iterator[Orchd]:
    """One orchd for the module (each case points its endpoint at a fresh upstream)."""
    gw = Orchd(base_config())
    try:
        gw.start()
        yield gw
    finally:
        gw.cleanup()


@pytest.fixture
async def gateway(shared_orchd):
    gw = shared_orchd
    up = await CountingUpstream().start()
    config = {"config": endpoint("up", up.url)}
    async with aiohttp.ClientSession() as s:
        async with s.delete(f"{gw.url}/registry/endpoints/up"):
            pass
        async with s.post(f"{gw.url}/registry/endpoints", json=config) as r:
            assert r.status == 201, await r.text()
    yield gw, up
    await up.stop()


@pytest.mark.parametrize("case", sorted(CASES))
async def test_ambiguous_request_is_refused_and_never_forwarded(gateway, case):
    gw, up = gateway
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write((CASES[case] + AFTER).encode("latin-1"))
        await writer.drain()
        answer = await read_answer(reader)
        rest = b"" if reader.at_eof() else await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer.status == 400, (case, answer.head, answer.body)
    # Nothing after the bad request is answered: the connection closes.
    assert rest == b"", rest
    # A request that reaches orchd after the bad one shows that nothing was forwarded.
    check = await exchange(gw.port, f"GET {P}/probe HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    assert check.status == 200
    assert [r.split(b" ", 2)[1] for r in up.raw] == [b"/probe"], up.raw


async def test_pipelined_requests_are_forwarded_exactly_once_each(gateway):
    gw, up = gateway
    body = SMUGGLED  # looks like a request, but it is this POST's body
    data = (f"POST {P}/one HTTP/1.1\r\nHost: gw\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            f"POST {P}/two HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"5\r\nhello\r\n0\r\n\r\n{AFTER}")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(data.encode())
        await writer.drain()
        answers = [await read_answer(reader) for _ in range(3)]
    finally:
        writer.close()
    assert [a.status for a in answers] == [200, 200, 200]
    targets = [r.split(b" ", 2)[1] for r in up.raw]
    assert targets == [b"/one", b"/two", b"/after"], up.raw
    assert up.raw[0].endswith(body.encode())
    assert up.raw[1].endswith(b"hello")
