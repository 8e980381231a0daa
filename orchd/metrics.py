"""Prometheus metrics and the dashboard's traffic figures, one ``Metrics`` per daemon.

Three ways in, none of them scattered through the request path:

* ``traffic`` (orchd.traffic) holds the request counters: bumped once per finished request
  by ``RequestHook`` with the endpoint, target and upstream error the proxy noted on the
  request (one event loop thread, no locks), turned into metric families here at scrape time;
* ``on_event()`` is an EventBus listener (breaker and health transitions, registry removals);
* ``Metrics`` is also a collector: breaker, health, registry, reload and in-flight figures
  are read from the live state when ``/metrics`` is scraped, so they can never drift.

Every metric lives in this instance's own ``CollectorRegistry``, never the global one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from orchd import __version__
from orchd.breaker import CLOSED, FORCED_OPEN, HALF_OPEN, OPEN
from orchd.events import Event
from orchd.target import HEALTHY, UNHEALTHY, UNKNOWN
from orchd.traffic import LATENCY_BUCKETS, Histogram, Traffic, Window, status_class

if TYPE_CHECKING:
    from aiohttp import web

    from orchd.state import GatewayState

__all__ = ("CONTENT_TYPE", "Metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BREAKER_STATES = (CLOSED, OPEN, HALF_OPEN, FORCED_OPEN)
_HEALTH_STATES = (HEALTHY, UNHEALTHY, UNKNOWN)
_ENDPOINT_STATUSES = ("active", "draining", "disabled", "unhealthy")

STATS_INTERVAL = 2.0  # seconds between two "stats" events for the dashboard


def _cumulative(hist: Histogram) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, count in zip((*map(floatToGoString, LATENCY_BUCKETS), "+Inf"), hist.counts,
                            strict=True):
        total += count
        out.append((bound, float(total)))
    return out


class Metrics(Collector):
    """All of orchd's metrics; built by the composition root, one per daemon.

    The request path only bumps plain integers in ``traffic``'s dicts (everything runs on the
    one event loop thread, so no lock is needed); ``collect()`` turns them into metric
    families when ``/metrics`` is scraped. That keeps the per-request cost to a few dict
    operations.
    """

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.traffic = Traffic()  # the request counters, fed by orchd.traffic.RequestHook
        self._transitions: dict[tuple[str, str, str], int] = {}  # (kind, endpoint, state)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        state.bus.add_listener(self.on_event)

    # -- EventBus listener

    def on_event(self, event: Event) -> None:
        data = event.data
        if event.type in ("breaker", "health") and data.get("endpoint_id"):
            key = (event.type, data["endpoint_id"], str(data.get("state", data.get("status"))))
            self._transitions[key] = self._transitions.get(key, 0) + 1
        elif (event.type == "registry" and data.get("action") == "removed"
              and data.get("endpoint_id")):
            self.forget(data["endpoint_id"])
        elif event.type == "reload" and data.get("ok"):
            for name in data.get("removed") or ():  # endpoints the file no longer has
                self.forget(name)

    def forget(self, endpoint: str) -> None:
        """Drop the series of an endpoint that no longer exists."""
        self.traffic.forget(endpoint)
        for tr_key in [k for k in self._transitions if k[1] == endpoint]:
            del self._transitions[tr_key]

    def _traffic(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "orchd_requests", "Requests through the proxy, by endpoint, method and status class.",
            labels=("endpoint", "method", "code"))
        merged: dict[tuple[str, str, str], int] = {}
        traffic = self.traffic
        for (endpoint, method, status), count in traffic.requests.items():
            labels = (endpoint, method, status_class(status))
            merged[labels] = merged.get(labels, 0) + count
        for labels, count in sorted(merged.items()):
            requests.add_metric(labels, count)
        yield requests
        latency = HistogramMetricFamily(
            "orchd_upstream_latency_seconds",
            "Time from a proxied request's arrival to the end of the upstream's answer, for "
            "requests that reached an upstream target.", labels=("endpoint",))
        for endpoint, hist in sorted(traffic.latency.items()):
            latency.add_metric((endpoint,), _cumulative(hist), hist.sum)
        yield latency
        errors = CounterMetricFamily(
            "orchd_upstream_errors", "Upstream failures by kind: refused, timeout, reset, 5xx.",
            labels=("endpoint", "kind"))
        for err_key, count in sorted(traffic.errors.items()):
            errors.add_metric(err_key, count)
        yield errors
        breaker = CounterMetricFamily(
            "orchd_circuit_breaker_transitions", "Circuit breaker transitions, by new state.",
            labels=("endpoint", "state"))
        health = CounterMetricFamily(
            "orchd_health_transitions", "Target health transitions, by new health.",
            labels=("endpoint", "health"))
        for (kind, endpoint, new), count in sorted(self._transitions.items()):
            (breaker if kind == "breaker" else health).add_metric((endpoint, new), count)
        yield breaker
        yield health

    # -- scrape time

    def collect(self) -> Iterable[Metric]:
        yield from self._traffic()
        state = self.state
        routes = list(state.registry.snapshot.routes.values())
        in_flight = GaugeMetricFamily("orchd_in_flight_requests",
                                      "Requests being served by an upstream, by endpoint.",
                                      labels=("endpoint",))
        breaker = GaugeMetricFamily(
            "orchd_circuit_breaker_state",
            "1 for the current state of each target's circuit breaker, 0 for the others.",
            labels=("endpoint", "target", "state"))
        endpoint_open = GaugeMetricFamily(
            "orchd_endpoint_circuit_breaker_open",
            "1 when no target of the endpoint accepts a request because its breaker is open.",
            labels=("endpoint",))
        health = GaugeMetricFamily(
            "orchd_target_health",
            "1 for the current health of each target (healthy, unhealthy, unknown), else 0.",
            labels=("endpoint", "target", "health"))
        status = GaugeMetricFamily(
            "orchd_endpoint_status",
            "1 for the endpoint's current status (active, draining, disabled, unhealthy).",
            labels=("endpoint", "status"))
        for route in routes:
            name = route.name
            in_flight.add_metric((name,), sum(t.in_flight for t in route.targets))
            endpoint_open.add_metric((name,), 1.0 if route.breaker_state() == "open" else 0.0)
            current = route.status()
            for s in _ENDPOINT_STATUSES:
                status.add_metric((name, s), 1.0 if s == current else 0.0)
            for t in route.targets:
                b = t.breaker.state
                for s in _BREAKER_STATES:
                    breaker.add_metric((name, t.url, s), 1.0 if s == b else 0.0)
                for h in _HEALTH_STATES:
                    health.add_metric((name, t.url, h), 1.0 if h == t.health else 0.0)
        yield from (in_flight, breaker, endpoint_open, health, status)

        stats = state.registry.stats()
        size = GaugeMetricFamily("orchd_registry_endpoints", "Registered endpoints, by source.",
                                 labels=("source",))
        for source, count in sorted(stats["by_source"].items()):
            size.add_metric((source,), count)
        yield size
        yield GaugeMetricFamily("orchd_registry_targets", "Upstream targets of all endpoints.",
                                value=sum(len(r.targets) for r in routes))
        yield GaugeMetricFamily("orchd_registry_revision",
                                "Revision of the routing snapshot in use.",
                                value=state.registry.revision)

        last = state.last_reload
        reloads = CounterMetricFamily(
            "orchd_config_reloads", "Configuration loads (the one at start included), by result.",
            labels=("result",))
        reloads.add_metric(("success",), max(0, last.count - last.failures))
        reloads.add_metric(("failure",), last.failures)
        yield reloads
        yield GaugeMetricFamily("orchd_config_last_reload_successful",
                                "1 if the last configuration reload succeeded, else 0.",
                                value=1.0 if last.ok else 0.0)
        yield GaugeMetricFamily("orchd_config_last_reload_success_timestamp_seconds",
                                "Unix time of the last successful configuration load.",
                                value=last.last_success_at or 0.0)

        bus = state.bus
        yield GaugeMetricFamily("orchd_events_subscribers", "Open /events streams.",
                                value=bus.subscriber_count)
        yield CounterMetricFamily("orchd_events_published", "Events published on the bus.",
                                  value=bus.published)
        yield CounterMetricFamily("orchd_events_subscribers_dropped",
                                  "/events subscribers dropped for falling behind.",
                                  value=bus.dropped)
        caps = state.streams
        open_streams = GaugeMetricFamily("orchd_streams_open",
                                         "Long-lived streams open on the public port (/events, "
                                         "WebSockets).", labels=("kind",))
        for kind, n in caps.by_kind.items():
            open_streams.add_metric((kind,), n)
        yield open_streams
        refused = CounterMetricFamily("orchd_streams_refused",
                                      "Long-lived streams refused with 429, by cap.",
                                      labels=("cap",))
        for cap, n in caps.refused.items():
            refused.add_metric((cap,), n)
        yield refused
        if state.tls is not None:
            expiry = GaugeMetricFamily("orchd_tls_certificate_expiry_timestamp_seconds",
                                       "Unix time the public port's certificate expires, "
                                       "by certificate file.", labels=("file",))
            for facts in state.tls.facts:
                expiry.add_metric((facts.file,), facts.not_after)
            yield expiry
        yield from self._gateway()
        info = GaugeMetricFamily("orchd_build_info", "orchd's version; always 1.",
                                 labels=("version",))
        info.add_metric((__version__,), 1.0)
        yield info
        yield GaugeMetricFamily("orchd_start_time_seconds", "Unix time orchd started.",
                                value=state.started_at)
        if state.workers is not None:  # server.workers above 1
            workers = state.workers.status()
            yield GaugeMetricFamily("orchd_workers", "Worker processes serving the public "
                                    "port now.", value=workers["live"])
            yield CounterMetricFamily("orchd_worker_replacements", "Worker processes that "
                                      "died and were replaced.", value=workers["replaced"])

    def _gateway(self) -> Iterable[Metric]:
        """Authentication and rate limits at the gateway (orchd.auth.guard.Counters)."""
        failures = CounterMetricFamily(
            "orchd_auth_failures", "Requests refused by the gateway's authentication (and "
            "CORS preflights from origins not allowed), by endpoint and reason.",
            labels=("endpoint", "reason"))
        limited = CounterMetricFamily(
            "orchd_rate_limited", "Requests answered 429 by the gateway's rate limit.",
            labels=("endpoint",))
        guards = self.state.guards
        if guards is not None:
            counters = guards.counters
            for key, count in sorted(counters.failures.items()):
                failures.add_metric(key, count)
            for endpoint, count in sorted(counters.limited.items()):
                limited.add_metric((endpoint,), count)
        yield failures
        yield limited

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- the dashboard's figures, published as "stats" events while someone listens

    def stats(self) -> dict[str, Any]:
        now = time.time()
        names = list(self.state.registry.snapshot.routes)
        windows = self.traffic.windows
        guards = self.state.guards
        out = {name: (windows.get(name) or Window()).summary(now) for name in names}
        if guards is not None:  # running totals: the dashboard shows their rates
            counters = guards.counters
            for name, figures in out.items():
                figures["auth_failures"] = counters.failures_of(name)
                figures["rate_limited"] = counters.limited.get(name, 0)
        return {"endpoints": out, "interval": STATS_INTERVAL}

    async def _ticker(self) -> None:
        bus = self.state.bus
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            if bus.subscriber_count:
                bus.publish("stats", **self.stats())

    async def ticker_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: the stats ticker lives as long as the public app."""
        task = asyncio.create_task(self._ticker(), name="orchd-stats")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

