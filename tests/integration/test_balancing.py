"""Load balancing over ``urls``: round robin, a target dying mid-run, panic mode, retries."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.resilience import Backend, admin, get, health_of, until_equal
from tests.support import base_config, free_port

FAST = {"enabled": True, "interval": 0.2, "timeout": 1, "healthy_threshold": 1,
        "unhealthy_threshold": 1}


async def test_round_robin_and_no_retry_on_5xx(orchd_factory, upstream_factory, http):
    a, b = Backend(name="a"), Backend(name="b")
    bad, good = Backend(name="bad", mode="500"), Backend(name="good")
    ua, ub = await upstream_factory(a.app()), await upstream_factory(b.app())
    ubad, ugood = await upstream_factory(bad.app()), await upstream_factory(good.app())
    daemon = orchd_factory(base_config(
        {"name": "svc", "urls": [ua.url, ub.url]},
        {"name": "mixed", "urls": [ubad.url, ugood.url], "retries": 1,
         "circuit_breaker": {"failure_threshold": 1000}}))
    for i in range(10):
        status, _, _ = await get(http, f"{daemon.url}/orchestrator/svc/r{i}")
        assert status == 200
    assert a.traffic == [f"/r{i}" for i in range(0, 10, 2)]
    assert b.traffic == [f"/r{i}" for i in range(1, 10, 2)]

    # a 5xx is the upstream's answer, not a connect error: passed on, never retried
    statuses = [(await get(http, f"{daemon.url}/orchestrator/mixed/x"))[0] for _ in range(10)]
    assert sorted(statuses) == [200] * 5 + [500] * 5
    assert (bad.hits, good.hits) == (5, 5)


async def test_one_target_killed_mid_run(orchd_factory, upstream_factory, http):
    threshold = 3
    a, b = Backend(name="a"), Backend(name="b")
    ua, ub = await upstream_factory(a.app()), await upstream_factory(b.app())
    daemon = orchd_factory(base_config(
        {"name": "svc", "urls": [ua.url, ub.url], "retries": 0,
         "circuit_breaker": {"failure_threshold": threshold, "reset_timeout": 60}}))
    gw = f"{daemon.url}/orchestrator/svc/item"
    statuses: list[Any] = []
    out_at: int | None = None  # index of the first request after the dead target was out
    for i in range(60):
        if i == 10:
            await ub.stop()
        status, _, _ = await get(http, gw)
        statuses.append(status)
        if out_at is None and i >= 10:
            info = await health_of(http, daemon.url, "svc")
            dead = next(t for t in info["targets"] if t["url"] == ub.url)
            if dead["circuit_breaker"]["state"] == "open":
                out_at = i + 1
    assert statuses[:10] == [200] * 10
    assert out_at is not None, statuses
    before, after = statuses[10:out_at], statuses[out_at:]
    failed_before = [s for s in before if s != 200]
    assert 1 <= len(failed_before) <= threshold, before
    assert after and all(s == 200 for s in after), after
    assert b.hits == 5
    assert a.hits == 5 + statuses[10:].count(200)  # every success after the kill came from a


async def test_health_check_takes_dead_target_out(orchd_factory, upstream_factory, http):
    a, b = Backend(name="a"), Backend(name="b")
    ua, ub = await upstream_factory(a.app()), await upstream_factory(b.app())
    daemon = orchd_factory(base_config(
        {"name": "svc", "urls": [ua.url, ub.url], "health_check_path": "/health"},
        health_check=FAST))

    async def target_health(url: str) -> str:
        info = await health_of(http, daemon.url, "svc")
        return str(next(t for t in info["targets"] if t["url"] == url)["health"])

    b.health_status = 500
    await until_equal(lambda: target_health(ub.url), "unhealthy", what="b's health")
    before = b.hits
    for _ in range(10):
        assert (await get(http, f"{daemon.url}/orchestrator/svc/x"))[0] == 200
    assert b.hits == before
    info = await health_of(http, daemon.url, "svc")
    assert info["panic_mode"] is False


async def test_panic_mode(orchd_factory, upstream_factory, http):
    backends = [Backend(name=str(i)) for i in range(4)]
    ups = [await upstream_factory(b.app()) for b in backends]
    daemon = orchd_factory(base_config(
        {"name": "svc", "urls": [u.url for u in ups], "health_check_path": "/health"},
        health_check=FAST))
    base = daemon.url

    async def unhealthy_count() -> int:
        info = await health_of(http, base, "svc")
        return sum(t["health"] == "unhealthy" for t in info["targets"])

    async def traffic(n: int) -> list[int]:
        counts = [b.hits for b in backends]
        for _ in range(n):
            assert (await get(http, f"{base}/orchestrator/svc/x"))[0] == 200
        return [b.hits - c for b, c in zip(backends, counts, strict=True)]

    # two of four fail their checks: half still pass, no panic, traffic on the healthy two
    backends[0].health_status = backends[1].health_status = 500
    await until_equal(unhealthy_count, 2, what="unhealthy targets")
    assert (await health_of(http, base, "svc"))["panic_mode"] is False
    assert await traffic(8) == [0, 0, 4, 4]

    # three of four: below half, panic: the verdict is ignored, every target gets traffic
    backends[2].health_status = 500
    await until_equal(unhealthy_count, 3, what="unhealthy targets")
    info = await health_of(http, base, "svc")
    assert info["panic_mode"] is True
    assert await traffic(8) == [2, 2, 2, 2]

    # breakers and drains still hold in panic mode
    status, body = await admin(http, "POST", f"{base}/health/circuit-breakers/svc/trip",
                               params={"url": ups[0].url})
    assert status == 200, body
    status, body = await admin(http, "POST", f"{base}/registry/endpoints/svc/drain",
                               json={"url": ups[1].url})
    assert status == 200, body
    assert await traffic(6) == [0, 0, 3, 3]
    for u in ups[2:]:
        await admin(http, "POST", f"{base}/health/circuit-breakers/svc/trip",
                    params={"url": u.url})
    status, headers, raw = await get(http, f"{base}/orchestrator/svc/x")
    assert status == 503 and "Retry-After" in headers
    assert json.loads(raw)["reason"] == "no_available_target"
    assert headers["Content-Type"].startswith("application/problem+json")


async def test_retries_idempotent_connect_errors_within_budget(orchd_factory, upstream_factory,
                                                               http):
    live = Backend(name="live")
    up = await upstream_factory(live.app())
    dead = f"http://127.0.0.1:{free_port()}"
    daemon = orchd_factory(base_config(
        {"name": "svc", "urls": [up.url, dead], "retries": 1, "methods": ["GET", "POST"],
         "circuit_breaker": {"failure_threshold": 1000}}))
    gw = f"{daemon.url}/orchestrator/svc/x"
    n = 40
    statuses = [(await get(http, gw))[0] for _ in range(n)]
    ok = statuses.count(200)
    assert statuses.count(502) == n - ok
    assert live.hits == ok
    retried = daemon.log().count("retrying GET svc on another target after: connect error")
    assert 1 <= retried <= 0.2 * n, statuses  # retries happen, and stay within 20%
    assert statuses.count(502) >= 1  # the budget, not the target count, stopped the rest

    # POST is not idempotent: never retried, even with budget to spare
    before = live.hits
    posts = []
    for _ in range(4):
        async with http.post(gw, data=b"x") as r:
            posts.append(r.status)
    assert sorted(posts) == [200, 200, 502, 502]
    assert live.hits - before == 2

