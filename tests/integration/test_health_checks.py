"""Active health checks against real upstreams: rise/fall, paths, reloads, check-now."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.integration.resilience import (
    Backend,
    EventReader,
    admin,
    breaker_of,
    get,
    health_of,
    until,
)
from tests.support import async_wait_until, base_config, free_port

FAST = {"enabled": True, "interval": 0.2, "timeout": 1, "healthy_threshold": 2,
        "unhealthy_threshold": 3}


def target_of(info: dict[str, Any], url: str) -> dict[str, Any]:
    return next(t for t in info["targets"] if t["url"] == url)


async def test_unknown_before_first_probe_then_rise_and_fall(orchd_factory, upstream_factory,
                                                             http):
    backend = Backend(health_hold=True)  # the first probe waits until the test lets it go
    up = await upstream_factory(backend.app())
    daemon = orchd_factory(base_config(
        {"name": "svc", "url": f"{up.url}/api", "health_check_path": "/health"},
        health_check=FAST))
    base = daemon.url
    async with EventReader(base) as events:
        await until(lambda: len(up.requests) >= 1, what="first probe")
        info = await health_of(http, base, "svc")
        t = target_of(info, f"{up.url}/api")
        assert (info["status"], t["health"], t["last_check_time"]) == ("unknown", "unknown",
                                                                       None)
        status, _, _ = await get(http, f"{base}/orchestrator/svc/item")
        assert status == 200  # an unknown target routes like a healthy one

        backend.health_hold = False
        backend.health_release.set()
        up_event = await events.wait_for("health", status="healthy")
        assert up_event["old_status"] == "unknown"
        assert (await health_of(http, base, "svc"))["status"] == "healthy"

        # fall: exactly unhealthy_threshold failed probes in a row
        flipped = len(backend.probes)
        backend.health_status = 500
        down = await events.wait_for("health", status="unhealthy")
        assert down["old_status"] == "healthy"
        assert down["consecutive_failures"] == FAST["unhealthy_threshold"]
        assert down["reason"] == "HTTP 500"
        failed = [s for _, s in backend.probes[flipped:]]
        assert failed[:3] == [500, 500, 500]
        info = await health_of(http, base, "svc")
        t = target_of(info, f"{up.url}/api")
        assert (info["status"], t["health"]) == ("unhealthy", "unhealthy")
        assert t["consecutive_failures"] >= 3 and "HTTP 500" in info["error_message"]
        assert t["admin_state"] == "active"

        # rise: exactly healthy_threshold good probes in a row
        backend.health_status = 200
        back = await events.wait_for("health", old_status="unhealthy", status="healthy")
        assert back["consecutive_successes"] == FAST["healthy_threshold"]
        assert (await health_of(http, base, "svc"))["status"] == "healthy"
        _, unhealthy = await admin(http, "GET", f"{base}/health/unhealthy")
        assert unhealthy["count"] == 0


async def test_health_check_path_semantics(orchd_factory, upstream_factory, http):
    backend = Backend()
    up = await upstream_factory(backend.app())
    daemon = orchd_factory(base_config(
        {"name": "rooted", "url": f"{up.url}/api/v1", "health_check_path": "/healthz"},
        {"name": "relative", "url": f"{up.url}/api/v1", "health_check_path": "status/ready"},
        {"name": "bare", "url": f"{up.url}/api/v2"},
        health_check=FAST))

    async def all_probed() -> bool:
        return {"/healthz", "/api/v1/status/ready", "/api/v2"} <= {p for p, _ in backend.probes}

    await async_wait_until(all_probed, 10, what="a probe on each path")
    assert {p for p, _ in backend.probes} == {"/healthz", "/api/v1/status/ready", "/api/v2"}
    for name in ("rooted", "relative", "bare"):
        assert (await health_of(http, daemon.url, name))["status"] == "healthy"
    assert backend.traffic == []


async def test_check_now(orchd_factory, upstream_factory, http):
    backend = Backend(health_status=503)
    up = await upstream_factory(backend.app())
    daemon = orchd_factory(base_config(  # periodic checks off: only the explicit probe runs
        {"name": "svc", "url": up.url, "health_check_path": "/health"},
        {"name": "dead", "url": f"http://127.0.0.1:{free_port()}"}))
    base = daemon.url
    assert (await health_of(http, base, "svc"))["status"] == "unknown"
    status, body = await admin(http, "POST", f"{base}/health/check/svc")
    assert status == 200, body
    assert backend.probes == [("/health", 503)]
    t = body["targets"][0]
    assert t["consecutive_failures"] == 1 and t["error_message"] == "HTTP 503"
    assert t["last_check_time"] is not None and t["response_time"] is not None
    assert body["endpoint_id"] == "svc" and "timestamp" in body
    backend.health_status = 200
    status, body = await admin(http, "POST", f"{base}/health/check/svc")
    assert body["targets"][0]["health"] == "healthy"
    assert body["status"] == "healthy"
    status, body = await admin(http, "POST", f"{base}/health/check/missing")
    assert status == 404

    status, body = await admin(http, "POST", f"{base}/health/check/dead")
    assert status == 200
    assert body["targets"][0]["error_message"] == "connect error: Connection refused"
    assert body["targets"][0]["health"] == "unknown"  # one failure is below the fall threshold


async def test_settings_apply_on_reload(orchd_factory, upstream_factory, http):
    backend = Backend()
    up = await upstream_factory(backend.app())
    ep = {"name": "svc", "url": up.url, "health_check_path": "/health"}
    daemon = orchd_factory(base_config(ep))  # checks disabled
    base = daemon.url
    _, root = await admin(http, "GET", f"{base}/health")
    assert root["health_monitoring"]["enabled"] is False

    daemon.write_config(base_config(ep, health_check=FAST))
    status, body = await admin(http, "POST", f"{base}/config/reload")
    assert status == 200 and body["ok"], body
    await until(lambda: len(backend.probes) >= 2, what="probes")
    _, root = await admin(http, "GET", f"{base}/health")
    assert root["health_monitoring"]["interval"] == 0.2
    assert root["health_monitoring"]["probing_targets"] == 1

    # a new threshold and a new path reach the running probes
    async with EventReader(base) as events:
        daemon.write_config(base_config({**ep, "health_check_path": "/ready"},
                                        health_check={**FAST, "unhealthy_threshold": 1}))
        backend.health_status = 500
        status, body = await admin(http, "POST", f"{base}/config/reload")
        assert body["changed"] == ["svc"]
        down = await events.wait_for("health", status="unhealthy")
        assert down["consecutive_failures"] == 1
        assert "/ready" in {p for p, _ in backend.probes}


async def test_state_kept_for_unchanged_targets_across_reload(orchd_factory, upstream_factory,
                                                              http):
    backend = Backend(mode="500")
    up = await upstream_factory(backend.app())
    keep = {"name": "keep", "url": up.url, "health_check_path": "/health",
            "circuit_breaker": {"failure_threshold": 5}}
    moved = {"name": "moved", "url": f"{up.url}/old", "health_check_path": "/health"}
    daemon = orchd_factory(base_config(keep, moved, health_check=FAST))
    base = daemon.url

    async def both_healthy() -> bool:
        return all([(await health_of(http, base, n))["status"] == "healthy"
                    for n in ("keep", "moved")])

    await async_wait_until(both_healthy, 10, what="both healthy")
    for _ in range(2):
        assert (await get(http, f"{base}/orchestrator/keep/x"))[0] == 500
    await admin(http, "POST", f"{base}/health/circuit-breakers/moved/trip")
    before = await health_of(http, base, "keep")

    daemon.write_config(base_config(keep, {**moved, "url": f"{up.url}/new"},
                                    {"name": "added", "url": up.url}, health_check=FAST))
    status, body = await admin(http, "POST", f"{base}/config/reload")
    assert status == 200
    assert body["ok"] and body["added"] == ["added"] and body["changed"] == ["moved"], body

    after = await health_of(http, base, "keep")
    assert after["targets"][0]["health"] == "healthy"
    assert after["targets"][0]["circuit_breaker"]["failure_count"] == 2
    assert after["targets"][0]["last_check_time"] >= before["targets"][0]["last_check_time"]
    assert (await breaker_of(http, base, "keep"))["failure_count"] == 2
    # the changed target is a new target: fresh breaker, not checked yet or checked anew
    fresh = await breaker_of(http, base, "moved")
    assert fresh["state"] == "closed" and fresh["targets"][0]["url"] == f"{up.url}/new"



async def test_probes_stop_when_a_target_goes_away(orchd_factory, upstream_factory, http):
    kept, gone = Backend(name="kept"), Backend(name="gone")
    uk, ug = await upstream_factory(kept.app()), await upstream_factory(gone.app())
    keep = {"name": "keep", "url": uk.url, "health_check_path": "/health"}
    daemon = orchd_factory(base_config(
        keep, {"name": "drop", "urls": [ug.url, f"{uk.url}/b"], "health_check_path": "/health"},
        health_check=FAST))
    base = daemon.url
    await until(lambda: len(gone.probes) >= 2, what="probes of the target to be removed")

    daemon.write_config(base_config(keep, health_check=FAST))
    status, body = await admin(http, "POST", f"{base}/config/reload")
    assert status == 200 and body["removed"] == ["drop"], body
    _, root = await admin(http, "GET", f"{base}/health")
    assert root["health_monitoring"]["probing_targets"] == 1
    after_reload = len(gone.probes)
    seen = len(kept.probes)
    # five more rounds on the kept target; the removed one is not probed again (one probe
    # may have been under way when the reload landed)
    await until(lambda: len(kept.probes) >= seen + 5, what="five more probes of the kept target")
    assert len(gone.probes) <= after_reload + 1


async def test_probes_keep_their_connection_from_one_round_to_the_next(orchd_factory,
                                                                       upstream_factory):
    peers: list[int] = []

    async def health(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername")[1])
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/health", health)
    up = await upstream_factory(app)
    orchd_factory(base_config({"name": "svc", "url": f"{up.url}/api",
                               "health_check_path": "/health"}, health_check=FAST))
    await until(lambda: len(peers) >= 6, what="six probes")
    assert len(set(peers)) == 1, peers  # one kept connection, reused every interval
