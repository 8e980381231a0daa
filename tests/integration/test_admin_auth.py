"""Admin trust on TCP: the bearer admin token, loopback-only without one, the control socket."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import aiohttp

from orchd.api import middleware
from tests.support import Orchd, base_config

TOKEN = "adm-5e2b7d1c9f"
NO_TOKEN_WARNING = "no server.admin_token is set"


def reg(name: str, url: str) -> dict[str, Any]:
    return {"config": {"name": name, "url": url}}


async def test_admin_token_required_for_writes(orchd_factory: Callable[..., Orchd],
                                               upstream_factory: Any,
                                               http: aiohttp.ClientSession) -> None:
    up = await upstream_factory()
    gw = orchd_factory(base_config({"name": "cfg", "url": up.url, "methods": ["GET", "POST"]},
                                   server={"admin_token": "${ORCH_TEST_ADMIN_TOKEN}"}),
                       env={"ORCH_TEST_ADMIN_TOKEN": TOKEN})
    url = f"{gw.url}/registry/endpoints"
    async with http.post(url, json=reg("a", up.url)) as r:
        assert r.status == 401
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    for wrong in (f"Bearer {TOKEN}x", "Bearer nope", f"Bearer {TOKEN[:-1]}"):
        async with http.post(url, json=reg("a", up.url), headers={"Authorization": wrong}) as r:
            assert r.status == 403, wrong
            assert (await r.json(content_type=None))["status"] == 403
    for scheme in (f"Basic {TOKEN}", TOKEN, "Bearer"):
        async with http.post(url, json=reg("a", up.url), headers={"Authorization": scheme}) as r:
            assert r.status == 401, scheme
    good = {"Authorization": f"Bearer {TOKEN}"}
    async with http.post(url, json=reg("a", up.url), headers=good) as r:
        assert r.status == 201
    for method, path in (("PUT", "/registry/endpoints/a/status"),
                         ("DELETE", "/registry/endpoints/a"),
                         ("POST", "/config/reload")):
        async with http.request(method, f"{gw.url}{path}", json={"status": "disabled"}) as r:
            assert r.status == 401, (method, path)
    async with http.put(f"{gw.url}/registry/endpoints/a/status", json={"status": "disabled"},
                        headers=good) as r:
        assert r.status == 200
    # reads are open
    for path in ("/registry/endpoints", "/registry/endpoints/a", "/registry/stats", "/health",
                 "/health/ready", "/router/routes", "/"):
        async with http.get(f"{gw.url}{path}") as r:
            assert r.status == 200, path
    # the proxy never asks for the admin token, and never forwards it
    async with http.post(f"{gw.url}/orchestrator/cfg/x", data=b"hi") as r:
        assert r.status == 200
        assert TOKEN not in await r.text()
    async with http.post(f"{gw.url}/orchestrator/cfg/x", headers={"Authorization": "Bearer b"},
                         data=b"hi") as r:
        assert (await r.json())["headers"]["Authorization"] == "Bearer b"
    assert NO_TOKEN_WARNING not in gw.log()
    assert TOKEN not in gw.log()
    assert TOKEN not in (gw.state_dir / "registry.json").read_text()


async def test_no_token_loopback_allowed_and_warned(orchd_factory: Callable[..., Orchd],
                                                    upstream_factory: Any,
                                                    http: aiohttp.ClientSession) -> None:
    up = await upstream_factory()
    gw = orchd_factory(base_config(server={"admin_token": "${ORCH_UNSET_TOKEN:-}"}))
    assert NO_TOKEN_WARNING in gw.log()
    async with http.post(f"{gw.url}/registry/endpoints", json=reg("b", up.url)) as r:
        assert r.status == 201  # the test client is on loopback
    async with http.delete(f"{gw.url}/registry/endpoints/b") as r:
        assert r.status == 200


async def test_control_socket_needs_no_token(orchd_factory: Callable[..., Orchd],
                                             upstream_factory: Any) -> None:
    up = await upstream_factory()
    gw = orchd_factory(base_config(server={"admin_token": TOKEN}))
    assert gw.socket.exists()
    assert gw.socket.stat().st_mode & 0o777 == 0o660
    conn = aiohttp.UnixConnector(path=str(gw.socket))
    async with aiohttp.ClientSession(connector=conn) as sock:
        async with sock.post("http://orchd/registry/endpoints", json=reg("c", up.url)) as r:
            assert r.status == 201
        async with sock.get("http://orchd/registry/endpoints/c") as r:
            assert (await r.json())["source"] == "api"
    async with aiohttp.ClientSession() as http, \
            http.get(f"{gw.url}/orchestrator/c/x") as r:
        assert r.status == 200


def test_token_compared_in_constant_time() -> None:
    source = inspect.getsource(middleware.admin_auth_middleware)
    assert "hmac.compare_digest(" in source
    assert "== token" not in source and "token ==" not in source
