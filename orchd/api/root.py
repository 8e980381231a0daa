"""``/``, the liveness probe ``/health`` and the readiness probe ``/health/ready``."""

from __future__ import annotations

import time

from aiohttp import web

from orchd import SERVICE_NAME, __version__
from orchd.api.common import get_state, json_answer, stamped

__all__ = ("routes",)

routes = web.RouteTableDef()


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    return json_answer({
        "service": SERVICE_NAME,
        "version": __version__,
        "routes": {
            "proxy": "/orchestrator/{endpoint_id}/{path}",
            "health": "/health",
            "health_status": "/health/status",
            "registry": "/registry/endpoints",
            "consumers": "/consumers",
            "circuit_breakers": "/health/circuit-breakers",
            "config": "/config/status",
            "router": "/router/routes",
            "docs": "/docs",
            "openapi": "/openapi.json",
            "metrics": "/metrics",
            "dashboard": "/dashboard",
            "events": "/events",
        },
    })


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    state = get_state(request)
    hc = state.config.health_check
    started = state.started and not state.stopping
    body = {
        "status": "healthy" if started else ("stopping" if state.stopping else "starting"),
        "service": SERVICE_NAME,
        "version": __version__,
        "uptime": round(time.time() - state.started_at, 3),
        "configuration": {
            "loaded": True,
            "config_path": state.config_path,
            "endpoints_count": len(state.registry.names("config")),
            "last_reload_ok": state.last_reload.ok,
        },
        "registry": {**state.registry.stats(), "store": state.store.name,
                     "store_status": "degraded" if state.store_degraded else "ok",
                     "revision": state.registry.revision},
        "health_monitoring": {**hc.as_dict(), **state.health.monitoring()},
    }
    return stamped(body, 200 if started else 503)


@routes.get("/health/ready")
async def ready(request: web.Request) -> web.Response:
    state = get_state(request)
    ok = state.ready and not state.stopping
    reason = "ready" if ok else ("stopping" if state.stopping else "starting")
    return stamped({"ready": ok, "status": reason}, 200 if ok else 503)
