"""``/health/*`` (but ``/health`` and ``/health/ready``) and ``/health/circuit-breakers*``."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from orchd.api.common import get_state, stamped
from orchd.balancer import in_panic
from orchd.errors import ProblemError, endpoint_not_found
from orchd.router import Route, auth_mode
from orchd.state import GatewayState, sync_workers
from orchd.target import HEALTHY, UNHEALTHY, UNKNOWN
from orchd.timestamps import iso

__all__ = ("endpoint_health", "routes", "summary")

routes = web.RouteTableDef()


def _route(state: GatewayState, name: str) -> Route:
    route = state.registry.snapshot.routes.get(name)
    if route is None:
        raise endpoint_not_found(name)
    return route


def _endpoint_status(route: Route) -> str:
    healths = [t.health for t in route.targets]
    if all(h == UNHEALTHY for h in healths):
        return UNHEALTHY
    if all(h == UNKNOWN for h in healths):
        return UNKNOWN
    return HEALTHY


def endpoint_health(route: Route) -> dict[str, Any]:
    targets = route.targets
    checked = [t.last_check_time for t in targets if t.last_check_time is not None]
    times = [t.response_time for t in targets if t.response_time is not None]
    errors = [f"{t.url}: {t.error_message}" for t in targets if t.error_message]
    return {
        "endpoint_id": route.name,
        "status": _endpoint_status(route),
        "admin_state": route.status() if route.status() in ("disabled", "draining") else "active",
        "last_check_time": max(checked) if checked else None,
        "last_check_time_iso": iso(max(checked)) if checked else None,
        "response_time": round(sum(times) / len(times), 6) if times else None,
        "error_message": "; ".join(errors) or None,
        "consecutive_failures": max(t.consecutive_failures for t in targets),
        "consecutive_successes": min(t.consecutive_successes for t in targets),
        "circuit_breaker": route.breaker_state(),
        "panic_mode": in_panic(route),
        "auth": auth_mode(route.spec),
        "targets": [t.as_dict() for t in targets],
    }


def summary(state: GatewayState) -> dict[str, Any]:
    rows = [endpoint_health(r) for r in state.registry.snapshot.routes.values()]
    total = len(rows)
    healthy = sum(1 for r in rows if r["status"] != UNHEALTHY)
    unhealthy = total - healthy
    times = [r["response_time"] for r in rows if r["response_time"] is not None]
    checks = [r["last_check_time"] for r in rows if r["last_check_time"] is not None]
    return {
        "total_endpoints": total,
        "healthy_endpoints": healthy,
        "unhealthy_endpoints": unhealthy,
        "unknown_endpoints": sum(1 for r in rows if r["status"] == UNKNOWN),
        "health_percentage": round(100.0 * healthy / total, 2) if total else 100.0,
        "average_response_time": round(sum(times) / len(times), 6) if times else None,
        "last_check_time": max(checks) if checks else None,
        "config": state.config.health_check.as_dict(),
    }


def _breaker_row(route: Route) -> dict[str, Any]:
    # The endpoint's row reads like its most telling target's breaker: the one that is
    # open, else half-open, else the first.
    order = {"forced_open": 0, "open": 1, "half_open": 2, "closed": 3}
    lead = min(route.targets, key=lambda t: order.get(t.breaker.state, 9))
    info = lead.breaker.as_dict()
    return {
        "endpoint_id": route.name,
        "state": route.breaker_state() if len(route.targets) > 1 else info["state"],
        "failure_count": info["failure_count"],
        "last_failure_time": info["last_failure_time"],
        "last_success_time": info["last_success_time"],
        "state_changed_time": info["state_changed_time"],
        "half_open_calls": info["half_open_calls"],
        "last_failure": info["last_failure"],
        "retry_at": info["retry_at"],
        "config": route.breaker_settings.as_dict(),
        "targets": [{"url": t.url, **t.breaker.as_dict()} for t in route.targets],
    }


def breakers(state: GatewayState, only_open: bool = False) -> dict[str, Any]:
    rows = [_breaker_row(r) for r in state.registry.snapshot.routes.values()]
    states = [r["state"] for r in rows]
    open_ = sum(1 for s in states if s in ("open", "forced_open"))
    half = states.count("half_open")
    closed = states.count("closed")
    total = len(rows)
    if only_open:
        rows = [r for r in rows if r["state"] not in ("closed",)
                or any(t["state"] != "closed" for t in r["targets"])]
    return {
        "summary": {
            "total_circuit_breakers": total,
            "open_breakers": open_,
            "half_open_breakers": half,
            "closed_breakers": closed,
            "partially_open_breakers": states.count("partially_open"),
            "health_percentage": round(100.0 * closed / total, 2) if total else 100.0,
        },
        "circuit_breakers": rows,
    }


@routes.get("/health/status")
async def status(request: web.Request) -> web.Response:
    state = get_state(request)
    summ = summary(state)
    brk = breakers(state)["summary"]
    total = summ["total_endpoints"]
    if total == 0 or (summ["unhealthy_endpoints"] == 0 and brk["open_breakers"] == 0):
        system = "healthy"
    elif summ["healthy_endpoints"] == 0:
        system = "unhealthy"
    else:
        system = "degraded"
    if state.store_degraded and system == "healthy":
        system = "degraded"
    return stamped({
        "system_status": system,
        "summary": summ,
        "circuit_breaker_summary": brk,
        "last_reload": state.last_reload.as_dict(),
        "store": {"type": state.store.name,
                  "status": "degraded" if state.store_degraded else "ok",
                  "error": state.store_degraded},
        "uptime": round(time.time() - state.started_at, 3),
        "tls": state.tls.status() if state.tls is not None else None,
        "auth": state.guards.status() if state.guards is not None else {"jwks": []},
        **({"workers": state.workers.status()} if state.workers is not None else {}),
    })


@routes.get("/health/summary")
async def get_summary(request: web.Request) -> web.Response:
    return stamped(summary(get_state(request)))


@routes.get("/health/unhealthy")
async def unhealthy(request: web.Request) -> web.Response:
    state = get_state(request)
    rows = [endpoint_health(r) for r in state.registry.snapshot.routes.values()]
    bad = [r for r in rows if r["status"] == UNHEALTHY]
    return stamped({"unhealthy_endpoints": bad, "count": len(bad)})


@routes.get("/health/endpoints")
async def all_endpoints(request: web.Request) -> web.Response:
    state = get_state(request)
    rows = [endpoint_health(r) for r in state.registry.snapshot.routes.values()]
    return stamped({"endpoints": rows, "count": len(rows)})


@routes.get("/health/endpoints/{id}")
async def one_endpoint(request: web.Request) -> web.Response:
    state = get_state(request)
    return stamped(endpoint_health(_route(state, request.match_info["id"])))


@routes.post("/health/check/{id}")
async def check_now(request: web.Request) -> web.Response:
    state = get_state(request)
    route = _route(state, request.match_info["id"])
    await state.health.check_route(route)
    return stamped(endpoint_health(route))


@routes.get("/health/circuit-breakers")
async def list_breakers(request: web.Request) -> web.Response:
    return stamped(breakers(get_state(request)))


@routes.get("/health/circuit-breakers/open")
async def open_breakers(request: web.Request) -> web.Response:
    return stamped(breakers(get_state(request), only_open=True))


@routes.get("/health/circuit-breakers/{id}")
async def one_breaker(request: web.Request) -> web.Response:
    state = get_state(request)
    return stamped(_breaker_row(_route(state, request.match_info["id"])))


async def _operate(request: web.Request, action: str) -> web.Response:
    state = get_state(request)
    route = _route(state, request.match_info["id"])
    url = request.query.get("url")
    targets = [t for t in route.targets if url is None or t.url == url.rstrip("/")]
    if not targets:
        raise ProblemError(404, "Target not found",
                           f"endpoint {route.name!r} has no target {url!r}")
    for t in targets:
        if action == "trip":
            t.breaker.trip()
        else:
            t.breaker.reset()
    await sync_workers(state)
    return stamped({"success": True,
                    "message": f"circuit breaker of {route.name!r} "
                               f"{'forced open' if action == 'trip' else 'reset'}",
                    "circuit_breaker": _breaker_row(route)})


@routes.post("/health/circuit-breakers/{id}/trip")
async def trip(request: web.Request) -> web.Response:
    return await _operate(request, "trip")


@routes.post("/health/circuit-breakers/{id}/reset")
async def reset(request: web.Request) -> web.Response:
    return await _operate(request, "reset")
