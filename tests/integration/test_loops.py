"""A request that has already passed through this orchd is refused with 508, not looped.

Every forwarded request (WebSocket upgrades included) carries a ``Via`` entry naming this
orchd instance; one that arrives with it already there is answered 508 Loop Detected.
"""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
from aiohttp import web

from tests.support import base_config, free_port

VIA_ENTRY = re.compile(r"1\.1 (orchd-[0-9a-f]+)")
UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def _loop_endpoint(port: int) -> dict[str, Any]:
    return {"name": "loop", "url": f"http://127.0.0.1:{port}/orchestrator/loop",
            "retries": 0, "timeout": 10, "circuit_breaker": {"failure_threshold": 1000}}


def _hops(daemon: Any) -> int:
    """How many requests for the looping path reached ``daemon``: its access lines, which
    are batched, so counted once it has stopped (and written them all)."""
    daemon.stop()
    return sum(1 for line in daemon.log().splitlines()
               if "orchd.access" in line and '"GET /orchestrator/loop/x"' in line)


async def _assert_508(r: aiohttp.ClientResponse) -> dict[str, Any]:
    text = await r.text()
    assert r.status == 508, text
    assert r.headers["Content-Type"].startswith("application/problem+json"), text
    doc: dict[str, Any] = json.loads(text)
    assert doc["status"] == 508 and doc["title"], doc
    return doc


async def test_two_gateways_pointing_at_each_other_get_508(orchd_factory, http):
    port_a, port_b = free_port(), free_port()
    a = orchd_factory(base_config(_loop_endpoint(port_b)), port=port_a)
    b = orchd_factory(base_config(_loop_endpoint(port_a)), port=port_b)
    async with http.get(f"{a.url}/orchestrator/loop/x",
                        timeout=aiohttp.ClientTimeout(total=30)) as r:
        await _assert_508(r)
    # A -> B -> A, which sees itself in Via: two requests at A, one at B, no more.
    assert (_hops(a), _hops(b)) == (2, 1), (a.log(), b.log())


async def test_a_gateway_pointing_at_itself_is_refused_before_it_loops(orchd_factory, http):
    # The port comes from the command line, so the file's own check cannot see it; the
    # connect-time check refuses orchd's own listening address even where a rule allows the
    # host, and the request never reaches the gateway a second time.
    port = free_port()
    gw = orchd_factory(base_config(_loop_endpoint(port),
                                   server={"allowed_upstreams": ["127.0.0.1"]}), port=port)
    async with http.get(f"{gw.url}/orchestrator/loop/x",
                        timeout=aiohttp.ClientTimeout(total=30)) as r:
        text = await r.text()
        assert r.status == 502, text
        assert json.loads(text)["reason"] == "upstream_refused"
    assert _hops(gw) == 1, gw.log()
    assert f"port {port} is this orchd's own listening address" in gw.log()


def _recording_app(seen: list[dict[str, str]]) -> web.Application:
    async def any_path(request: web.Request) -> web.StreamResponse:
        seen.append({"via": ", ".join(request.headers.getall("Via", []))})
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.close()
            return ws
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_path)
    return app


async def test_via_is_appended_and_a_foreign_via_passes(orchd_factory, upstream_factory, http):
    seen: list[dict[str, str]] = []
    up = await upstream_factory(_recording_app(seen))
    gw = orchd_factory(base_config({"name": "svc", "url": up.url, "retries": 0}))
    base = f"{gw.url}/orchestrator/svc"

    async with http.get(f"{base}/plain") as r:
        assert r.status == 200
    token_match = VIA_ENTRY.fullmatch(seen[-1]["via"])
    assert token_match, seen
    token = token_match.group(1)

    async with http.get(f"{base}/through", headers={"Via": "1.0 edge-proxy (Squid)"}) as r:
        assert r.status == 200
    assert seen[-1]["via"] == f"1.0 edge-proxy (Squid), 1.1 {token}", seen

    async with http.ws_connect(f"{base}/ws") as ws:
        await ws.receive()
    assert seen[-1]["via"] == f"1.1 {token}", seen  # WebSocket upgrades carry it too

    hits = len(seen)
    # This instance's own entry, anywhere in the list: refused, the upstream never asked.
    for via in (f"1.1 {token}", f"1.0 edge, 1.1 {token}", f"1.1 {token} (orchd)"):
        async with http.get(f"{base}/again", headers={"Via": via}) as r:
            await _assert_508(r)
        async with http.get(f"{base}/ws", headers={**UPGRADE, "Via": via}) as r:
            await _assert_508(r)
    assert len(seen) == hits
