"""The per-request hook: one access log line and the request's metrics.

aiohttp calls ``log(request, response, duration)`` once a response is finished; the proxy has
put ``endpoint``, ``target``, ``request_id``, ``upstream_error`` and ``started`` on the
request by then. Durations of proxied requests come from ``started`` (``perf_counter``),
since the event loop's clock may tick in whole milliseconds (uvloop).

A line holds the request id, endpoint, target, method, path (never the query), status,
duration and bytes; never a header value, so credentials cannot reach the log. The fields
travel on the record as ``access`` so the JSON formatter writes them as JSON keys.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

if TYPE_CHECKING:
    from orchd.metrics import Metrics

__all__ = ("AccessLogger", "access_logger_class")


class AccessLogger(AbstractAccessLogger):
    """Writes the access log line (if ``log_lines``) and feeds ``metrics`` (if set)."""

    metrics: Metrics | None = None
    log_lines = True

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        started = request.get("started")
        if started is not None:  # the proxy's own clock: finer than the loop's milliseconds
            time = perf_counter() - started
        metrics = self.metrics
        if metrics is not None:
            metrics.observe(request, response.status, time)
        if not self.log_lines or not self.logger.isEnabledFor(logging.INFO):
            return
        rid = request.get("request_id") or response.headers.get("X-Request-ID", "-")
        fields: dict[str, Any] = {
            "remote": request.remote,
            "request_id": rid,
            "endpoint": request.get("endpoint"),
            "target": request.get("target"),
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_ms": round(time * 1000, 3),
            "bytes": response.body_length,
        }
        error = request.get("upstream_error")
        if error is not None:
            fields["upstream_error"] = error
        self.logger.info(
            '%s "%s %s" %s %s %.3fms rid=%s endpoint=%s target=%s',
            fields["remote"], fields["method"], fields["path"], fields["status"],
            fields["bytes"], fields["duration_ms"], rid, fields["endpoint"] or "-",
            fields["target"] or "-", extra={"access": fields},
        )

    @property
    def enabled(self) -> bool:
        return self.metrics is not None or (
            self.log_lines and self.logger.isEnabledFor(logging.INFO))


def access_logger_class(metrics: Metrics | None, log_lines: bool) -> type[AccessLogger]:
    """An ``AccessLogger`` bound to this daemon's metrics (aiohttp builds it per connection)."""
    return type("BoundAccessLogger", (AccessLogger,),
                {"metrics": metrics, "log_lines": log_lines})
