"""Circuit breakers against real upstreams that fail in each way, counted at the upstream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.integration.resilience import Backend, EventReader, admin, breaker_of, get
from tests.support import async_wait_until, base_config, free_port

THRESHOLD = 3
HALF_OPEN_MAX = 2

# kind -> (what the client gets while the breaker counts, the reason the breaker records)
KINDS: dict[str, tuple[int | str, str]] = {
    "500": (500, "HTTP 500"),
    "refused": (502, "connect error"),
    "hang": (504, "timeout after 1s"),
    "reset": ("broken", "body broke"),
}


def endpoint(url: str, **breaker: Any) -> dict[str, Any]:
    settings = {"failure_threshold": THRESHOLD, "reset_timeout": 2,
                "half_open_max_calls": HALF_OPEN_MAX, **breaker}
    return {"name": "svc", "url": f"{url}/api", "timeout": 1, "retries": 0,
            "circuit_breaker": settings}


async def assert_breaker_503(http: Any, url: str) -> dict[str, Any]:
    status, headers, body = await get(http, url)
    assert status == 503, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert int(headers["Retry-After"]) >= 1
    doc: dict[str, Any] = json.loads(body)
    assert doc["status"] == 503
    assert doc["title"] == "Circuit breaker open"
    assert doc["reason"] == "circuit_breaker_open"
    return doc


@pytest.mark.parametrize("kind", list(KINDS))
async def test_breaker_opens_refuses_probes_and_recovers(kind, orchd_factory, upstream_factory,
                                                         http):
    backend = Backend(mode=kind if kind != "refused" else "ok", hang=5.0)
    if kind == "refused":
        port = free_port()  # nothing listens here until the breaker is open
        url = f"http://127.0.0.1:{port}"
    else:
        up = await upstream_factory(backend.app())
        url = up.url
    daemon = orchd_factory(base_config(endpoint(url)))
    gw = f"{daemon.url}/orchestrator/svc/item"
    expected_status, expected_reason = KINDS[kind]

    async with EventReader(daemon.url) as events:
        # closed -> open after exactly THRESHOLD consecutive failures
        for i in range(1, THRESHOLD + 1):
            status, _, _ = await get(http, gw)
            assert status == expected_status
            info = await breaker_of(http, daemon.url, "svc")
            if i < THRESHOLD:
                assert (info["state"], info["failure_count"]) == ("closed", i)
        assert info["state"] == "open"
        assert expected_reason in info["last_failure"]
        assert info["retry_at"] is not None
        opened = await events.wait_for("breaker", state="open")
        assert opened["old_state"] == "closed"
        assert opened["endpoint_id"] == "svc" and opened["url"] == f"{url}/api"
        assert expected_reason in opened["reason"]
        if kind == "refused":
            await upstream_factory(backend.app(), port=port)
        assert backend.hits == (0 if kind == "refused" else THRESHOLD)

        # open: answered at once, the upstream sees nothing
        seen = backend.hits
        for _ in range(5):
            doc = await assert_breaker_503(http, gw)
            # The reason is the breaker's (admin API, log), not the client's to read.
            assert expected_reason not in doc["detail"] and url not in doc["detail"], doc
            assert "endpoint 'svc'" in doc["detail"], doc
        assert backend.hits == seen

        # half-open once reset_timeout has passed: HALF_OPEN_MAX trial requests at a time
        backend.mode = "hold"

        async def half_open() -> bool:
            return (await breaker_of(http, daemon.url, "svc"))["state"] == "half_open"

        await async_wait_until(half_open, 10, what="half_open")
        tasks = [asyncio.create_task(get(http, gw)) for _ in range(6)]

        async def refused_rest() -> bool:
            return sum(t.done() for t in tasks) == 6 - HALF_OPEN_MAX

        await async_wait_until(refused_rest, 10, what="the calls over the limit to be refused")
        assert backend.hits - seen == HALF_OPEN_MAX
        backend.release.set()
        results = await asyncio.gather(*tasks)
        statuses = sorted(str(s) for s, _, _ in results)
        assert statuses == ["200"] * HALF_OPEN_MAX + ["503"] * (6 - HALF_OPEN_MAX)
        assert backend.hits - seen == HALF_OPEN_MAX

        # a trial succeeded: closed again, on its own
        info = await breaker_of(http, daemon.url, "svc")
        assert (info["state"], info["failure_count"]) == ("closed", 0)
        closed = await events.wait_for("breaker", old_state="half_open", state="closed")
        assert closed["reason"] == "trial request succeeded"
        await events.wait_for("breaker", old_state="open", state="half_open")
        backend.mode = "ok"
        for _ in range(3):
            status, _, _ = await get(http, gw)
            assert status == 200
        transitions = [(e["old_state"], e["state"]) for e in events.of("breaker")]
        assert transitions == [("closed", "open"), ("open", "half_open"),
                               ("half_open", "closed")]


async def test_failed_trial_reopens(orchd_factory, upstream_factory, http):
    backend = Backend(mode="500")
    up = await upstream_factory(backend.app())
    daemon = orchd_factory(base_config(endpoint(up.url, failure_threshold=1,
                                                reset_timeout=0.5, half_open_max_calls=1)))
    gw = f"{daemon.url}/orchestrator/svc/x"
    async with EventReader(daemon.url) as events:
        assert (await get(http, gw))[0] == 500
        await assert_breaker_503(http, gw)

        async def half_open() -> bool:
            return (await breaker_of(http, daemon.url, "svc"))["state"] == "half_open"

        await async_wait_until(half_open, 10, what="half_open")
        assert (await get(http, gw))[0] == 500  # the trial reaches the upstream and fails
        assert backend.hits == 2
        reopened = await events.wait_for("breaker", old_state="half_open", state="open")
        assert reopened["reason"] == "trial request failed: HTTP 500"
        await assert_breaker_503(http, gw)
        assert backend.hits == 2


async def test_4xx_is_not_a_failure(orchd_factory, upstream_factory, http):
    from aiohttp import web

    async def not_found(request: web.Request) -> web.Response:
        return web.json_response({"error": "nope"}, status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", not_found)
    up = await upstream_factory(app)
    daemon = orchd_factory(base_config(endpoint(up.url, failure_threshold=1)))
    for _ in range(4):
        assert (await get(http, f"{daemon.url}/orchestrator/svc/missing"))[0] == 404
    info = await breaker_of(http, daemon.url, "svc")
    assert (info["state"], info["failure_count"]) == ("closed", 0)
    assert len(up.requests) == 4


FALLBACKS = {  # endpoint -> (configured body, Content-Type served, body served)
    "text": ("service is resting, try later", "text/plain", b"service is resting, try later"),
    "json": ({"items": [], "degraded": True}, "application/json",
             {"items": [], "degraded": True}),
}


async def test_fallback_response_while_open(orchd_factory, upstream_factory, http):
    backend = Backend(mode="500")
    up = await upstream_factory(backend.app())
    endpoints = []
    for name, (body, _, _) in FALLBACKS.items():
        fallback = {"status": 200, "headers": {"X-Degraded": "yes"}, "body": body}
        endpoints.append({**endpoint(up.url, failure_threshold=2, reset_timeout=60,
                                     fallback_response=fallback), "name": name})
    daemon = orchd_factory(base_config(*endpoints))
    for name, (_, content_type, expected) in FALLBACKS.items():
        gw = f"{daemon.url}/orchestrator/{name}/list"
        before = backend.hits
        for _ in range(2):
            assert (await get(http, gw))[0] == 500
        for _ in range(3):
            status, headers, raw = await get(http, gw)
            assert status == 200
            assert headers["Content-Type"].startswith(content_type)
            assert headers["X-Degraded"] == "yes"
            assert headers["X-Fallback-Response"] == "circuit_breaker_open"
            assert int(headers["Retry-After"]) >= 1
            assert (raw if isinstance(expected, bytes) else json.loads(raw)) == expected
        assert backend.hits - before == 2


async def test_trip_stays_forced_open_until_reset(orchd_factory, upstream_factory, http):
    backend = Backend()
    up = await upstream_factory(backend.app())
    daemon = orchd_factory(base_config(endpoint(up.url, reset_timeout=0.2)))
    base = daemon.url
    gw = f"{base}/orchestrator/svc/x"
    async with EventReader(base) as events:
        status, body = await admin(http, "POST", f"{base}/health/circuit-breakers/svc/trip")
        assert status == 200, body
        assert body["circuit_breaker"]["state"] == "forced_open"
        tripped = await events.wait_for("breaker", state="forced_open")
        assert tripped["reason"] == "tripped by an operator"
        # Well past reset_timeout a tripped breaker has not moved to half-open.
        await asyncio.sleep(0.6)
        for _ in range(3):
            await assert_breaker_503(http, gw)
        assert (await breaker_of(http, base, "svc"))["state"] == "forced_open"
        _, listed = await admin(http, "GET", f"{base}/health/circuit-breakers/open")
        assert [r["endpoint_id"] for r in listed["circuit_breakers"]] == ["svc"]
        assert listed["summary"]["open_breakers"] == 1
        assert backend.hits == 0
        status, body = await admin(http, "POST", f"{base}/health/circuit-breakers/svc/reset")
        assert status == 200 and body["circuit_breaker"]["state"] == "closed"
        await events.wait_for("breaker", old_state="forced_open", state="closed",
                              reason="reset by an operator")
    assert (await get(http, gw))[0] == 200
    assert backend.hits == 1
    status, body = await admin(http, "POST", f"{base}/health/circuit-breakers/nope/trip")
    assert status == 404 and body["status"] == 404


async def test_every_endpoint_listed_from_registration(orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    daemon = orchd_factory(base_config(
        {"name": "one", "url": up.url},
        {"name": "two", "urls": [up.url, f"{up.url}/b"],
         "circuit_breaker": {"failure_threshold": 7}},
        circuit_breaker={"failure_threshold": 4, "reset_timeout": 9},
    ))
    status, body = await admin(http, "POST", f"{daemon.url}/registry/endpoints",
                               json={"config": {"name": "three", "url": f"{up.url}/c"}})
    assert status == 201, body
    _, listed = await admin(http, "GET", f"{daemon.url}/health/circuit-breakers")
    rows = {r["endpoint_id"]: r for r in listed["circuit_breakers"]}
    assert sorted(rows) == ["one", "three", "two"]
    assert listed["summary"]["total_circuit_breakers"] == 3
    assert listed["summary"]["closed_breakers"] == 3
    assert listed["summary"]["open_breakers"] == 0
    assert all(r["state"] == "closed" and r["failure_count"] == 0 for r in rows.values())
    assert rows["one"]["config"]["failure_threshold"] == 4
    assert rows["two"]["config"]["failure_threshold"] == 7
    assert rows["two"]["config"]["reset_timeout"] == 9
    assert [t["url"] for t in rows["two"]["targets"]] == [up.url, f"{up.url}/b"]
    assert all(t["state"] == "closed" for t in rows["two"]["targets"])
    assert "timestamp" in listed and listed["timestamp_iso"].endswith("Z")
    assert up.requests == []
