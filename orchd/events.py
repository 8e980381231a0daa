"""An in-process event bus: publishers never block, each subscriber has a bounded queue.

A subscriber that falls behind is dropped: it gets one final ``subscriber_dropped`` event
and its queue stops growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ("Event", "EventBus", "Subscription")


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "time": self.time, **self.data}


class Subscription:
    """One reader's bounded queue. Iterate it; it ends when dropped or closed."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize + 1)
        self._maxsize = maxsize
        self.dropped = False

    def _offer(self, event: Event) -> None:
        if self.dropped:
            return
        if self._queue.qsize() >= self._maxsize:
            self.dropped = True
            final = Event(event.id, "subscriber_dropped",
                          {"reason": f"fell more than {self._maxsize} events behind"})
            self._queue.put_nowait(final)  # the one slot kept free for it
            self._bus.dropped += 1
            self._bus._unsubscribe(self)
            return
        self._queue.put_nowait(event)

    async def get(self) -> Event | None:
        return await self._queue.get()

    def close(self) -> None:
        self._bus._unsubscribe(self)
        if not self.dropped:
            self.dropped = True
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self._queue.get()
            if event is None:
                return
            yield event
            if event.type == "subscriber_dropped":
                return

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Fan-out of events to subscribers and to synchronous listeners (metrics, logs)."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._ids = itertools.count(1)
        self._subs: set[Subscription] = set()
        self._listeners: list[Callable[[Event], None]] = []
        self.queue_size = queue_size
        self.published = 0
        self.dropped = 0  # subscribers dropped for falling behind

    def publish(self, type: str, **data: Any) -> Event:
        event = Event(next(self._ids), type, data)
        self.published += 1
        for listener in self._listeners:
            listener(event)
        for sub in tuple(self._subs):
            sub._offer(event)
        return event

    def subscribe(self, maxsize: int | None = None) -> Subscription:
        sub = Subscription(self, maxsize or self.queue_size)
        self._subs.add(sub)
        return sub

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def _unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def close(self) -> None:
        for sub in tuple(self._subs):
            sub.close()
