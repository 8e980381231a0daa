"""A circuit breaker per target: closed -> open -> half_open -> closed, plus forced_open.

``half_open`` is derived from the clock when ``reset_timeout`` has passed (no timer task).
Every caller that got ``True`` from ``acquire()`` reports back exactly once with
``success()``, ``failure(reason)`` or ``release()`` (the outcome said nothing about the
upstream, e.g. the client went away).

In a worker process (``server.workers`` above 1) a breaker *follows* the supervisor's: its
outcomes that can change the state are told to ``reporter`` (a failure always, a success
only after failures or in half_open; the rest are only counted here) instead of moving
the breaker, and ``follow()`` sets what the supervisor decided.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from orchd.model import BreakerSettings

__all__ = ("CLOSED", "FORCED_OPEN", "HALF_OPEN", "OPEN", "CircuitBreaker")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
FORCED_OPEN = "forced_open"

Listener = Callable[["CircuitBreaker", str, str, str], None]
Reporter = Callable[[bool, str], None]  # (succeeded, reason)


class CircuitBreaker:
    __slots__ = (
        "_clock",
        "_listener",
        "_opened_at",
        "_reporter",
        "_state",
        "_wall",
        "failure_count",
        "half_open_calls",
        "last_failure",
        "last_failure_time",
        "last_success_time",
        "settings",
        "state_changed_time",
        "total_failures",
        "total_successes",
    )

    def __init__(
        self,
        settings: BreakerSettings,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        listener: Listener | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._wall = wall
        self._listener = listener
        self._reporter: Reporter | None = None
        self._state = CLOSED
        self._opened_at = 0.0
        self.failure_count = 0
        self.half_open_calls = 0
        self.last_failure: str | None = None
        self.last_failure_time: float | None = None
        self.last_success_time: float | None = None
        self.state_changed_time: float = wall()
        self.total_failures = 0
        self.total_successes = 0

    # -- state

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.settings.reset_timeout:
            self._transition(HALF_OPEN, "reset_timeout elapsed")
        return self._state

    def retry_after(self) -> float:
        """Seconds until a request may be let through again (0 when it may now)."""
        state = self.state
        if state == OPEN:
            return max(0.0, self.settings.reset_timeout - (self._clock() - self._opened_at))
        if state == FORCED_OPEN:
            return self.settings.reset_timeout
        if state == HALF_OPEN and self.half_open_calls >= self.settings.half_open_max_calls:
            return 1.0
        return 0.0

    def allows(self) -> bool:
        """Whether ``acquire()`` would succeed now (no side effect but the half-open check)."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN:
            return self.half_open_calls < self.settings.half_open_max_calls
        return False

    def acquire(self) -> bool:
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and self.half_open_calls < self.settings.half_open_max_calls:
            self.half_open_calls += 1
            return True
        return False

    # -- outcomes

    def success(self) -> None:
        self.total_successes += 1
        self.last_success_time = self._wall()
        reporter = self._reporter
        if reporter is not None:
            if self.failure_count or self.state == HALF_OPEN:  # else it changes nothing
                reporter(True, "")
            return
        if self.state == HALF_OPEN:
            self._transition(CLOSED, "trial request succeeded")
        elif self._state == CLOSED:
            self.failure_count = 0

    def failure(self, reason: str) -> None:
        self.total_failures += 1
        self.last_failure = reason
        self.last_failure_time = self._wall()
        reporter = self._reporter
        if reporter is not None:
            reporter(False, reason)
            return
        if self.state == HALF_OPEN:
            self.failure_count += 1
            self._open(f"trial request failed: {reason}")
        elif self._state == CLOSED:
            self.failure_count += 1
            if self.failure_count >= self.settings.failure_threshold:
                self._open(f"{self.failure_count} consecutive failures, last: {reason}")

    def release(self) -> None:
        if self._state == HALF_OPEN and self.half_open_calls > 0:
            self.half_open_calls -= 1

    # -- operator actions

    def trip(self, reason: str = "tripped by an operator") -> None:
        """Force the breaker open; it stays ``forced_open`` until ``reset()``."""
        self._transition(FORCED_OPEN, reason)

    def reset(self, reason: str = "reset by an operator") -> None:
        """Close the breaker and clear its counts, whatever its state."""
        self._transition(CLOSED, reason)
        self.failure_count = 0
        self.half_open_calls = 0

    # -- following another process's breaker (server.workers)

    def report_to(self, reporter: Reporter) -> None:
        """From now on, tell outcomes to ``reporter`` and change state only by ``follow``."""
        self._reporter = reporter

    def follow(self, state: str, opened_at: float, failure_count: int, changed_at: float,
               reason: str) -> None:
        """Take the deciding breaker's state (``opened_at`` on the shared monotonic clock)."""
        old = self._state
        self._opened_at = opened_at
        self.failure_count = failure_count
        if old != state:
            self._state = state
            self.state_changed_time = changed_at
            self.half_open_calls = 0
            if self._listener is not None:
                self._listener(self, old, state, reason)

    def decided(self) -> tuple[str, float, int, float]:
        """What ``follow`` takes: the state as last set (an open one turns half_open by the
        clock in each follower too), when it opened, the failure count, when it changed."""
        state = self._state
        return state, self._opened_at, self.failure_count, self.state_changed_time

    def update_settings(self, settings: BreakerSettings) -> None:
        self.settings = settings

    def _open(self, reason: str) -> None:
        self._opened_at = self._clock()
        self._transition(OPEN, reason, force=True)

    def _transition(self, new: str, reason: str, force: bool = False) -> None:
        old = self._state
        if old == new and not force:
            return
        self._state = new
        self.state_changed_time = self._wall()
        self.half_open_calls = 0
        if new == CLOSED:
            self.failure_count = 0
        if old != new and self._listener is not None:
            self._listener(self, old, new, reason)

    def as_dict(self) -> dict[str, Any]:
        state = self.state
        retry_at = None
        if state == OPEN:
            retry_at = self._wall() + self.retry_after()
        return {
            "state": state,
            "failure_count": self.failure_count,
            "last_failure_time": self.last_failure_time,
            "last_success_time": self.last_success_time,
            "state_changed_time": self.state_changed_time,
            "half_open_calls": self.half_open_calls,
            "last_failure": self.last_failure,
            "retry_at": retry_at,
            "total_failures": self.total_failures,
            "total_successes": self.total_successes,
        }
