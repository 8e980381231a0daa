"""Runtime state of one upstream target: administrative state, health, breaker, in-flight.

State belongs to the target, not to a snapshot: a ``TargetPool`` hands the same ``Target``
to every snapshot that keeps the endpoint's URL, so health and breaker state survive reloads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from yarl import URL

from orchd.breaker import CircuitBreaker, Reporter
from orchd.events import EventBus
from orchd.model import BreakerSettings

__all__ = (
    "ACTIVE",
    "ADMIN_STATES",
    "DISABLED",
    "DRAINING",
    "HEALTHY",
    "UNHEALTHY",
    "UNKNOWN",
    "Target",
    "TargetPool",
)

ACTIVE = "active"
DRAINING = "draining"
DISABLED = "disabled"
ADMIN_STATES = (ACTIVE, DRAINING, DISABLED)

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
UNKNOWN = "unknown"


class Target:
    """One upstream base URL of one endpoint."""

    __slots__ = (
        "admin_state",
        "base_path",
        "breaker",
        "consecutive_failures",
        "consecutive_successes",
        "endpoint",
        "error_message",
        "health",
        "in_flight",
        "last_check_time",
        "origin",
        "requests",
        "response_time",
        "url",
        "yurl",
    )

    def __init__(self, endpoint: str, url: str, breaker: CircuitBreaker) -> None:
        self.endpoint = endpoint
        self.url = url
        self.yurl = URL(url)
        self.origin = self.yurl.origin()
        self.base_path = self.yurl.raw_path.rstrip("/")
        self.breaker = breaker
        self.admin_state = ACTIVE
        self.health = UNKNOWN
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.last_check_time: float | None = None
        self.response_time: float | None = None
        self.error_message: str | None = None
        self.in_flight = 0
        self.requests = 0

    @property
    def passes_health(self) -> bool:
        """Healthy, or never checked (an unknown target routes like a healthy one)."""
        return self.health != UNHEALTHY

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "health": self.health,
            "admin_state": self.admin_state,
            "circuit_breaker": self.breaker.as_dict(),
            "in_flight": self.in_flight,
            "requests": self.requests,
            "last_check_time": self.last_check_time,
            "response_time": self.response_time,
            "error_message": self.error_message,
            "consecutive_failures": self.consecutive_failures,
            "consecutive_successes": self.consecutive_successes,
        }


class TargetPool:
    """Targets keyed by (endpoint, url); the one place that creates them."""

    def __init__(self, bus: EventBus, clock: Callable[[], float] = time.monotonic) -> None:
        self._targets: dict[tuple[str, str], Target] = {}
        self._bus = bus
        self._clock = clock
        # In a worker process: the reporter each new target's breaker tells its outcomes to
        # (orchd.breaker), given the target's (endpoint, url).
        self.reporters: Callable[[str, str], Reporter] | None = None

    def get(self, endpoint: str, url: str, settings: BreakerSettings) -> Target:
        key = (endpoint, url)
        target = self._targets.get(key)
        if target is None:
            target = self._create(endpoint, url, settings)
            self._targets[key] = target
        elif target.breaker.settings != settings:
            target.breaker.update_settings(settings)
        return target

    def retain(self, keep: Iterable[tuple[str, str]]) -> list[Target]:
        """Forget every target not in ``keep``; answer the ones forgotten."""
        keep = set(keep)
        gone = [t for k, t in self._targets.items() if k not in keep]
        for t in gone:
            del self._targets[(t.endpoint, t.url)]
        return gone

    def all(self) -> list[Target]:
        return list(self._targets.values())

    def _create(self, endpoint: str, url: str, settings: BreakerSettings) -> Target:
        bus = self._bus

        def on_transition(breaker: CircuitBreaker, old: str, new: str, reason: str) -> None:
            bus.publish("breaker", endpoint_id=endpoint, url=url, old_state=old,
                        state=new, reason=reason)

        breaker = CircuitBreaker(settings, clock=self._clock, listener=on_transition)
        if self.reporters is not None:
            breaker.report_to(self.reporters(endpoint, url))
        return Target(endpoint, url, breaker)

    def find(self, endpoint: str, url: str) -> Target | None:
        return self._targets.get((endpoint, url))
