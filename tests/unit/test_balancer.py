"""Target choice (round robin, drains, breakers, panic mode) and the retry budget."""

from __future__ import annotations

from collections import Counter

from orchd.balancer import RetryBudget, choose, in_panic
from orchd.events import EventBus
from orchd.model import BreakerSettings, EndpointSpec
from orchd.router import Route
from orchd.target import DRAINING, HEALTHY, UNHEALTHY, UNKNOWN, Target, TargetPool

URLS = ("http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003",
        "http://127.0.0.1:9004")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_route(n: int, threshold: int = 2, clock: FakeClock | None = None) -> Route:
    settings = BreakerSettings(failure_threshold=threshold, reset_timeout=10.0,
                               half_open_max_calls=1)
    pool = TargetPool(EventBus(), clock=clock or FakeClock())
    spec = EndpointSpec(name="svc", urls=URLS[:n])
    targets = tuple(pool.get("svc", u, settings) for u in spec.urls)
    return Route(spec, "config", targets, settings, 0.0, False, frozenset({"GET"}))


def pick(route: Route, n: int) -> list[str]:
    out = []
    for _ in range(n):
        t = choose(route)
        if t is None:
            out.append("-")
            continue
        t.breaker.success()
        out.append(t.url[-1])
    return out


def test_round_robin_over_all_targets() -> None:
    route = make_route(3)
    assert pick(route, 6) == ["1", "2", "3", "1", "2", "3"]


def test_skipped_target_does_not_skew_the_rotation() -> None:
    route = make_route(3)
    route.targets[1].admin_state = DRAINING
    assert Counter(pick(route, 10)) == Counter({"1": 5, "3": 5})


def test_drained_and_open_targets_are_never_chosen() -> None:
    route = make_route(3, threshold=1)
    route.targets[0].admin_state = DRAINING
    t = route.targets[1]
    assert t.breaker.acquire()
    t.breaker.failure("HTTP 500")
    assert pick(route, 4) == ["3", "3", "3", "3"]
    route.targets[2].admin_state = DRAINING
    assert choose(route) is None


def test_unhealthy_targets_are_skipped_above_the_panic_threshold() -> None:
    route = make_route(4)
    route.targets[0].health = UNHEALTHY
    route.targets[1].health = HEALTHY  # the other two are unknown: they count as passing
    assert not in_panic(route)
    assert "1" not in pick(route, 9)


def test_panic_mode_below_half_spreads_over_every_target() -> None:
    route = make_route(4)
    for t in route.targets[:3]:
        t.health = UNHEALTHY
    assert in_panic(route)
    assert Counter(pick(route, 8)) == Counter({"1": 2, "2": 2, "3": 2, "4": 2})


def test_exactly_half_passing_is_not_panic() -> None:
    route = make_route(2)
    route.targets[0].health = UNHEALTHY
    route.targets[1].health = UNKNOWN
    assert not in_panic(route)
    assert pick(route, 3) == ["2", "2", "2"]


def test_panic_mode_still_honours_drains_and_breakers() -> None:
    route = make_route(3, threshold=1)
    for t in route.targets:
        t.health = UNHEALTHY
    route.targets[0].admin_state = DRAINING
    b = route.targets[1].breaker
    assert b.acquire()
    b.failure("connect error")
    assert pick(route, 3) == ["3", "3", "3"]
    route.targets[2].breaker.trip()
    assert choose(route) is None


def test_single_target_routes_while_unhealthy_but_not_when_open() -> None:
    route = make_route(1, threshold=1)
    route.targets[0].health = UNHEALTHY
    assert pick(route, 2) == ["1", "1"]
    t = choose(route)
    assert isinstance(t, Target)
    t.breaker.failure("HTTP 500")
    assert choose(route) is None


def test_exclude_skips_targets_already_tried() -> None:
    route = make_route(2)
    first = choose(route)
    assert first is not None
    first.breaker.release()
    second = choose(route, {first})
    assert second is not None and second is not first
    second.breaker.release()
    assert choose(route, {first, second}) is None


def test_half_open_target_takes_only_its_trial_calls() -> None:
    clock = FakeClock()
    route = make_route(2, threshold=1, clock=clock)
    a = route.targets[0]
    assert a.breaker.acquire()
    a.breaker.failure("HTTP 500")
    clock.now += 10.0
    chosen = [choose(route) for _ in range(4)]  # none reports back: the trial stays held
    assert sum(1 for t in chosen if t is a) == 1


def test_retry_budget_allows_one_retry_per_five_requests() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.2, 10.0, clock=clock)
    for _ in range(4):
        budget.record_request()
    assert not budget.try_retry()
    budget.record_request()
    assert budget.try_retry()
    assert not budget.try_retry()
    for _ in range(5):
        budget.record_request()
    assert budget.try_retry()
    assert not budget.try_retry()


def test_retry_budget_window_slides() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.2, 10.0, clock=clock)
    for _ in range(10):
        budget.record_request()
    assert budget.try_retry() and budget.try_retry()
    assert not budget.try_retry()
    clock.now += 5
    assert not budget.try_retry()
    clock.now += 6  # the first second's requests and retries have left the window
    assert not budget.try_retry()  # nothing left to retry against
    for _ in range(5):
        budget.record_request()
    assert budget.try_retry()


def test_retry_budget_never_exceeds_the_ratio() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.2, 10.0, clock=clock)
    retries = 0
    for requests in range(1, 1001):
        clock.now += 0.01
        budget.record_request()
        if budget.try_retry():
            retries += 1
        assert retries <= 0.2 * requests, requests
    assert 190 <= retries <= 200  # the budget is used, not only bounded
