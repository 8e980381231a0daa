"""``/metrics``: Prometheus text that parses, and figures that move with real traffic."""

from __future__ import annotations

from typing import Any

import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.support import base_config, free_port

TOKEN = "metrics-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def flaky_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down")

    app = web.Application()
    app.router.add_get("/api/ok", ok)
    app.router.add_post("/api/ok", ok)
    app.router.add_get("/api/fail", fail)
    return app


async def scrape(http: Any, url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with http.get(f"{url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_and_move_with_traffic(orchd_factory, upstream_factory, http):
    up = await upstream_factory(flaky_app())
    dead = free_port()  # nothing listens here: connections are refused
    daemon = orchd_factory(base_config(
        {"name": "svc", "url": f"{up.url}/api", "methods": ["GET", "POST"]},
        {"name": "gone", "url": f"http://127.0.0.1:{dead}/", "retries": 0,
         "circuit_breaker": {"failure_threshold": 100}},
        server={"admin_token": TOKEN}))

    before = await scrape(http, daemon.url)
    assert value(before, "orchd_requests_total", endpoint="svc", method="GET", code="2xx") == 0
    assert value(before, "orchd_registry_endpoints", source="config") == 2
    assert value(before, "orchd_config_reloads_total", result="success") == 1
    assert value(before, "orchd_config_last_reload_successful") == 1
    assert value(before, "orchd_circuit_breaker_state", endpoint="svc",
                 target=f"{up.url}/api", state="closed") == 1

    for _ in range(7):
        async with http.get(f"{daemon.url}/orchestrator/svc/ok") as r:
            assert r.status == 200
    for _ in range(2):
        async with http.post(f"{daemon.url}/orchestrator/svc/ok", data=b"x") as r:
            assert r.status == 200
    for _ in range(3):
        async with http.get(f"{daemon.url}/orchestrator/svc/fail") as r:
            assert r.status == 503
    for _ in range(2):
        async with http.get(f"{daemon.url}/orchestrator/gone/x") as r:
            assert r.status == 502
    async with http.get(f"{daemon.url}/orchestrator/nosuch/x") as r:
        assert r.status == 404

    after = await scrape(http, daemon.url)
    assert value(after, "orchd_requests_total", endpoint="svc", method="GET", code="2xx") == 7
    assert value(after, "orchd_requests_total", endpoint="svc", method="POST", code="2xx") == 2
    assert value(after, "orchd_requests_total", endpoint="svc", method="GET", code="5xx") == 3
    assert value(after, "orchd_requests_total", endpoint="gone", method="GET", code="5xx") == 2
    assert value(after, "orchd_requests_total", endpoint="_unmatched", method="GET",
                 code="4xx") == 1
    assert value(after, "orchd_upstream_latency_seconds_count", endpoint="svc") == 12
    assert value(after, "orchd_upstream_latency_seconds_bucket", endpoint="svc",
                 le="+Inf") == 12
    assert value(after, "orchd_upstream_errors_total", endpoint="svc", kind="5xx") == 3
    assert value(after, "orchd_upstream_errors_total", endpoint="gone", kind="refused") == 2
    assert value(after, "orchd_in_flight_requests", endpoint="svc") == 0
    # Admin and monitoring calls are not proxy traffic.
    assert not any(k[0] == "orchd_requests_total" and ("endpoint", "") in k[1] for k in after)

    # A trip shows in the breaker gauges and in the transition counter.
    async with http.post(f"{daemon.url}/health/circuit-breakers/svc/trip", headers=AUTH) as r:
        assert r.status == 200
    tripped = await scrape(http, daemon.url)
    assert value(tripped, "orchd_circuit_breaker_state", endpoint="svc",
                 target=f"{up.url}/api", state="forced_open") == 1
    assert value(tripped, "orchd_circuit_breaker_state", endpoint="svc",
                 target=f"{up.url}/api", state="closed") == 0
    assert value(tripped, "orchd_endpoint_circuit_breaker_open", endpoint="svc") == 1
    assert value(tripped, "orchd_circuit_breaker_transitions_total", endpoint="svc",
                 state="forced_open") == 1


async def test_reload_and_registry_metrics(orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    config = base_config({"name": "a", "url": up.url}, server={"admin_token": TOKEN})
    daemon = orchd_factory(config)
    first = await scrape(http, daemon.url)
    started_at = value(first, "orchd_config_last_reload_success_timestamp_seconds")
    assert started_at > 0

    daemon.write_config("endpoints: [{name: a, url: 'htp://bad'}]\n")
    async with http.post(f"{daemon.url}/config/reload", headers=AUTH) as r:
        assert r.status == 422
    failed = await scrape(http, daemon.url)
    assert value(failed, "orchd_config_reloads_total", result="failure") == 1
    assert value(failed, "orchd_config_last_reload_successful") == 0
    assert value(failed, "orchd_config_last_reload_success_timestamp_seconds") == started_at

    config["endpoints"].append({"name": "b", "urls": [up.url, f"{up.url}/v2"]})
    daemon.write_config(yaml.safe_dump(config))
    async with http.post(f"{daemon.url}/config/reload", headers=AUTH) as r:
        assert r.status == 200
    ok = await scrape(http, daemon.url)
    assert value(ok, "orchd_config_reloads_total", result="success") == 2
    assert value(ok, "orchd_config_last_reload_successful") == 1
    assert value(ok, "orchd_config_last_reload_success_timestamp_seconds") >= started_at
    assert value(ok, "orchd_registry_endpoints", source="config") == 2
    assert value(ok, "orchd_registry_targets") == 3

    body = {"config": {"name": "api1", "url": up.url}}
    async with http.post(f"{daemon.url}/registry/endpoints", json=body, headers=AUTH) as r:
        assert r.status == 201
    registered = await scrape(http, daemon.url)
    assert value(registered, "orchd_registry_endpoints", source="api") == 1
    assert value(registered, "orchd_target_health", endpoint="api1", target=up.url,
                 health="unknown") == 1

    # Series of a removed endpoint go away with it.
    async with http.get(f"{daemon.url}/orchestrator/api1/x") as r:
        assert r.status == 200
    seen = await scrape(http, daemon.url)
    assert value(seen, "orchd_requests_total", endpoint="api1", method="GET", code="2xx") == 1
    async with http.delete(f"{daemon.url}/registry/endpoints/api1", headers=AUTH) as r:
        assert r.status == 200
    removed = await scrape(http, daemon.url)
    assert not any("api1" in dict(k[1]).values() for k in removed)

    # So do those of an endpoint a reload takes out of the file.
    async with http.get(f"{daemon.url}/orchestrator/b/x") as r:
        assert r.status == 200
    assert value(await scrape(http, daemon.url), "orchd_requests_total", endpoint="b",
                 method="GET", code="2xx") == 1
    config["endpoints"].pop()
    daemon.write_config(yaml.safe_dump(config))
    async with http.post(f"{daemon.url}/config/reload", headers=AUTH) as r:
        assert r.status == 200
    reloaded = await scrape(http, daemon.url)
    assert not any(dict(k[1]).get("endpoint") == "b" for k in reloaded)
    assert value(reloaded, "orchd_endpoint_status", endpoint="a", status="active") == 1


async def test_metrics_can_be_turned_off(orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    daemon = orchd_factory(base_config({"name": "a", "url": up.url},
                                       server={"metrics": False}))
    async with http.get(f"{daemon.url}/orchestrator/a/x") as r:
        assert r.status == 200
    async with http.get(f"{daemon.url}/metrics") as r:
        assert r.status == 404
        assert r.headers["Content-Type"].startswith("application/problem+json")
