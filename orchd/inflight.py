"""Proxied requests in flight, by endpoint, so that a reload can end the ones it orphaned.

Requests keep the routing snapshot they started with, so a reload never cuts one: a WebSocket
or an SSE stream to an endpoint that survives the reload (changed or not) keeps flowing to the
upstream it was opened to. A request to an endpoint the new snapshot no longer has (removed
from the file, or deregistered through the API) gets ``server.shutdown_timeout`` to finish, as
it would on a graceful stop; whatever is still open then is cut (its connection is closed). If
the endpoint is back in the routing table by then, nothing is cut.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from orchd.log import proxy_logger
from orchd.router import RoutingTable

__all__ = ("InFlight",)


class InFlight:
    def __init__(self) -> None:
        self._open: dict[str, dict[object, Callable[[], object]]] = {}
        self._live: set[str] | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._grace = 0.0

    def track(self, endpoint: str, cut: Callable[[], object]) -> _Tracked:
        """Register one request for its lifetime (``with``); ``cut`` ends it if its endpoint
        goes. A plain class, not a generator: it runs once per proxied request."""
        return _Tracked(self._open, endpoint, cut)

    def count(self, endpoint: str | None = None) -> int:
        return sum(len(v) for k, v in self._open.items() if endpoint in (None, k))

    def on_swap(self, snapshot: RoutingTable, grace: float) -> None:
        """A new routing table is in place: give orphaned requests ``grace`` seconds."""
        live = set(snapshot.routes)
        self._live = live
        self._grace = grace
        loop = asyncio.get_running_loop()
        for key in self._open:
            if key not in live and key not in self._timers:
                self._timers[key] = loop.call_later(max(grace, 0.0), self._expire, key)

    def _expire(self, key: str) -> None:
        self._timers.pop(key, None)
        if self._live is not None and key in self._live:
            return
        cuts = list(self._open.get(key, {}).values())
        if cuts:
            proxy_logger.warning("%s: removed %gs ago; cutting its %d request(s) still open",
                                 key, self._grace, len(cuts))
        for cut in cuts:
            cut()

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


class _Tracked:
    __slots__ = ("_cut", "_endpoint", "_open")

    def __init__(self, open_: dict[str, dict[object, Callable[[], object]]], endpoint: str,
                 cut: Callable[[], object]) -> None:
        self._open, self._endpoint, self._cut = open_, endpoint, cut

    def __enter__(self) -> None:
        entries = self._open.get(self._endpoint)
        if entries is None:
            entries = self._open[self._endpoint] = {}
        entries[self] = self._cut

    def __exit__(self, *exc: object) -> None:
        entries = self._open.get(self._endpoint)
        if entries is not None:
            entries.pop(self, None)
            if not entries:
                del self._open[self._endpoint]
