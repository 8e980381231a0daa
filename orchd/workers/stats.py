"""What a worker counts, carried to the supervisor and added to the instance's counters.

A worker counts requests as one process does (``orchd.traffic.Traffic``, the targets'
``requests`` and ``in_flight``, the auth refusals) and, every half second or when asked,
sends what it counted since its last report (``Tally.take``); the supervisor adds it to its
own (``absorb``), so ``/metrics``, ``/registry`` and the dashboard show the instance.
Counters are sent as increments, so a worker that dies loses at most its last half second;
``in_flight`` is sent as a level, and a dead worker's is taken back (``forget``).
"""

from __future__ import annotations

from typing import Any

from orchd.auth.guard import Counters
from orchd.target import TargetPool
from orchd.traffic import Histogram, Traffic, Window

__all__ = ("Tally", "absorb", "forget")

TargetKey = tuple[str, str]


class Tally:
    """A worker's counts since its last report."""

    def __init__(self, traffic: Traffic, pool: TargetPool) -> None:
        self.traffic = traffic
        self.pool = pool
        self.counters: Counters | None = None  # the auth guards', once they exist
        # Successes the breakers told the supervisor one by one (its breaker counted them).
        self.reported: dict[TargetKey, int] = {}
        # Each target's requests and successes at the last report, and its in-flight level.
        self._requests: dict[TargetKey, int] = {}
        self._successes: dict[TargetKey, int] = {}
        self._in_flight: dict[TargetKey, int] = {}
        self._window_totals: dict[str, int] = {}

    def take(self) -> dict[str, Any]:
        traffic = self.traffic
        report: dict[str, Any] = {
            "requests": traffic.requests.copy(),
            "latency": {e: (h.counts, h.sum) for e, h in traffic.latency.items()},
            "errors": traffic.errors.copy(),
            "windows": {},
            "targets": {},
            "successes": {},
        }
        traffic.requests.clear()
        traffic.latency.clear()
        traffic.errors.clear()
        for endpoint, window in traffic.windows.items():
            new = window.total - self._window_totals.get(endpoint, 0)
            if new <= 0:
                continue
            self._window_totals[endpoint] = window.total
            size = len(window.times)
            new = min(new, size)
            idx = [(window.next - new + i) % size for i in range(new)]
            report["windows"][endpoint] = (
                [(window.times[i], window.durations[i], bool(window.failed[i])) for i in idx],
                list(window.errors))
            window.errors.clear()
        for target in self.pool.all():
            key = (target.endpoint, target.url)
            breaker = target.breaker
            successes = (breaker.total_successes - self._successes.get(key, 0)
                         - self.reported.pop(key, 0))
            if successes > 0 and breaker.last_success_time is not None:
                report["successes"][key] = (successes, breaker.last_success_time)
            self._successes[key] = breaker.total_successes
            requests = target.requests - self._requests.get(key, 0)
            if requests or target.in_flight != self._in_flight.get(key, 0):
                report["targets"][key] = (requests, target.in_flight)
                self._requests[key] = target.requests
                self._in_flight[key] = target.in_flight
        counters = self.counters
        if counters is not None:
            report["auth"] = (counters.failures.copy(), counters.limited.copy())
            counters.failures.clear()
            counters.limited.clear()
        return report


def absorb(report: dict[str, Any], traffic: Traffic | None, pool: TargetPool,
           counters: Counters | None, levels: dict[TargetKey, int]) -> None:
    """Add a worker's ``report`` to the instance's counters; ``levels`` is that worker's
    last ``in_flight`` per target (updated here)."""
    if traffic is not None:
        _add(traffic.requests, report["requests"])
        for endpoint, (counts, total) in report["latency"].items():
            hist = traffic.latency.get(endpoint)
            if hist is None:
                hist = traffic.latency[endpoint] = Histogram()
            hist.counts = [a + b for a, b in zip(hist.counts, counts, strict=True)]
            hist.sum += total
        _add(traffic.errors, report["errors"])
        for endpoint, (samples, errors) in report["windows"].items():
            window = traffic.windows.get(endpoint)
            if window is None:
                window = traffic.windows[endpoint] = Window()
            for at, duration, failed in samples:
                window.add(at, duration, failed)
            for error in reversed(errors):
                window.errors.appendleft(error)
    for (endpoint, url), (requests, in_flight) in report["targets"].items():
        target = pool.find(endpoint, url)
        if target is None:
            continue
        target.requests += requests
        target.in_flight += in_flight - levels.get((endpoint, url), 0)
        levels[(endpoint, url)] = in_flight
    for (endpoint, url), (count, at) in report["successes"].items():
        target = pool.find(endpoint, url)
        if target is not None:
            target.breaker.total_successes += count
            last = target.breaker.last_success_time
            target.breaker.last_success_time = at if last is None else max(last, at)
    auth = report.get("auth")
    if auth is not None and counters is not None:
        failures, limited = auth
        _add(counters.failures, failures)
        _add(counters.limited, limited)


def _add(into: dict[Any, int], counts: dict[Any, int]) -> None:
    for key, count in counts.items():
        into[key] = into.get(key, 0) + count


def forget(pool: TargetPool, levels: dict[TargetKey, int]) -> None:
    """A worker is gone: take its requests in flight back off the targets."""
    for (endpoint, url), in_flight in levels.items():
        target = pool.find(endpoint, url)
        if target is not None:
            target.in_flight -= in_flight
    levels.clear()
