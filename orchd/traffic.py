"""What every finished request leaves behind: its counters and its access log line.

``RequestHook.finished`` runs once per finished request: from the public listener
(orchd.front) for the requests it serves, and from aiohttp's access-log hook
(orchd.accesslog) for the connections aiohttp serves. It bumps the request counters of
``Traffic`` (read by orchd.metrics when ``/metrics`` is scraped and for the dashboard) and
writes the access line. Compiled with the request path (setup.py): as interpreted Python these
few dict updates and the line took about a tenth of a proxied request's CPU time.

A line holds the request id, endpoint, target, method, path (never the query), status,
duration and bytes; never a header value, so credentials cannot reach the log. JSON lines
carry the same fields as keys of their own. Control characters (a decoded ``%0a`` in a path)
are escaped (``orchd.log.escape_controls``): one request is one line, and no client can
write a record of its own.

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
from array import array
from bisect import bisect_left
from collections import deque
from typing import Any

from orchd.log import TEXT_FORMAT, escape_controls, redact, utc_stamp

__all__ = ("ACCESS_LINES", "LATENCY_BUCKETS", "UNMATCHED", "AccessLines", "Histogram",
           "RequestHook", "Traffic", "Window", "status_class")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED = "_unmatched"  # requests under /orchestrator/ that named no endpoint
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
RATE_WINDOW = 10.0  # requests per second are counted over this many seconds
LATENCY_WINDOW = 60.0  # p50/p99 and the error rate cover this many seconds
_MAX_SAMPLES = 4096  # per endpoint: bounded whatever the traffic

# The handler lines are batched to, whether it writes JSON, the secrets it redacts.
Target = tuple[logging.StreamHandler[Any], bool, tuple[str, ...]]
FLUSH_DELAY = 0.05  # seconds a line may wait in the batch
FLUSH_SIZE = 64 * 1024  # characters
# "000" to "999": milliseconds and microseconds without a format spec (str.format) per line
_THREE_DIGITS = tuple(f"{i:03d}" for i in range(1000))


def status_class(status: int) -> str:
    return _CLASSES[status // 100 - 1] if 100 <= status < 600 else "other"


class Window:
    """The recent requests of one endpoint: a fixed ring of samples and the last errors.

    Samples live in preallocated arrays of doubles, so recording one allocates nothing that
    outlives the request (no extra work for the garbage collector).
    """

    def __init__(self) -> None:
        self.times = array("d", bytes(8 * _MAX_SAMPLES))
        self.durations = array("d", bytes(8 * _MAX_SAMPLES))
        self.failed = bytearray(_MAX_SAMPLES)
        self.next = 0
        self.total = 0
        self.errors: deque[dict[str, Any]] = deque(maxlen=5)

    def add(self, now: float, duration: float, failed: bool) -> None:
        i = self.next
        self.times[i] = now
        self.durations[i] = duration
        self.failed[i] = failed
        self.next = (i + 1) % _MAX_SAMPLES
        self.total += 1

    def summary(self, now: float) -> dict[str, Any]:
        times = self.times
        recent = [i for i in range(min(self.total, _MAX_SAMPLES))
                  if now - times[i] <= LATENCY_WINDOW]
        rate_n = sum(1 for i in recent if now - times[i] <= RATE_WINDOW)
        span = RATE_WINDOW
        if self.total > _MAX_SAMPLES:  # the ring has wrapped: it may span less than the window
            span = min(RATE_WINDOW, max(now - times[self.next], 0.001))
        latencies = sorted(self.durations[i] for i in recent)
        failed = sum(self.failed[i] for i in recent)
        return {
            "requests_per_second": round(rate_n / span, 3),
            "p50_ms": _quantile_ms(latencies, 0.50),
            "p99_ms": _quantile_ms(latencies, 0.99),
            "error_rate": round(failed / len(recent), 4) if recent else None,
            "window_requests": len(recent),
            "total_requests": self.total,
            "last_errors": list(self.errors),
        }


def _quantile_ms(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return round(sorted_values[index] * 1000, 3)


class Histogram:
    """Bucket counts of one endpoint's latency (plain ints: only the event loop writes)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sum += value


class Traffic:
    """Request counters by endpoint: totals by method and status, latency histograms,
    upstream errors by kind, and each endpoint's recent ``Window``."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}  # (endpoint, method, status)
        self.latency: dict[str, Histogram] = {}
        self.errors: dict[tuple[str, str], int] = {}  # (endpoint, kind)
        self.windows: dict[str, Window] = {}

    def observe(self, endpoint: str | None, method: str, path: str, status: int,
                duration: float, target: str | None, kind: str | None,
                request_id: str) -> None:
        """One finished request: ``endpoint`` and ``target`` are None when it named no
        endpoint or reached no target; ``kind`` is its upstream error, if any."""
        if endpoint is None:
            if not path.startswith("/orchestrator/"):
                return  # admin, health, docs: not proxy traffic
            endpoint = UNMATCHED
        if method not in _METHODS:  # any token is a method: keep the key space bounded
            method = "OTHER"
        key = (endpoint, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        if endpoint == UNMATCHED:
            return
        if target is not None:
            hist = self.latency.get(endpoint)
            if hist is None:
                hist = self.latency[endpoint] = Histogram()
            hist.observe(duration)
        failed = status >= 500  # what the client saw; a retried refusal is not a failure
        if kind is not None:
            err_key = (endpoint, kind)
            self.errors[err_key] = self.errors.get(err_key, 0) + 1
        window = self.windows.get(endpoint)
        if window is None:
            window = self.windows[endpoint] = Window()
        now = time.time()
        window.add(now, duration, failed)
        if failed:
            window.errors.appendleft({
                "time": now, "status": status, "kind": kind or status_class(status),
                "target": target, "request_id": request_id, "method": method, "path": path,
            })

    def forget(self, endpoint: str) -> None:
        """Drop the counters of an endpoint that no longer exists."""
        for req_key in [k for k in self.requests if k[0] == endpoint]:
            del self.requests[req_key]
        for err_key in [k for k in self.errors if k[0] == endpoint]:
            del self.errors[err_key]
        self.latency.pop(endpoint, None)
        self.windows.pop(endpoint, None)


class AccessLines:
    """Access log lines, formatted as the root handler would and written in batches."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""
        self._target: Target | None = None
        self._root = logging.getLogger()

    def target(self) -> Target | None:
        """The one stream handler lines are batched to, whether it writes JSON, and the
        secrets its redacting filter removes; None when logging is set up otherwise (lines
        then go through ``logging`` as usual)."""
        handlers = self._root.handlers
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
        secrets = tuple(secret for f in handler.filters for secret in getattr(f, "secrets", ()))
        self._target = (handler, json_lines, secrets)
        return self._target

    def add(self, target: Target, name: str, message: str,
            fields: dict[str, Any] | None) -> None:
        """One line, redacted as ``orchd.log.redact`` does for every record."""
        _handler, json_lines, secrets = target
        message = redact(message, secrets)
        now = time.time()
        if json_lines:  # the shape of orchd.process.JsonFormatter's lines
            record: dict[str, Any] = {"time": utc_stamp(now), "level": "INFO", "logger": name,
                                      "message": message}
            if fields:
                record.update(fields)
            line = json.dumps(record, default=str)
        else:
            second = int(now)
            if second != self._second:
                self._second = second
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            line = f"{self._stamp},{_THREE_DIGITS[int(now * 1000) % 1000]} INFO {name}: {message}"
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
        handler: Any = target[0]
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
atexit.register(ACCESS_LINES.flush)  # what is still batched when the interpreter exits


class RequestHook:
    """Counts each finished request in ``traffic`` (if set) and writes its access line (if
    ``logger`` is set and logs INFO)."""

    def __init__(self, traffic: Traffic | None, logger: logging.Logger | None,
                 lines: AccessLines = ACCESS_LINES) -> None:
        self.traffic = traffic
        self.logger = logger
        self.lines = lines

    @property
    def enabled(self) -> bool:
        return self.traffic is not None or (
            self.logger is not None and self.logger.isEnabledFor(logging.INFO))

    def finished(self, remote: str | None, method: str, path: str, status: int, size: int,
                 duration: float, endpoint: str | None, target: str | None, request_id: str,
                 upstream_error: str | None) -> None:
        """One finished request: ``path`` is decoded and without the query; ``endpoint``,
        ``target`` and ``upstream_error`` are what the proxy noted (None if it did not)."""
        traffic = self.traffic
        if traffic is not None:
            traffic.observe(endpoint, method, path, status, duration, target, upstream_error,
                            request_id)
        logger = self.logger
        if logger is None or not logger.isEnabledFor(logging.INFO):
            return
        us = int(duration * 1_000_000 + 0.5)
        message = (f'{remote} "{method} {path}" {status} {size} '
                   f'{us // 1000}.{_THREE_DIGITS[us % 1000]}ms rid={request_id} '
                   f'endpoint={endpoint or "-"} target={target or "-"}')
        if not message.isprintable():  # one check for every field (a path's decoded %0a)
            message = escape_controls(message)
        lines = self.lines
        batch = lines.target()
        fields: dict[str, Any] | None = None
        if batch is None or batch[1]:  # the JSON formatter writes the fields as keys
            fields = {"remote": remote, "request_id": request_id, "endpoint": endpoint,
                      "target": target, "method": method, "path": path, "status": status,
                      "duration_ms": round(duration * 1000, 3), "bytes": size}
            if upstream_error is not None:
                fields["upstream_error"] = upstream_error
        if batch is None or logger.name != "orchd.access":
            logger.info(message, extra={"access": fields})
        else:
            lines.add(batch, logger.name, message, fields)
