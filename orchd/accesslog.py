"""The per-request hook: one access log line and the request's metrics.

aiohttp calls ``log(request, response, duration)`` once a response is finished; the proxy has
put ``endpoint``, ``target``, ``request_id``, ``upstream_error`` and ``started`` on the
request by then. Durations of proxied requests come from ``started`` (``perf_counter``),
since the event loop's clock may tick in whole milliseconds (uvloop).

A line holds the request id, endpoint, target, method, path (never the query), status,
duration and bytes; never a header value, so credentials cannot reach the log. The fields
travel on the record as ``access`` so the JSON formatter writes them as JSON keys.

Lines are written in batches (``AccessLines``): formatting a ``LogRecord`` and writing it
alone cost about a third of a proxied request's CPU time. A batch goes out within
``FLUSH_DELAY``, when it reaches ``FLUSH_SIZE``, before any other log record (so the log
keeps its order), on SIGUSR1 and at exit. The lines are the ones the configured formatter
would have written, redacted by the same filter.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import time
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

if TYPE_CHECKING:
    from orchd.metrics import Metrics

from orchd.log import TEXT_FORMAT, utc_stamp

__all__ = ("ACCESS_LINES", "AccessLines", "AccessLogger", "access_logger_class")

# The handler lines are batched to, whether it writes JSON, its filters' redact functions.
Target = tuple[logging.StreamHandler[Any], bool, tuple[Callable[[str], str], ...]]
FLUSH_DELAY = 0.05  # seconds a line may wait in the batch
FLUSH_SIZE = 64 * 1024  # characters


class AccessLines:
    """Access log lines, formatted as the root handler would and written in batches."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""
        self._target: Target | None = None

    def target(self) -> Target | None:
        """The one stream handler lines are batched to, and whether it writes JSON; None
        when logging is set up otherwise (lines then go through ``logging`` as usual)."""
        handlers = logging.getLogger().handlers
        cached = self._target
        if cached is not None and len(handlers) == 1 and handlers[0] is cached[0]:
            return cached
        self._target = None
        if len(handlers) != 1 or not isinstance(handlers[0], logging.StreamHandler):
            return None
        handler = handlers[0]
        fmt = handler.formatter
        json_lines = bool(getattr(fmt, "writes_json", False))
        if fmt is None or not (json_lines or getattr(fmt, "_fmt", None) == TEXT_FORMAT):
            return None
        redactors = tuple(f.redact for f in handler.filters if hasattr(f, "redact"))
        self._target = (handler, json_lines, redactors)
        return self._target

    def add(self, target: Target, name: str, message: str,
            fields: dict[str, Any] | None) -> None:
        _handler, json_lines, redactors = target
        for redact in redactors:
            message = redact(message)
        now = time.time()
        if json_lines:  # the shape of orchd.cli.JsonFormatter's lines
            line = json.dumps({"time": utc_stamp(now), "level": "INFO", "logger": name,
                               "message": message, **(fields or {})}, default=str)
        else:
            second = int(now)
            if second != self._second:
                self._second = second
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            line = f"{self._stamp},{int(now * 1000) % 1000:03d} INFO {name}: {message}"
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_SIZE:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)
            except RuntimeError:  # no loop: nothing would flush it later
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        lines, self._lines, self._size = self._lines, [], 0
        target = self.target()
        if target is None:
            return
        handler = target[0]
        handler.acquire()
        try:
            stream = handler.stream
            if stream is None and isinstance(handler, logging.FileHandler):
                stream = handler.stream = handler._open()  # closed by SIGUSR1: reopen
            stream.write(handler.terminator.join(lines) + handler.terminator)
            handler.flush()
        except (OSError, ValueError):
            pass  # as with logging's own handlers, a failed log write fails no request
        finally:
            handler.release()

    def before_record(self, record: logging.LogRecord) -> bool:
        """A handler filter: batched lines go out before any other record."""
        if self._lines:
            self.flush()
        return True


ACCESS_LINES = AccessLines()
atexit.register(ACCESS_LINES.flush)


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
        endpoint = request.get("endpoint")
        target = request.get("target")
        path = request.path
        status = response.status
        size = response.body_length
        ms = round(time * 1000, 3)
        message = (f'{request.remote} "{request.method} {path}" {status} {size} {ms:.3f}ms '
                   f'rid={rid} endpoint={endpoint or "-"} target={target or "-"}')
        batch = ACCESS_LINES.target()
        fields: dict[str, Any] | None = None
        if batch is None or batch[1]:  # the JSON formatter writes the fields as keys
            fields = {"remote": request.remote, "request_id": rid, "endpoint": endpoint,
                      "target": target, "method": request.method, "path": path,
                      "status": status, "duration_ms": ms, "bytes": size}
            error = request.get("upstream_error")
            if error is not None:
                fields["upstream_error"] = error
        if batch is None or self.logger.name != "orchd.access":
            self.logger.info(message, extra={"access": fields})
        else:
            ACCESS_LINES.add(batch, self.logger.name, message, fields)

    @property
    def enabled(self) -> bool:
        return self.metrics is not None or (
            self.log_lines and self.logger.isEnabledFor(logging.INFO))


def access_logger_class(metrics: Metrics | None, log_lines: bool) -> type[AccessLogger]:
    """An ``AccessLogger`` bound to this daemon's metrics (aiohttp builds it per connection)."""
    return type("BoundAccessLogger", (AccessLogger,),
                {"metrics": metrics, "log_lines": log_lines})
