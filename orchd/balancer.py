"""Target choice: round robin over routable targets, with Envoy's panic threshold.

A target is routable when its administrative state is ``active``, it passes its health
checks (``unknown`` counts as passing) and its breaker lets the call through. When fewer than
half of an endpoint's targets pass their health checks, the health verdict is ignored (panic
mode) but drains and breakers still hold.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from orchd.router import Route
from orchd.target import ACTIVE, Target

__all__ = ("RetryBudget", "choose", "in_panic")


def in_panic(route: Route) -> bool:
    targets = route.targets
    passing = sum(1 for t in targets if t.passes_health)
    return passing * 2 < len(targets)


def choose(route: Route, exclude: frozenset[Target] | set[Target] = frozenset()) -> Target | None:
    """Pick a target and acquire its breaker; ``None`` when no target may take the call."""
    targets = route.targets
    n = len(targets)
    if n == 1:
        t = targets[0]
        if t.admin_state == ACTIVE and t not in exclude and t.breaker.acquire():
            return t
        return None
    panic = in_panic(route)
    start = route.rr
    for i in range(n):
        index = (start + i) % n
        t = targets[index]
        if t.admin_state != ACTIVE or t in exclude:
            continue
        if not panic and not t.passes_health:
            continue
        if t.breaker.acquire():
            # The cursor moves past the chosen target, so the targets left share the
            # load evenly when one is skipped.
            route.rr = (index + 1) % n
            return t
    return None


class RetryBudget:
    """Retries may add at most ``ratio`` extra requests over any ``window`` seconds."""

    __slots__ = ("_buckets", "_clock", "_requests", "_retries", "ratio", "window")

    def __init__(self, ratio: float = 0.2, window: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = ratio
        self.window = window
        self._clock = clock
        self._buckets: deque[list[float]] = deque()  # [second, requests, retries]
        self._requests = 0
        self._retries = 0

    def _bucket(self) -> list[float]:
        now = int(self._clock())
        buckets = self._buckets
        while buckets and buckets[0][0] <= now - self.window:
            old = buckets.popleft()
            self._requests -= int(old[1])
            self._retries -= int(old[2])
        if not buckets or buckets[-1][0] != now:
            buckets.append([now, 0, 0])
        return buckets[-1]

    def record_request(self) -> None:
        self._bucket()[1] += 1
        self._requests += 1

    def try_retry(self) -> bool:
        bucket = self._bucket()
        if self._retries + 1 > self.ratio * self._requests:
            return False
        bucket[2] += 1
        self._retries += 1
        return True
