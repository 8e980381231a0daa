"""The breaker against a small reference model, driven by Hypothesis.

Random successes, failures, releases, clock advances, trips and resets; after every step the
breaker's state, counts, answers and published transitions must match the model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from orchd.breaker import CircuitBreaker
from orchd.model import BreakerSettings

THRESHOLD = 3
RESET = 10.0
HALF = 2


@dataclass
class Model:
    """The state machine of DESIGN §6, written as plainly as possible."""

    now: float = 0.0
    state: str = "closed"
    failures: int = 0
    opened_at: float = 0.0
    trials: int = 0
    transitions: list[tuple[str, str]] = field(default_factory=list)

    def _go(self, new: str) -> None:
        if new != self.state:
            self.transitions.append((self.state, new))
        self.state = new
        self.trials = 0

    def observe(self) -> str:
        if self.state == "open" and self.now - self.opened_at >= RESET:
            self._go("half_open")
        return self.state

    def acquire(self) -> bool:
        state = self.observe()
        if state == "closed":
            return True
        if state == "half_open" and self.trials < HALF:
            self.trials += 1
            return True
        return False

    def success(self) -> None:
        state = self.observe()
        if state == "half_open":
            self._go("closed")
            self.failures = 0
        elif state == "closed":
            self.failures = 0

    def failure(self) -> None:
        state = self.observe()
        if state == "half_open":
            self.failures += 1
            self.opened_at = self.now
            self._go("open")
        elif state == "closed":
            self.failures += 1
            if self.failures >= THRESHOLD:
                self.opened_at = self.now
                self._go("open")

    def release(self) -> None:
        if self.state == "half_open" and self.trials > 0:
            self.trials -= 1

    def trip(self) -> None:
        self._go("forced_open")

    def reset(self) -> None:
        self._go("closed")
        self.failures = 0


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.seen: list[tuple[str, str]] = []
        self.breaker = CircuitBreaker(
            BreakerSettings(failure_threshold=THRESHOLD, reset_timeout=RESET,
                            half_open_max_calls=HALF),
            clock=lambda: self.model.now, wall=lambda: self.model.now,
            listener=lambda _b, old, new, _reason: self.seen.append((old, new)),
        )
        self.held = 0  # acquisitions not yet reported

    @rule()
    def acquire(self) -> None:
        got = self.breaker.acquire()
        assert got == self.model.acquire()
        if got:
            self.held += 1

    @precondition(lambda self: self.held > 0)
    @rule()
    def succeed(self) -> None:
        self.held -= 1
        self.breaker.success()
        self.model.success()

    @precondition(lambda self: self.held > 0)
    @rule()
    def fail(self) -> None:
        self.held -= 1
        self.breaker.failure("HTTP 500")
        self.model.failure()

    @precondition(lambda self: self.held > 0)
    @rule()
    def release(self) -> None:
        self.held -= 1
        self.breaker.release()
        self.model.release()

    @rule(seconds=st.sampled_from([0.5, 1.0, 4.0, 9.99, 10.0, 25.0]))
    def advance(self, seconds: float) -> None:
        self.model.now += seconds

    @rule()
    def trip(self) -> None:
        self.breaker.trip()
        self.model.trip()

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.model.reset()

    @invariant()
    def matches_model(self) -> None:
        assert self.breaker.state == self.model.observe()
        assert self.breaker.failure_count == self.model.failures
        assert self.breaker.half_open_calls == self.model.trials
        assert self.seen == self.model.transitions

    @invariant()
    def answers_are_consistent(self) -> None:
        state = self.model.observe()
        assert self.breaker.allows() == (
            state == "closed" or (state == "half_open" and self.model.trials < HALF))
        wait = self.breaker.retry_after()
        if state == "open":
            assert 0 < wait <= RESET
            assert wait == RESET - (self.model.now - self.model.opened_at)
        elif state == "closed":
            assert wait == 0


BreakerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50,
                                            deadline=None)
TestBreakerMachine = BreakerMachine.TestCase
