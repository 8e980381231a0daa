"""The request path (DESIGN section 5) against a real orchd and real aiohttp upstreams.

One gateway and one upstream serve the whole module; every test looks at what the upstream
really received and what the client really got back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from tests.support import Orchd, Upstream, base_config, free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

ADMIN_TOKEN = "gw-admin-7f3a9c"
MAX_BODY = 8 * 1024 * 1024
BIG = 5 * 1024 * 1024
PROBLEM = "application/problem+json"


class Backend:
    """The upstream's own state: what it saw and what the tests release."""

    def __init__(self) -> None:
        self.peers: list[Any] = []
        self.release_sse = asyncio.Event()
        self.release_down = asyncio.Event()
        self.first_up_chunk = asyncio.Event()
        self.uploads: list[dict[str, Any]] = []
        self.paths: list[str] = []


def backend_app(b: Backend) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/base/big")
    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = BIG
        await resp.prepare(request)
        block = bytes(range(256)) * 256  # 64 KiB
        for _ in range(BIG // len(block)):
            await resp.write(block)
        await resp.write_eof()
        return resp

    @routes.get("/base/stream-down")
    async def stream_down(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)  # chunked: no Content-Length
        await resp.write(b"first-chunk;")
        async with asyncio.timeout(20):
            await b.release_down.wait()
        await resp.write(b"second-chunk")
        await resp.write_eof()
        return resp

    @routes.post("/base/upload")
    async def upload(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        record: dict[str, Any] = {"chunked": request.headers.get("Transfer-Encoding"),
                                  "content_length": request.content_length}
        try:
            async for chunk in request.content.iter_any():
                if size == 0:
                    b.first_up_chunk.set()
                size += len(chunk)
                digest.update(chunk)
        except Exception as exc:  # the gateway aborted the request
            record.update(outcome="aborted", size=size, error=type(exc).__name__)
            b.uploads.append(record)
            return web.Response(status=400, text="aborted")
        if request.content.is_eof() and (request.content_length in (None, size)):
            record.update(outcome="complete", size=size)
        else:
            record.update(outcome="aborted", size=size)
        b.uploads.append(record)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    @routes.get("/base/redirect")
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/base/elsewhere")

    @routes.get("/base/gzip")
    async def gz(request: web.Request) -> web.Response:
        body = gzip.compress(b'{"hello": "world"}' * 200, mtime=0)
        return web.Response(body=body, headers={"Content-Encoding": "gzip",
                                                "Content-Type": "application/json"})

    @routes.get("/base/hop")
    async def hop(request: web.Request) -> web.Response:
        return web.Response(text="hop", headers={
            "Connection": "X-Secret-Hop", "X-Secret-Hop": "1", "Keep-Alive": "timeout=99",
            "Proxy-Authenticate": "Basic", "X-Kept": "yes"})

    @routes.get("/base/ws")
    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str(f"echo:{msg.data}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(msg.data[::-1])
        return sock

    @routes.get("/base/sse")
    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(b"id: 1\ndata: first\n\n")
        async with asyncio.timeout(20):
            await b.release_sse.wait()
        await resp.write(b"id: 2\ndata: second\n\n")
        await resp.write_eof()
        return resp

    @routes.get("/base/slow")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(15)
        return web.Response(text="too late")

    @routes.get("/base/peer")
    async def peer(request: web.Request) -> web.Response:
        assert request.transport is not None
        b.peers.append(request.transport.get_extra_info("peername"))
        return web.Response(text="ok")

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({
            "method": request.method,
            "raw_path": request.raw_path,
            "path": request.raw_path.split("?", 1)[0],
            "query_string": request.query_string,
            "query": [[k, v] for k, v in request.query.items()],
            "headers": dict(request.headers),
            "header_list": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("latin-1"),
        })

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        b.paths.append(request.raw_path)
        return await handler(request)

    app = web.Application(client_max_size=1024**3, middlewares=[record])
    app.add_routes(routes)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


class Env:
    def __init__(self, gw: Orchd, up: Upstream, backend: Backend) -> None:
        self.gw, self.up, self.b = gw, up, backend

    def url(self, path: str) -> str:
        return f"{self.gw.url}/orchestrator/{path}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env() -> AsyncIterator[Env]:
    backend = Backend()
    up = await Upstream(backend_app(backend)).start()
    dead = f"http://127.0.0.1:{free_port()}"
    every = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    config = base_config(
        {"name": "echo", "url": f"{up.url}/base", "methods": every, "retries": 0},
        {"name": "users", "url": f"{up.url}/users", "version": "v1"},
        {"name": "getonly", "url": f"{up.url}/base"},
        {"name": "slow", "url": f"{up.url}/base", "timeout": 1, "retries": 0},
        {"name": "refused", "url": dead, "retries": 0},
        {"name": "off", "url": f"{up.url}/base", "disabled": True},
        {"name": "bearer", "url": f"{up.url}/base", "auth_type": "bearer",
         "require_auth": True},
        {"name": "basic", "url": f"{up.url}/base", "auth_type": "basic", "require_auth": True},
        {"name": "apikey", "url": f"{up.url}/base", "auth_type": "api_key",
         "require_auth": True},
        {"name": "root", "url": up.url, "methods": ["GET", "POST"]},
        server={"max_body_size": MAX_BODY, "admin_token": ADMIN_TOKEN},
        circuit_breaker={"failure_threshold": 1000},
    )
    gw = Orchd(config)
    try:
        gw.start()
        yield Env(gw, up, backend)
    finally:
        gw.cleanup()
        await up.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def assert_problem(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith(PROBLEM)
    body = await resp.json(content_type=None)
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["title"] and body["detail"]
    assert resp.headers.get("X-Request-ID")
    return body


async def raw_http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes exactly as given (no client normalisation) and read one answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(15):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k:
                    headers[k.strip().lower()] = v.strip()
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            else:
                body = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(lines[0].split()[1]), headers, body


# ------------------------------------------------------------------ paths and queries


async def test_base_path_kept_and_query_order(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(env.url("echo/items/1?a=1&b=2&a=3&a=&c=%20x")) as r:
        assert r.status == 200
        got = await r.json()
    assert got["raw_path"] == "/base/items/1?a=1&b=2&a=3&a=&c=%20x"
    assert got["query"] == [["a", "1"], ["b", "2"], ["a", "3"], ["a", ""], ["c", " x"]]


async def test_root_of_endpoint_and_trailing_slash(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(env.url("echo")) as r:
        assert (await r.json())["path"] == "/base"
    async with http.get(env.url("echo/")) as r:
        assert (await r.json())["path"] == "/base/"
    async with http.get(env.url("root/x/y")) as r:
        assert (await r.json())["path"] == "/x/y"


@pytest.mark.parametrize("evil", [
    "/orchestrator/echo/../../etc/passwd",
    "/orchestrator/echo/a/../../../x",
    "/orchestrator/echo/%2e%2e/%2e%2e/x",
    "/orchestrator/echo/a/%2E%2e/%2e./x",
    "/orchestrator/echo/a%2f..%2f..%2fx",
    "/orchestrator/echo/%2f..%2f..%2fx",
    "/orchestrator/echo/..%2f..%2fx",
    "/orchestrator/echo/a%5c..%5c..%5cx",
    "/orchestrator/echo/./../x",
    "/orchestrator/root/../base/x",
])
async def test_path_escape_refused_or_kept_under_base(env: Env, evil: str) -> None:
    before = len(env.b.paths)
    status, headers, body = await raw_http(
        env.gw.port, f"GET {evil} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
    if status == 200:
        got = json.loads(body)
        base = "/" if "/root/" in evil else "/base/"
        assert got["path"].startswith(base)
        assert ".." not in [unquote(p) for p in re.split(r"/|%2f|%5c", got["path"], flags=re.I)]
    else:
        assert status in (400, 404), body
        assert headers["content-type"].startswith(PROBLEM)
        problem = json.loads(body)
        assert problem["status"] == status and problem["detail"]
    # Whatever the answer, nothing above the base path reached the upstream.
    for path in env.b.paths[before:]:
        decoded = unquote(unquote(path.split("?", 1)[0]))
        assert ".." not in decoded.replace("\\", "/").split("/"), path


async def test_dot_segments_are_normalised(env: Env, http: aiohttp.ClientSession) -> None:
    status, _, body = await raw_http(
        env.gw.port, b"GET /orchestrator/echo/a/./b/%2e/c HTTP/1.1\r\nHost: gw\r\n"
                     b"Connection: close\r\n\r\n")
    assert status == 200
    assert json.loads(body)["path"] == "/base/a/b/c"


# ------------------------------------------------------------------ bodies both ways


async def test_large_bodies_stream_both_ways(env: Env, http: aiohttp.ClientSession) -> None:
    payload = hashlib.sha256(b"seed").digest() * (BIG // 32)
    async with http.post(env.url("echo/upload"), data=io.BytesIO(payload)) as r:
        assert r.status == 200
        got = await r.json()
    assert got == {"size": BIG, "sha256": hashlib.sha256(payload).hexdigest()}
    assert env.b.uploads[-1]["content_length"] == BIG
    async with http.get(env.url("echo/big")) as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(BIG)
        data = await r.read()
    assert data == (bytes(range(256)) * 256) * (BIG // 65536)


async def test_chunked_request_body_streams(env: Env, http: aiohttp.ClientSession) -> None:
    env.b.first_up_chunk.clear()
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        first = b"x" * 1000
        sent.update(first)
        yield first
        # The upstream sees the first chunk before the client sends the rest: streamed.
        async with asyncio.timeout(15):
            await env.b.first_up_chunk.wait()
        for i in range(20):
            chunk = bytes([i]) * 50_000
            sent.update(chunk)
            yield chunk

    async with http.post(env.url("echo/upload"), data=body()) as r:
        assert r.status == 200
        got = await r.json()
    assert got == {"size": 1_001_000, "sha256": sent.hexdigest()}
    assert env.b.uploads[-1]["chunked"] == "chunked"


async def test_chunked_response_streams_incrementally(env: Env,
                                                      http: aiohttp.ClientSession) -> None:
    env.b.release_down.clear()
    async with http.get(env.url("echo/stream-down")) as r:
        assert r.status == 200
        assert "Content-Length" not in r.headers
        async with asyncio.timeout(15):
            first = await r.content.readexactly(len(b"first-chunk;"))
        assert first == b"first-chunk;"  # read while the upstream still holds the rest
        env.b.release_down.set()
        assert await r.read() == b"second-chunk"


async def test_sse_events_arrive_incrementally(env: Env, http: aiohttp.ClientSession) -> None:
    env.b.release_sse.clear()
    async with http.get(env.url("echo/sse"), headers={"Accept": "text/event-stream"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        async with asyncio.timeout(15):
            first = await r.content.readuntil(b"\n\n")
        assert first == b"id: 1\ndata: first\n\n"
        env.b.release_sse.set()
        async with asyncio.timeout(15):
            second = await r.content.readuntil(b"\n\n")
        assert second == b"id: 2\ndata: second\n\n"


async def test_websocket_echo(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(env.url("echo/ws?room=1")) as ws:
        await ws.send_str("hello")
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT and msg.data == "echo:hello"
        await ws.send_bytes(b"\x01\x02\x03")
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.BINARY and msg.data == b"\x03\x02\x01"
    assert "/base/ws?room=1" in env.b.paths


# ------------------------------------------------------------------ connections and headers


async def test_upstream_connections_are_pooled(env: Env, http: aiohttp.ClientSession) -> None:
    env.b.peers.clear()
    for _ in range(50):
        async with http.get(env.url("echo/peer")) as r:
            assert r.status == 200
            await r.read()
    assert len(env.b.peers) == 50
    assert len(set(env.b.peers)) <= 5, set(env.b.peers)


async def test_hop_by_hop_request_headers_dropped(env: Env) -> None:
    head = (
        "GET /orchestrator/echo/h HTTP/1.1\r\nHost: gw.example\r\n"
        "Connection: keep-alive, X-Drop-Me\r\nX-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\n"
        "TE: trailers\r\nTrailer: X-T\r\nProxy-Authorization: Basic eA==\r\n"
        "Proxy-Connection: keep-alive\r\nX-End-To-End: kept\r\n\r\n"
        "GET /orchestrator/echo/h2 HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", env.gw.port)
    try:
        writer.write(head.encode())
        await writer.drain()
        async with asyncio.timeout(15):
            data = await reader.read()
    finally:
        writer.close()
    # Two answers on one connection: the first request's Connection header named only
    # hop-by-hop tokens, so the client connection itself stayed usable.
    assert data.count(b"HTTP/1.1 200") == 2
    got = json.loads(_first_json(data.split(b"\r\n\r\n", 1)[1]))
    sent = {k.lower() for k in got["headers"]}
    for name in ("connection", "x-drop-me", "keep-alive", "te", "trailer",
                 "proxy-authorization", "proxy-connection"):
        assert name not in sent, name
    assert got["headers"]["X-End-To-End"] == "kept"


def _first_json(data: bytes) -> bytes:
    decoder = json.JSONDecoder()
    text = data.decode("latin-1")
    start = text.index("{")
    _obj, end = decoder.raw_decode(text, start)
    return text[start:end].encode("latin-1")


async def test_hop_by_hop_response_headers_dropped(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(env.url("echo/hop")) as r:
        assert r.status == 200
        assert r.headers["X-Kept"] == "yes"
        for name in ("X-Secret-Hop", "Keep-Alive", "Proxy-Authenticate"):
            assert name not in r.headers, name
        assert r.headers.get("Connection", "").lower() != "x-secret-hop"


async def test_forwarded_headers(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(env.url("echo/f"), headers={"X-Forwarded-For": "10.1.2.3",
                                                   "X-Forwarded-Proto": "https",
                                                   "X-Forwarded-Host": "spoof.example"}) as r:
        got = await r.json()
    h = got["headers"]
    assert h["X-Forwarded-For"] == "10.1.2.3, 127.0.0.1"
    assert h["X-Forwarded-Proto"] == "http"
    assert h["X-Forwarded-Host"] == f"127.0.0.1:{env.gw.port}"
    async with http.get(env.url("echo/f")) as r:
        assert (await r.json())["headers"]["X-Forwarded-For"] == "127.0.0.1"


async def test_request_id_kept_or_generated(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(env.url("echo/rid"), headers={"X-Request-ID": "req-abc-123"}) as r:
        got = await r.json()
        assert r.headers["X-Request-ID"] == "req-abc-123"
    assert got["headers"]["X-Request-ID"] == "req-abc-123"
    async with http.get(env.url("echo/rid")) as r:
        got = await r.json()
        rid = r.headers["X-Request-ID"]
    assert len(rid) >= 16
    assert got["headers"]["X-Request-ID"] == rid
    async with http.get(env.url("echo/rid")) as r:
        assert r.headers["X-Request-ID"] != rid


async def test_endpoint_id_and_response_time(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(env.url("echo/t")) as r:
        assert r.headers["X-Endpoint-ID"] == "echo"
        assert re.fullmatch(r"\d+(\.\d+)?ms", r.headers["X-Response-Time"])


async def test_credentials_pass_through_and_admin_token_never_forwarded(
        env: Env, http: aiohttp.ClientSession) -> None:
    sent = {"Authorization": "Bearer backend-token-1", "Cookie": "session=abc; theme=dark",
            "X-API-Key": "key-42"}
    async with http.get(env.url("echo/cred"), headers=sent) as r:
        assert r.status == 200
        got = await r.json()
    for k, v in sent.items():
        assert got["headers"][k] == v
    async with http.get(env.url("echo/cred")) as r:
        got = await r.json()
    assert "Authorization" not in got["headers"]
    everything = json.dumps(env.b.paths) + json.dumps(got)
    assert ADMIN_TOKEN not in everything


async def test_proxy_never_needs_the_admin_token(env: Env, http: aiohttp.ClientSession) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        async with http.request(method, env.url("echo/w"), data=b"x") as r:
            assert r.status == 200, method
            assert (await r.json())["method"] == method


async def test_redirect_returned_not_followed(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(env.url("echo/redirect"), allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == "/base/elsewhere"
    assert "/base/elsewhere" not in env.b.paths


async def test_gzip_body_passes_through(env: Env, http: aiohttp.ClientSession) -> None:
    expected = gzip.compress(b'{"hello": "world"}' * 200, mtime=0)
    async with http.get(env.url("echo/gzip"), headers={"Accept-Encoding": "gzip"}) as r:
        assert r.status == 200
        assert r.headers["Content-Encoding"] == "gzip"
        assert await r.read() == expected


async def test_head_and_version_routing(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(env.url("v1/users/42")) as r:
        assert r.status == 200
        assert (await r.json())["path"] == "/users/42"
        assert r.headers["X-Endpoint-ID"] == "users"
    async with http.get(env.url("users/42")) as r:
        assert (await r.json())["path"] == "/users/42"
    async with http.get(env.url("v2/users/42")) as r:
        await assert_problem(r, 404)
    async with http.head(env.url("getonly/x")) as r:
        assert r.status == 200


# ------------------------------------------------------------------ gateway errors


async def test_unknown_endpoint_404(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(env.url("nope/x")) as r:
        body = await assert_problem(r, 404)
    assert "nope" in body["detail"]


async def test_method_not_allowed_405(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.post(env.url("getonly/x"), data=b"{}") as r:
        await assert_problem(r, 405)
        allow = {m.strip() for m in r.headers["Allow"].split(",")}
        assert allow == {"GET", "HEAD"}
        assert r.headers["X-Endpoint-ID"] == "getonly"


async def test_require_auth_401(env: Env, http: aiohttp.ClientSession) -> None:
    cases = [
        ("bearer", {}, 401), ("bearer", {"Authorization": "Basic dTpw"}, 401),
        ("bearer", {"Authorization": "Bearer "}, 401),
        ("bearer", {"Authorization": "Bearer t0k"}, 200),
        ("basic", {}, 401), ("basic", {"Authorization": "Bearer t0k"}, 401),
        ("basic", {"Authorization": "Basic dXNlcjpwdw=="}, 200),
        ("apikey", {}, 401), ("apikey", {"X-API-Key": "k"}, 200),
    ]
    for name, headers, status in cases:
        async with http.get(env.url(f"{name}/x"), headers=headers) as r:
            if status == 401:
                await assert_problem(r, 401)
                assert r.headers.get("WWW-Authenticate")
            else:
                assert r.status == 200, (name, headers)
                got = await r.json()
                for k, v in headers.items():
                    assert got["headers"][k] == v


async def test_body_too_large_by_content_length_413(env: Env) -> None:
    before = len(env.b.uploads)
    status, headers, body = await raw_http(
        env.gw.port,
        f"POST /orchestrator/echo/upload HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode() + b"x" * 1000)
    assert status == 413
    assert headers["content-type"].startswith(PROBLEM)
    assert json.loads(body)["status"] == 413
    assert len(env.b.uploads) == before  # the upstream never saw it


async def test_body_too_large_while_streaming_413(env: Env, http: aiohttp.ClientSession) -> None:
    before = len(env.b.uploads)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY // 65536 + 40):
            yield b"z" * 65536

    try:
        async with http.post(env.url("echo/upload"), data=body()) as r:
            await assert_problem(r, 413)
    except aiohttp.ClientOSError:  # pragma: no cover - the gateway may close while we write
        pytest.fail("the gateway reset the connection instead of answering 413")

    async def upstream_done() -> bool:
        return len(env.b.uploads) > before

    async with asyncio.timeout(15):
        while not await upstream_done():
            await asyncio.sleep(0.05)
    record = env.b.uploads[-1]
    assert record["outcome"] == "aborted", record
    assert record["size"] <= MAX_BODY


async def test_upstream_refused_502(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(env.url("refused/x")) as r:
        body = await assert_problem(r, 502)
        assert r.headers["X-Endpoint-ID"] == "refused"
        rid = r.headers["X-Request-ID"]
    assert body["reason"] == "upstream_refused"
    assert "refused the connection" in body["detail"] and rid in body["detail"]
    assert "127.0.0.1" not in body["detail"]  # the upstream's address is in the log only


async def test_disabled_503(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(env.url("off/x")) as r:
        await assert_problem(r, 503)
        assert r.headers.get("Retry-After")


async def test_timeout_504(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(env.url("slow/slow")) as r:
        body = await assert_problem(r, 504)
        assert r.headers["X-Endpoint-ID"] == "slow"
    assert "1s" in body["detail"] and body["reason"] == "upstream_timeout"
    assert env.up.url not in body["detail"]


async def test_gateway_still_serves_after_bad_input(env: Env,
                                                    http: aiohttp.ClientSession) -> None:
    async with http.get(env.url("echo/after")) as r:
        assert r.status == 200
    async with http.get(env.url("v1/users/after")) as r:
        assert r.status == 200
