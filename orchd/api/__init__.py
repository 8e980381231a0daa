"""The HTTP applications: the public app (TCP) and the control app (Unix socket).

Both serve the same admin API; the public app adds the proxy and admin trust checks, the
control app adds ``/control/*``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from orchd.api import (
    config,
    consumers,
    control,
    dashboard,
    docs,
    events,
    health,
    metrics,
    registry,
    root,
)
from orchd.api.middleware import admin_auth_middleware, loop_middleware, problem_middleware
from orchd.metrics import Metrics
from orchd.problems import problem_response
from orchd.proxy import Proxy
from orchd.state import STATE, GatewayState

__all__ = ("build_control_app", "build_public_app")

_ADMIN_ROUTES = (root.routes, health.routes, registry.routes, config.routes, events.routes,
                 metrics.routes, docs.routes, dashboard.routes, consumers.routes)


def _add_admin(app: web.Application, collector: Metrics | None = None) -> None:
    for table in _ADMIN_ROUTES:
        app.router.add_routes(table)
    if collector is not None:
        app[metrics.METRICS] = collector
    app.on_shutdown.append(events.close_streams)


def build_public_app(state: GatewayState, proxy: Proxy,
                     collector: Metrics | None = None) -> web.Application:
    app = web.Application(middlewares=[problem_middleware, loop_middleware,
                                       admin_auth_middleware],
                          client_max_size=1024**2, handler_args={"max_field_size": 16384})
    app[STATE] = state
    app.router.add_route("*", "/orchestrator/{tail:.*}", proxy.handle,
                         expect_handler=_expect_handler(proxy))
    _add_admin(app, collector)
    if collector is not None:
        app.cleanup_ctx.append(collector.ticker_ctx)
    return app


def _expect_handler(
        proxy: Proxy) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    """``Expect: 100-continue`` on the proxy route: ``100 Continue`` as aiohttp would send
    it, unless the proxy refuses the request before its body (a 413 then, and the connection
    closes: the client is not to send the body)."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        if request.version < (1, 1):
            return None  # HTTP/1.0 has no 100 Continue
        expect = request.headers.get(hdrs.EXPECT, "")
        if expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
        problem = proxy.refused_early(request)
        if problem is not None:
            answer = problem_response(problem, request)
            answer.force_close()
            return answer
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started
        return None

    return expect


def build_control_app(state: GatewayState, stop_event: asyncio.Event,
                      collector: Metrics | None = None) -> web.Application:
    app = web.Application(middlewares=[problem_middleware], client_max_size=1024**2)
    app[STATE] = state
    app[control.STOP_EVENT] = stop_event
    app.router.add_routes(control.routes)
    _add_admin(app, collector)
    return app
