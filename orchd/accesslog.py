"""aiohttp's per-request hook, for the connections aiohttp serves (admin API, health, docs,
and proxied requests on a connection handed over to it by orchd.front).

aiohttp calls ``log(request, response, duration)`` once a response is finished; this passes
it on to ``orchd.traffic.RequestHook``, which counts it and writes its access line. Durations
of proxied requests come from ``started`` (``perf_counter``), which the proxy notes on the
request, since the event loop's clock may tick in whole milliseconds (uvloop).
"""

from __future__ import annotations

from time import perf_counter

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from orchd.traffic import RequestHook

__all__ = ("AccessLogger", "access_logger_class")


class AccessLogger(AbstractAccessLogger):
    """Hands every finished request to ``hook``."""

    hook: RequestHook

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        started = request.get("started")
        if started is not None:  # the proxy's own clock: finer than the loop's milliseconds
            time = perf_counter() - started
        rid: str = request.get("request_id") or response.headers.get("X-Request-ID") or "-"
        self.hook.finished(
            request.remote, request.method, request.path, response.status,
            response.body_length, time, request.get("endpoint"), request.get("target"), rid,
            request.get("upstream_error"))

    @property
    def enabled(self) -> bool:
        return self.hook.enabled


def access_logger_class(hook: RequestHook) -> type[AccessLogger]:
    """An ``AccessLogger`` bound to this daemon's hook (aiohttp builds one per connection)."""
    return type("BoundAccessLogger", (AccessLogger,), {"hook": hook})
