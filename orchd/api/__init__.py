"""The HTTP applications: the public app (TCP) and the control app (Unix socket).

Both serve the same admin API; the public app adds the proxy and admin trust checks, the
control app adds ``/control/*``.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from orchd.api import config, control, dashboard, docs, events, health, metrics, registry, root
from orchd.api.middleware import admin_auth_middleware, problem_middleware
from orchd.metrics import Metrics
from orchd.proxy import Proxy
from orchd.state import STATE, GatewayState

__all__ = ("build_control_app", "build_public_app")

_ADMIN_ROUTES = (root.routes, health.routes, registry.routes, config.routes, events.routes,
                 metrics.routes, docs.routes, dashboard.routes)


def _add_admin(app: web.Application, collector: Metrics | None = None) -> None:
    for table in _ADMIN_ROUTES:
        app.router.add_routes(table)
    if collector is not None:
        app[metrics.METRICS] = collector
    app.on_shutdown.append(events.close_streams)


def build_public_app(state: GatewayState, proxy: Proxy,
                     collector: Metrics | None = None) -> web.Application:
    app = web.Application(middlewares=[problem_middleware, admin_auth_middleware],
                          client_max_size=1024**2, handler_args={"max_field_size": 16384})
    app[STATE] = state
    app.router.add_route("*", "/orchestrator/{tail:.*}", proxy.handle)
    _add_admin(app, collector)
    if collector is not None:
        app.cleanup_ctx.append(collector.ticker_ctx)
    return app


def build_control_app(state: GatewayState, stop_event: asyncio.Event,
                      collector: Metrics | None = None) -> web.Application:
    app = web.Application(middlewares=[problem_middleware], client_max_size=1024**2)
    app[STATE] = state
    app[control.STOP_EVENT] = stop_event
    app.router.add_routes(control.routes)
    _add_admin(app, collector)
    return app
