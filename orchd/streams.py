"""Caps on long-lived streams: ``GET /events`` and proxied WebSockets.

Why this module exists: a stream keeps its connection busy for as long as the client likes,
and a connection with a request in progress is never evicted by ``server.max_connections``
(``orchd.edge_rules``). Without a cap, a few clients holding streams open would take every
connection of the public port and lock everyone else out with 503. Each stream therefore
takes a slot here before it starts and gives it back when it ends:

* ``server.max_streams_per_client``: slots one client address may hold;
* ``server.max_streams``: slots in total, and never more than half of
  ``server.max_connections`` (``total_cap``), so ordinary requests always keep at least half of
  the connections, whatever the streams' clients do.

A stream over a cap is answered 429 with a problem document that names the cap and its config
key, and ``Retry-After``. The limits are read from the running configuration at every
``acquire``, so a reload applies to the next stream (open ones are never cut).

What it does not do: count connections (``orchd.edge_rules`` does), or cap streams on the control
socket: whoever can open that socket is an administrator, and its connections do not count
against ``max_connections``; callers serving the control socket do not ask for a slot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from orchd.errors import ProblemError
from orchd.log import server_logger
from orchd.model import ServerSettings

__all__ = ("KINDS", "RETRY_AFTER", "StreamCaps", "StreamSlot", "total_cap")

KINDS = ("events", "websocket")  # counted from the start, so a gauge shows both at 0
RETRY_AFTER = 5  # seconds: streams end when their clients leave, at no predictable time
WARN_INTERVAL = 10.0  # seconds between two warnings about the same cap

SettingsFn = Callable[[], ServerSettings]


def total_cap(limits: ServerSettings) -> int:
    """The total cap in force: ``max_streams``, but at most half of ``max_connections``."""
    return min(limits.max_streams, limits.max_connections // 2)


class StreamSlot:
    """One stream's slot; ``release()`` (or leaving the ``with`` block) gives it back, once."""

    __slots__ = ("_caps", "client", "kind")

    def __init__(self, caps: StreamCaps, client: str, kind: str) -> None:
        self._caps: StreamCaps | None = caps
        self.client = client
        self.kind = kind

    def release(self) -> None:
        caps, self._caps = self._caps, None
        if caps is not None:
            caps._release(self)

    def __enter__(self) -> StreamSlot:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class StreamCaps:
    """The open long-lived streams of one orchd instance, counted per client address."""

    def __init__(self, settings: SettingsFn) -> None:
        self._settings = settings
        self._by_client: dict[str, int] = {}
        self.by_kind: dict[str, int] = dict.fromkeys(KINDS, 0)  # open streams per kind
        self.open = 0
        self.refused: dict[str, int] = {"max_streams": 0, "max_streams_per_client": 0}
        self._warned: dict[str, float] = {}

    def held(self, client: str) -> int:
        return self._by_client.get(client, 0)

    def acquire(self, client: str, kind: str = "events") -> StreamSlot:
        """A slot for a new stream from ``client``, or ``ProblemError`` 429 naming the cap."""
        limits = self._settings()
        held = self._by_client.get(client, 0)
        if held >= limits.max_streams_per_client:
            self._refuse("max_streams_per_client",
                         f"client {client} already holds {held} long-lived streams; "
                         f"server.max_streams_per_client is {limits.max_streams_per_client}")
        cap = total_cap(limits)
        if self.open >= cap:
            why = f"server.max_streams is {limits.max_streams}"
            if cap < limits.max_streams:
                why += (f", held to half of server.max_connections "
                        f"({limits.max_connections}): {cap}")
            self._refuse("max_streams", f"{self.open} long-lived streams are open; {why}")
        self._by_client[client] = held + 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        self.open += 1
        return StreamSlot(self, client, kind)

    def _release(self, slot: StreamSlot) -> None:
        held = self._by_client.get(slot.client, 0) - 1
        if held > 0:
            self._by_client[slot.client] = held
        else:
            self._by_client.pop(slot.client, None)
        self.by_kind[slot.kind] = max(0, self.by_kind.get(slot.kind, 0) - 1)
        self.open = max(0, self.open - 1)

    def _refuse(self, key: str, detail: str) -> None:
        self.refused[key] += 1
        now = time.monotonic()
        if now - self._warned.get(key, -WARN_INTERVAL) >= WARN_INTERVAL:
            self._warned[key] = now
            server_logger.warning("server.%s reached: refusing long-lived streams (%s)",
                                  key, detail)
        raise ProblemError(429, "Too many streams", detail,
                           headers={"Retry-After": str(RETRY_AFTER)},
                           extra={"reason": key})

    def as_dict(self) -> dict[str, Any]:
        limits = self._settings()
        return {"open": self.open, "by_kind": dict(self.by_kind), "clients": len(self._by_client),
                "cap": total_cap(limits), "per_client_cap": limits.max_streams_per_client,
                "refused": dict(self.refused)}

