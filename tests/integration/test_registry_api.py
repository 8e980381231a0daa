"""The registry and admin API (DESIGN section 4) on a real orchd, with a real upstream.

One gateway serves the module; each test registers names of its own, and every bad request
is followed by a check that what was accepted before still routes.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from yarl import URL

from tests.support import Orchd, Upstream, base_config, echo_app

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROBLEM = "application/problem+json"


class Env:
    def __init__(self, gw: Orchd, up: Upstream, slow_up: Upstream, release: asyncio.Event,
                 hanging: asyncio.Event) -> None:
        self.gw, self.up, self.slow_up = gw, up, slow_up
        self.release, self.hanging = release, hanging
        self.accepted: list[str] = ["cfg_a"]  # every name that must keep routing

    def api(self, path: str) -> str:
        return f"{self.gw.url}{path}"

    def proxy(self, path: str) -> str:
        return f"{self.gw.url}/orchestrator/{path}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env() -> AsyncIterator[Env]:
    release, hanging = asyncio.Event(), asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        hanging.set()
        async with asyncio.timeout(20):
            await release.wait()
        return web.Response(text="finished")

    slow = web.Application()
    slow.router.add_get("/hang/wait", hang)
    up = await Upstream(echo_app()).start()
    slow_up = await Upstream(slow).start()
    gw = Orchd(base_config({"name": "cfg_a", "url": f"{up.url}/cfg_a"},
                           {"name": "cfg_off", "url": f"{up.url}/off", "disabled": True}))
    try:
        gw.start()
        yield Env(gw, up, slow_up, release, hanging)
    finally:
        release.set()
        gw.cleanup()
        await up.stop()
        await slow_up.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def assert_stamped(body: dict[str, Any]) -> None:
    assert isinstance(body["timestamp"], int | float)
    assert body["timestamp_iso"].endswith("Z")


async def call(http: aiohttp.ClientSession, method: str, url: str,
               **kw: Any) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    async with http.request(method, url, **kw) as r:
        body = await r.json(content_type=None)
        return r.status, body, r


async def problem(http: aiohttp.ClientSession, method: str, url: str, status: int,
                  **kw: Any) -> dict[str, Any]:
    got, body, r = await call(http, method, url, **kw)
    assert got == status, body
    assert r.headers["Content-Type"].startswith(PROBLEM)
    assert body["status"] == status and body["title"] and body["detail"]
    assert "type" in body
    return body


async def still_routes(env: Env, http: aiohttp.ClientSession) -> None:
    """Bad input never loses accepted state."""
    for name in env.accepted:
        async with http.get(env.proxy(f"{name}/check")) as r:
            assert r.status == 200, (name, await r.text())


async def register(env: Env, http: aiohttp.ClientSession, name: str,
                   **fields: Any) -> dict[str, Any]:
    doc = {"name": name, "url": f"{env.up.url}/{name}", **fields}
    status, body, _ = await call(http, "POST", env.api("/registry/endpoints"),
                                 json={"config": doc})
    assert status == 201, body
    return body


async def test_post_registers_and_routes_at_once(env: Env, http: aiohttp.ClientSession) -> None:
    body = await register(env, http, "api_one", methods=["GET", "POST"], version="v2")
    assert body["success"] is True
    assert body["endpoint_id"] == "api_one"
    assert body["endpoint_url"] == f"{env.up.url}/api_one"
    assert "api_one" in body["message"]
    assert_stamped(body)
    async with http.post(env.proxy("api_one/items?x=1"), data=b"hi") as r:
        assert r.status == 200
        got = await r.json()
    assert got["raw_path"] == "/api_one/items?x=1" and got["body"] == "hi"
    async with http.get(env.proxy("v2/api_one/items")) as r:
        assert (await r.json())["path"] == "/api_one/items"
    env.accepted.append("api_one")


async def test_taken_names_409(env: Env, http: aiohttp.ClientSession) -> None:
    await register(env, http, "api_taken")
    env.accepted.append("api_taken")
    doc = {"config": {"name": "api_taken", "url": "http://127.0.0.1:1"}}
    body = await problem(http, "POST", env.api("/registry/endpoints"), 409, json=doc)
    assert "api_taken" in body["detail"]
    assert_stamped(body)
    doc = {"config": {"name": "cfg_a", "url": "http://127.0.0.1:1"}}
    body = await problem(http, "POST", env.api("/registry/endpoints"), 409, json=doc)
    assert "configuration file" in body["detail"]
    await still_routes(env, http)
    async with http.get(env.proxy("api_taken/x")) as r:
        assert (await r.json())["path"] == "/api_taken/x"


@pytest.mark.parametrize(("body", "paths"), [
    ({"config": {"name": "bad name", "url": "http://127.0.0.1:1"}}, ["config.name"]),
    ({"config": {"name": "ok1", "url": "htp://x"}}, ["config.url"]),
    ({"config": {"name": "ok2", "url": "http://127.0.0.1:1", "bogus": 1}}, ["config.bogus"]),
    ({"config": {"name": "ok3", "url": "http://127.0.0.1:1", "timeout": 0}},
     ["config.timeout"]),
    ({"config": {"name": "ok4", "url": "http://127.0.0.1:1", "methods": ["FETCH"]}},
     ["config.methods[0]"]),
    ({"config": {"name": "ok5"}}, ["config"]),
    ({"name": "ok6", "url": "http://127.0.0.1:1"}, ["", "name", "url"]),
    ([], [""]),
    ("just a string", [""]),
])
async def test_invalid_bodies_422(env: Env, http: aiohttp.ClientSession, body: Any,
                                  paths: list[str]) -> None:
    got = await problem(http, "POST", env.api("/registry/endpoints"), 422, json=body)
    assert isinstance(got["errors"], list) and got["errors"]
    for error in got["errors"]:
        assert set(error) >= {"path", "message"}
        assert isinstance(error["message"], str) and error["message"]
    assert sorted({e["path"] for e in got["errors"]}) == sorted(paths)
    await still_routes(env, http)


@pytest.mark.parametrize("raw", [b"{not json", b'{"config": ', b"\xff\xfe", b"", b"   "])
async def test_malformed_json_400(env: Env, http: aiohttp.ClientSession, raw: bytes) -> None:
    body = await problem(http, "POST", env.api("/registry/endpoints"), 400, data=raw,
                         headers={"Content-Type": "application/json"})
    assert body["detail"]
    await still_routes(env, http)


async def test_admin_body_over_limit_413(env: Env, http: aiohttp.ClientSession) -> None:
    big = json.dumps({"config": {"name": "x", "url": "http://h", "pad": "x" * 2_000_000}})
    await problem(http, "POST", env.api("/registry/endpoints"), 413,
                  data=io.BytesIO(big.encode()),
                  headers={"Content-Type": "application/json"})
    await still_routes(env, http)


async def test_list_filters_and_counts(env: Env, http: aiohttp.ClientSession) -> None:
    await register(env, http, "list_a")
    await register(env, http, "list_b", disabled=True)
    env.accepted.append("list_a")
    status, body, _ = await call(http, "GET", env.api("/registry/endpoints"))
    assert status == 200
    assert_stamped(body)
    rows = {e["endpoint_id"]: e for e in body["endpoints"]}
    assert rows["cfg_a"]["source"] == "config" and rows["list_a"]["source"] == "api"
    for field in ("endpoint_id", "name", "url", "version", "methods", "auth_type", "timeout",
                  "retries", "health_check_path", "status", "circuit_breaker_state",
                  "registration_time", "source"):
        assert field in rows["list_a"], field
    assert body["total_count"] == len(body["endpoints"])
    assert body["disabled_count"] == 2  # cfg_off, list_b
    assert body["active_count"] == body["total_count"] - 2
    assert rows["list_b"]["status"] == "disabled"

    _, only, _ = await call(http, "GET", env.api("/registry/endpoints?status=disabled"))
    assert sorted(e["endpoint_id"] for e in only["endpoints"]) == ["cfg_off", "list_b"]
    _, visible, _ = await call(http, "GET",
                               env.api("/registry/endpoints?include_disabled=false"))
    assert not {"cfg_off", "list_b"} & {e["endpoint_id"] for e in visible["endpoints"]}
    assert len(visible["endpoints"]) == body["total_count"] - 2
    _, page1, _ = await call(http, "GET", env.api("/registry/endpoints?limit=2&offset=0"))
    _, page2, _ = await call(http, "GET", env.api("/registry/endpoints?limit=2&offset=2"))
    assert len(page1["endpoints"]) == 2 and page1["limit"] == 2 and page2["offset"] == 2
    ids1 = [e["endpoint_id"] for e in page1["endpoints"]]
    ids2 = [e["endpoint_id"] for e in page2["endpoints"]]
    assert ids1 + ids2 == [e["endpoint_id"] for e in body["endpoints"]][:len(ids1 + ids2)]
    assert page1["total_count"] == body["total_count"]
    for bad in ("status=weird", "limit=0", "limit=x", "offset=-1", "include_disabled=maybe"):
        await problem(http, "GET", env.api(f"/registry/endpoints?{bad}"), 400)
    await still_routes(env, http)


async def test_get_one(env: Env, http: aiohttp.ClientSession) -> None:
    await register(env, http, "one", methods=["GET", "PUT"], timeout=7.5)
    env.accepted.append("one")
    status, body, _ = await call(http, "GET", env.api("/registry/endpoints/one"))
    assert status == 200
    assert_stamped(body)
    assert body["endpoint_id"] == "one" and body["methods"] == ["GET", "PUT"]
    assert body["timeout"] == 7.5 and body["source"] == "api" and body["status"] == "active"
    assert body["config"]["name"] == "one"
    body = await problem(http, "GET", env.api("/registry/endpoints/missing"), 404)
    assert_stamped(body)


async def test_put_replaces(env: Env, http: aiohttp.ClientSession) -> None:
    await register(env, http, "repl")
    url = env.api("/registry/endpoints/repl")
    new = {"config": {"name": "repl", "url": f"{env.up.url}/moved", "methods": ["GET"]}}
    status, body, _ = await call(http, "PUT", url, json=new)
    assert status == 200, body
    assert body["success"] is True and body["endpoint_url"] == f"{env.up.url}/moved"
    assert_stamped(body)
    async with http.get(env.proxy("repl/x")) as r:
        assert (await r.json())["path"] == "/moved/x"
    # invalid replacement: 422, the old one stays
    bad = {"config": {"name": "repl", "url": "htp://x"}}
    await problem(http, "PUT", url, 422, json=bad)
    mismatch = {"config": {"name": "other", "url": f"{env.up.url}/x"}}
    body = await problem(http, "PUT", url, 422, json=mismatch)
    assert body["errors"][0]["path"] == "config.name"
    await problem(http, "PUT", url, 400, data=b"{", headers={"Content-Type": "application/json"})
    async with http.get(env.proxy("repl/x")) as r:
        assert (await r.json())["path"] == "/moved/x"
    cfg = {"config": {"name": "cfg_a", "url": f"{env.up.url}/x"}}
    body = await problem(http, "PUT", env.api("/registry/endpoints/cfg_a"), 409, json=cfg)
    assert "configuration file" in body["detail"]
    unknown = {"config": {"name": "ghost", "url": f"{env.up.url}/x"}}
    await problem(http, "PUT", env.api("/registry/endpoints/ghost"), 404, json=unknown)
    env.accepted.append("repl")
    await still_routes(env, http)


async def test_delete_lets_in_flight_request_finish(env: Env,
                                                    http: aiohttp.ClientSession) -> None:
    doc = {"config": {"name": "hang", "url": f"{env.slow_up.url}/hang"}}
    status, body, _ = await call(http, "POST", env.api("/registry/endpoints"), json=doc)
    assert status == 201, body
    env.hanging.clear()

    async def in_flight() -> tuple[int, str]:
        async with aiohttp.ClientSession() as other, other.get(env.proxy("hang/wait")) as r:
            return r.status, await r.text()

    task = asyncio.create_task(in_flight())
    async with asyncio.timeout(15):
        await env.hanging.wait()
    status, body, _ = await call(http, "DELETE", env.api("/registry/endpoints/hang"))
    assert status == 200, body
    assert body["success"] is True and body["endpoint_id"] == "hang"
    assert_stamped(body)
    async with http.get(env.proxy("hang/wait")) as r:
        assert r.status == 404  # gone for new requests at once
    env.release.set()
    async with asyncio.timeout(15):
        assert await task == (200, "finished")
    await problem(http, "DELETE", env.api("/registry/endpoints/hang"), 404)
    await problem(http, "DELETE", env.api("/registry/endpoints/cfg_a"), 409)
    await problem(http, "GET", env.api("/registry/endpoints/hang"), 404)
    await still_routes(env, http)


async def test_status_body_and_query(env: Env, http: aiohttp.ClientSession) -> None:
    await register(env, http, "toggle")
    url = env.api("/registry/endpoints/toggle/status")
    status, body, _ = await call(http, "PUT", url, json={"status": "disabled"})
    assert status == 200 and body["status"] == "disabled"
    assert_stamped(body)
    async with http.get(env.proxy("toggle/x")) as r:
        assert r.status == 503
    _, one, _ = await call(http, "GET", env.api("/registry/endpoints/toggle"))
    assert one["status"] == "disabled"
    status, body, _ = await call(http, "PUT", f"{url}?status=active")
    assert status == 200 and body["status"] == "active"
    async with http.get(env.proxy("toggle/x")) as r:
        assert r.status == 200
    await problem(http, "PUT", url, 422, json={"status": "sleeping"})
    await problem(http, "PUT", f"{url}?status=sleeping", 422)
    # with ?status= a body is still checked: a bad one or one that disagrees is refused
    await problem(http, "PUT", f"{url}?status=active", 422, json={"status": 5})
    await problem(http, "PUT", f"{url}?status=active", 422, json={"status": "disabled"})
    await problem(http, "PUT", url, 422, json={"state": "active"})
    await problem(http, "PUT", url, 400, data=b"{{", headers={"Content-Type": "application/json"})
    await problem(http, "PUT", env.api("/registry/endpoints/ghost/status"), 404,
                  json={"status": "active"})
    # a config endpoint can be disabled by an operator too
    status, _, _ = await call(http, "PUT", env.api("/registry/endpoints/cfg_off/status"),
                              json={"status": "active"})
    assert status == 200
    async with http.get(env.proxy("cfg_off/x")) as r:
        assert r.status == 200
    env.accepted.append("toggle")
    await still_routes(env, http)


async def test_drain_and_enable(env: Env, http: aiohttp.ClientSession) -> None:
    await register(env, http, "drainme")
    status, body, _ = await call(http, "POST", env.api("/registry/endpoints/drainme/drain"))
    assert status == 200 and body["targets"][0]["admin_state"] == "draining"
    async with http.get(env.proxy("drainme/x")) as r:
        assert r.status == 503
    status, body, _ = await call(http, "POST", env.api("/registry/endpoints/drainme/enable"))
    assert status == 200 and body["targets"][0]["admin_state"] == "active"
    # an explicit JSON null is not "no body"
    await problem(http, "POST", env.api("/registry/endpoints/drainme/enable"), 422,
                  data=b"null", headers={"Content-Type": "application/json"})
    async with http.get(env.proxy("drainme/x")) as r:
        assert r.status == 200
    await problem(http, "POST", env.api("/registry/endpoints/drainme/drain"), 404,
                  json={"url": "http://127.0.0.1:1/nope"})


async def test_stats(env: Env, http: aiohttp.ClientSession) -> None:
    status, body, _ = await call(http, "GET", env.api("/registry/stats"))
    assert status == 200
    assert_stamped(body)
    stats = body["registry_stats"]
    assert set(stats) >= {"total", "active", "inactive", "disabled", "unhealthy", "draining",
                          "by_source"}
    _, listing, _ = await call(http, "GET", env.api("/registry/endpoints?limit=10000"))
    assert stats["total"] == listing["total_count"]
    assert stats["active"] + stats["inactive"] == stats["total"]
    assert stats["by_source"]["config"] == 2
    assert stats["by_source"]["api"] == stats["total"] - 2
    assert isinstance(body["revision"], int) and body["revision"] > 0


async def test_router_routes_and_debug(env: Env, http: aiohttp.ClientSession) -> None:
    status, body, _ = await call(http, "GET", env.api("/router/routes"))
    assert status == 200
    rows = {r["endpoint_id"]: r for r in body["routes"]}
    assert rows["cfg_a"]["paths"] == ["/orchestrator/cfg_a/{path}"]
    assert rows["cfg_a"]["upstreams"] == [f"{env.up.url}/cfg_a"]
    assert body["count"] == len(rows)
    status, body, _ = await call(http, "GET", env.api("/router/debug/cfg_a/users/7?q=1"))
    assert status == 200, body
    assert body["endpoint_id"] == "cfg_a"
    assert body["upstream_url"] == f"{env.up.url}/cfg_a/users/7"
    status, body, _ = await call(http, "GET",
                                 env.api("/router/debug/orchestrator/cfg_a/x"))
    assert status == 200 and body["upstream_url"] == f"{env.up.url}/cfg_a/x"
    await problem(http, "GET", env.api("/router/debug/nope/x"), 404)
    # encoded=True: the client sends the path as written, without normalising it
    await problem(http, "GET", URL(env.api("/router/debug/cfg_a/a/%2e%2e/%2e%2e/x"),
                                   encoded=True), 400)


async def test_root_map(env: Env, http: aiohttp.ClientSession) -> None:
    status, body, _ = await call(http, "GET", env.api("/"))
    assert status == 200
    assert body["service"] and body["version"]
    assert body["routes"]["proxy"] == "/orchestrator/{endpoint_id}/{path}"
    assert body["routes"]["registry"] == "/registry/endpoints"
    assert body["routes"]["health"] == "/health"
    assert body["routes"]["consumers"] == "/consumers"


async def test_health_and_ready(env: Env, http: aiohttp.ClientSession) -> None:
    status, body, _ = await call(http, "GET", env.api("/health"))
    assert status == 200
    assert body["status"] == "healthy"
    assert set(body) >= {"configuration", "registry", "health_monitoring"}
    assert body["configuration"]["endpoints_count"] == 2
    assert body["registry"]["total"] >= 2
    assert_stamped(body)
    status, body, _ = await call(http, "GET", env.api("/health/ready"))
    assert status == 200 and body["ready"] is True
    assert_stamped(body)


async def test_unknown_admin_route_is_a_problem(env: Env, http: aiohttp.ClientSession) -> None:
    await problem(http, "GET", env.api("/registry/nothing-here"), 404)
    body = await problem(http, "PATCH", env.api("/registry/endpoints"), 405)
    assert body["detail"]


async def test_health_and_registry_answers_are_stamped(env: Env,
                                                        http: aiohttp.ClientSession) -> None:
    for path in ("/health", "/health/ready", "/registry/endpoints", "/registry/endpoints/cfg_a",
                 "/registry/stats", "/registry/endpoints/missing",
                 "/registry/endpoints?limit=0"):
        async with http.get(env.api(path)) as r:
            body = await r.json(content_type=None)
        assert_stamped(body)
        # the ISO form is the same instant as the epoch seconds, in UTC
        parsed = datetime.strptime(body["timestamp_iso"], "%Y-%m-%dT%H:%M:%S.%fZ")
        assert abs(parsed.replace(tzinfo=UTC).timestamp() - body["timestamp"]) < 0.002, path


async def test_every_answer_so_far_kept_state(env: Env, http: aiohttp.ClientSession) -> None:
    assert {"api_one", "api_taken", "list_a", "one", "repl", "toggle"} <= set(env.accepted)
    await still_routes(env, http)
