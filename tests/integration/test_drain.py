"""Administrative state: drain, enable, disable; kept apart from what health checks measure."""

from __future__ import annotations

import asyncio
import json

from tests.integration.resilience import Backend, EventReader, admin, get, health_of, until
from tests.support import base_config

FAST = {"enabled": True, "interval": 0.2, "timeout": 1, "healthy_threshold": 1,
        "unhealthy_threshold": 1}


async def test_drained_target_finishes_in_flight_and_gets_nothing_new(orchd_factory,
                                                                      upstream_factory, http):
    a, b = Backend(name="a", mode="hold"), Backend(name="b")
    ua, ub = await upstream_factory(a.app()), await upstream_factory(b.app())
    daemon = orchd_factory(base_config({"name": "svc", "urls": [ua.url, ub.url]}))
    base = daemon.url
    gw = f"{base}/orchestrator/svc"
    async with EventReader(base) as events:
        slow = asyncio.create_task(get(http, f"{gw}/long"))  # round robin starts with a
        await until(lambda: a.hits == 1, what="the long request to reach a")

        status, body = await admin(http, "POST", f"{base}/registry/endpoints/svc/drain",
                                   json={"url": ua.url})
        assert status == 200, body
        assert {t["url"]: t["admin_state"] for t in body["targets"]} == {
            ua.url: "draining", ub.url: "active"}
        await events.wait_for("registry", action="drained", url=ua.url)
        info = await health_of(http, base, "svc")
        target_a = next(t for t in info["targets"] if t["url"] == ua.url)
        assert (target_a["admin_state"], target_a["in_flight"]) == ("draining", 1)

        for i in range(6):
            status, _, raw = await get(http, f"{gw}/new{i}")
            assert status == 200 and json.loads(raw)["backend"] == "b"
        assert a.traffic == ["/long"]
        assert not slow.done()

        a.release.set()
        status, _, raw = await slow
        assert status == 200 and json.loads(raw) == {"backend": "a", "path": "/long"}
        info = await health_of(http, base, "svc")
        assert next(t for t in info["targets"] if t["url"] == ua.url)["in_flight"] == 0

        status, body = await admin(http, "POST", f"{base}/registry/endpoints/svc/enable",
                                   json={"url": ua.url})
        assert status == 200, body
        for _ in range(4):
            assert (await get(http, f"{gw}/again"))[0] == 200
        assert a.traffic.count("/again") == 2


async def test_drain_whole_endpoint_enable_and_disable(orchd_factory, upstream_factory, http):
    backend, other = Backend(), Backend(name="other")
    up, uo = await upstream_factory(backend.app()), await upstream_factory(other.app())
    daemon = orchd_factory(base_config({"name": "svc", "url": up.url},
                                       {"name": "off", "url": uo.url}))
    base = daemon.url
    status, body = await admin(http, "POST", f"{base}/registry/endpoints/svc/drain")
    assert status == 200, body
    status, headers, raw = await get(http, f"{base}/orchestrator/svc/x")
    assert status == 503 and "Retry-After" in headers
    assert headers["Content-Type"].startswith("application/problem+json")
    assert json.loads(raw)["reason"] == "no_available_target"
    assert backend.hits == 0
    _, stats = await admin(http, "GET", f"{base}/registry/stats")
    assert stats["registry_stats"]["draining"] == 1
    status, body = await admin(http, "POST", f"{base}/registry/endpoints/svc/enable")
    assert status == 200, body
    assert (await get(http, f"{base}/orchestrator/svc/x"))[0] == 200
    assert backend.hits == 1

    status, body = await admin(http, "POST", f"{base}/registry/endpoints/svc/drain",
                               json={"url": "http://127.0.0.1:1"})
    assert status == 404 and body["title"] == "Target not found"
    status, body = await admin(http, "POST", f"{base}/registry/endpoints/nope/drain")
    assert status == 404

    # PUT status disabled: 503 at once, nothing forwarded, until set active again
    status, body = await admin(http, "PUT", f"{base}/registry/endpoints/off/status",
                               json={"status": "disabled"})
    assert status == 200, body
    status, headers, raw = await get(http, f"{base}/orchestrator/off/x")
    assert status == 503
    assert headers["Content-Type"].startswith("application/problem+json")
    assert "Retry-After" in headers
    assert json.loads(raw)["title"] == "Endpoint disabled"
    assert other.hits == 0
    _, listed = await admin(http, "GET", f"{base}/registry/endpoints/off")
    assert listed["status"] == "disabled" and listed["disabled"] is True
    status, body = await admin(http, "PUT", f"{base}/registry/endpoints/off/status",
                               params={"status": "active"})
    assert status == 200, body
    assert (await get(http, f"{base}/orchestrator/off/x"))[0] == 200
    status, body = await admin(http, "PUT", f"{base}/registry/endpoints/off/status",
                               json={"status": "sleeping"})
    assert status == 422


async def test_health_check_never_overwrites_admin_state(orchd_factory, upstream_factory,
                                                         http):
    a, b = Backend(name="a"), Backend(name="b")
    ua, ub = await upstream_factory(a.app()), await upstream_factory(b.app())
    daemon = orchd_factory(base_config(
        {"name": "svc", "urls": [ua.url, ub.url], "health_check_path": "/health"},
        health_check=FAST))
    base = daemon.url
    status, body = await admin(http, "POST", f"{base}/registry/endpoints/svc/drain",
                               json={"url": ua.url})
    assert status == 200, body

    async def target_a() -> dict[str, str]:
        info = await health_of(http, base, "svc")
        t = next(t for t in info["targets"] if t["url"] == ua.url)
        return {"health": t["health"], "admin_state": t["admin_state"]}

    async with EventReader(base) as events:
        a.health_status = 500
        await events.wait_for("health", url=ua.url, status="unhealthy")
        assert await target_a() == {"health": "unhealthy", "admin_state": "draining"}
        a.health_status = 200
        await events.wait_for("health", url=ua.url, old_status="unhealthy", status="healthy")
        probes = len(a.probes)
        await until(lambda: len(a.probes) >= probes + 3, what="more probes of a")
        assert await target_a() == {"health": "healthy", "admin_state": "draining"}
    assert a.traffic == []


async def test_drain_survives_restart(orchd_factory, upstream_factory, http):
    a, b = Backend(name="a"), Backend(name="b")
    ua, ub = await upstream_factory(a.app()), await upstream_factory(b.app())
    daemon = orchd_factory(base_config({"name": "svc", "urls": [ua.url, ub.url]}))
    status, _ = await admin(http, "POST", f"{daemon.url}/registry/endpoints/svc/drain",
                            json={"url": ua.url})
    assert status == 200
    daemon.stop()
    daemon.start()
    for _ in range(4):
        assert (await get(http, f"{daemon.url}/orchestrator/svc/x"))[0] == 200
    assert a.hits == 0 and b.hits == 4
