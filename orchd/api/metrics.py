"""``GET /metrics``: Prometheus text exposition of this daemon's own registry."""

from __future__ import annotations

from aiohttp import web

from orchd.errors import ProblemError
from orchd.metrics import CONTENT_TYPE, Metrics

__all__ = ("METRICS", "routes")

routes = web.RouteTableDef()

METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    collector = request.app.get(METRICS)
    if collector is None:
        raise ProblemError(404, "Metrics are off",
                           "this orchd runs with server.metrics: false")
    workers = collector.state.workers
    if workers is not None:  # the workers' latest counts first
        await workers.refresh()
    return web.Response(body=collector.exposition(), headers={"Content-Type": CONTENT_TYPE})
