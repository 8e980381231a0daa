"""CircuitBreaker with a fake clock: every transition, its reason and its timing."""

from __future__ import annotations

import pytest

from orchd.breaker import CLOSED, FORCED_OPEN, HALF_OPEN, OPEN, CircuitBreaker
from orchd.model import BreakerSettings


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Transition = tuple[str, str, str]


def make(threshold: int = 3, reset: float = 10.0, half: int = 2
         ) -> tuple[CircuitBreaker, FakeClock, list[Transition]]:
    clock = FakeClock()
    seen: list[Transition] = []
    breaker = CircuitBreaker(
        BreakerSettings(failure_threshold=threshold, reset_timeout=reset,
                        half_open_max_calls=half),
        clock=clock, wall=clock,
        listener=lambda _b, old, new, reason: seen.append((old, new, reason)),
    )
    return breaker, clock, seen


def fail(breaker: CircuitBreaker, n: int, reason: str = "HTTP 500") -> None:
    for _ in range(n):
        assert breaker.acquire()
        breaker.failure(reason)


def test_opens_after_exactly_threshold_consecutive_failures() -> None:
    breaker, _, seen = make(threshold=3)
    fail(breaker, 2)
    assert breaker.state == CLOSED
    assert breaker.failure_count == 2
    fail(breaker, 1, "connect error: Connection refused")
    assert breaker.state == OPEN
    assert seen == [(CLOSED, OPEN, "3 consecutive failures, last: connect error: "
                                   "Connection refused")]
    assert breaker.last_failure == "connect error: Connection refused"


def test_success_resets_the_consecutive_count() -> None:
    breaker, _, _ = make(threshold=3)
    fail(breaker, 2)
    assert breaker.acquire()
    breaker.success()
    assert breaker.failure_count == 0
    fail(breaker, 2)
    assert breaker.state == CLOSED


def test_open_refuses_until_reset_timeout_then_half_open() -> None:
    breaker, clock, seen = make(threshold=1, reset=10.0)
    fail(breaker, 1)
    assert not breaker.acquire()
    assert not breaker.allows()
    assert breaker.retry_after() == pytest.approx(10.0)
    clock.advance(9.5)
    assert breaker.state == OPEN
    assert breaker.retry_after() == pytest.approx(0.5)
    assert not breaker.acquire()
    clock.advance(0.5)
    assert breaker.state == HALF_OPEN
    assert breaker.retry_after() == 0.0
    assert seen[-1] == (OPEN, HALF_OPEN, "reset_timeout elapsed")


def test_half_open_lets_only_max_calls_through_at_a_time() -> None:
    breaker, clock, _ = make(threshold=1, reset=5.0, half=2)
    fail(breaker, 1)
    clock.advance(5.0)
    assert breaker.acquire()
    assert breaker.acquire()
    assert not breaker.acquire()
    assert breaker.half_open_calls == 2
    assert breaker.retry_after() > 0
    breaker.release()  # a trial that said nothing about the upstream frees its slot
    assert breaker.half_open_calls == 1
    assert breaker.acquire()
    assert not breaker.acquire()


def test_half_open_success_closes() -> None:
    breaker, clock, seen = make(threshold=2, reset=5.0)
    fail(breaker, 2)
    clock.advance(5.0)
    assert breaker.acquire()
    breaker.success()
    assert breaker.state == CLOSED
    assert breaker.failure_count == 0
    assert breaker.half_open_calls == 0
    assert [(o, n) for o, n, _ in seen] == [(CLOSED, OPEN), (OPEN, HALF_OPEN),
                                           (HALF_OPEN, CLOSED)]
    assert seen[-1][2] == "trial request succeeded"


def test_half_open_failure_reopens_and_restarts_the_timer() -> None:
    breaker, clock, seen = make(threshold=2, reset=5.0)
    fail(breaker, 2)
    clock.advance(6.0)
    assert breaker.acquire()
    breaker.failure("timeout after 1s")
    assert breaker.state == OPEN
    assert seen[-1] == (HALF_OPEN, OPEN, "trial request failed: timeout after 1s")
    assert breaker.retry_after() == pytest.approx(5.0)
    clock.advance(4.9)
    assert breaker.state == OPEN
    clock.advance(0.1)
    assert breaker.state == HALF_OPEN


def test_late_outcomes_while_open_do_not_change_state() -> None:
    breaker, _, _ = make(threshold=2, reset=5.0)
    assert breaker.acquire()  # a request started while closed ...
    fail(breaker, 2)
    breaker.success()  # ... ends after the breaker opened
    assert breaker.state == OPEN
    breaker.failure("HTTP 502")
    breaker.release()
    assert breaker.state == OPEN
    assert breaker.retry_after() == pytest.approx(5.0)


def test_trip_forces_open_until_reset() -> None:
    breaker, clock, seen = make(threshold=3, reset=1.0)
    breaker.trip()
    assert breaker.state == FORCED_OPEN
    clock.advance(3600)
    assert breaker.state == FORCED_OPEN
    assert not breaker.acquire()
    breaker.success()
    assert breaker.state == FORCED_OPEN
    breaker.reset()
    assert breaker.state == CLOSED
    assert breaker.acquire()
    assert seen == [(CLOSED, FORCED_OPEN, "tripped by an operator"),
                    (FORCED_OPEN, CLOSED, "reset by an operator")]


def test_reset_clears_counts_even_when_closed() -> None:
    breaker, _, seen = make(threshold=3)
    fail(breaker, 2)
    breaker.reset()
    assert breaker.failure_count == 0
    assert seen == []  # no transition, no event
    fail(breaker, 2)
    assert breaker.state == CLOSED


def test_reset_from_open_closes_at_once() -> None:
    breaker, _, _ = make(threshold=1, reset=60)
    fail(breaker, 1)
    breaker.reset()
    assert breaker.state == CLOSED
    assert breaker.acquire()


def test_as_dict_reports_retry_at_while_open() -> None:
    breaker, clock, _ = make(threshold=1, reset=10.0)
    assert breaker.as_dict()["retry_at"] is None
    fail(breaker, 1, "HTTP 503")
    info = breaker.as_dict()
    assert info["state"] == OPEN
    assert info["retry_at"] == pytest.approx(clock.now + 10.0)
    assert info["last_failure"] == "HTTP 503"
    assert info["failure_count"] == 1
    assert info["total_failures"] == 1
    clock.advance(10.0)
    assert breaker.as_dict()["state"] == HALF_OPEN


def test_settings_update_applies_to_the_running_breaker() -> None:
    breaker, _, _ = make(threshold=5)
    fail(breaker, 2)
    breaker.update_settings(BreakerSettings(failure_threshold=3, reset_timeout=10.0,
                                            half_open_max_calls=1))
    fail(breaker, 1)
    assert breaker.state == OPEN
