"""Active health checks: each target is probed on its own schedule, rise/fall thresholds.

The checker knows nothing of routing: it is handed the targets of each new snapshot (``sync``)
and the ``health_check`` block of each new configuration (``configure``), and writes only the
health fields of ``Target``. It imports nothing of the gateway state, which holds it. A probe
task belongs to a generation: it is cancelled when its target goes away or its probe settings
change, while the state it wrote stays on the target.

Probes go through an ``UpstreamPool`` of their own (orchd/upstream.py), not the proxy's: the
connection a probe keeps alive for its next round is not taken by proxied requests (nor the
other way round), it is kept as long as the interval needs, and the process that probes need
not proxy at all (with workers, the supervisor probes for all of them). Targets of one origin
(scheme, host, port, ``tls``) share the pool's idle connections: as many as their probes
overlapped, about one per target at most. The pool applies ``server.allowed_upstreams``
to the address each connection reached, port included, as it does for the proxy. A probe is
one write and one parse on a kept connection: 1,000 targets every second cost ~7.5% of a core,
against ~15% through aiohttp's client (docs/performance.md, change 19).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

from yarl import URL

from orchd.events import EventBus
from orchd.log import health_logger
from orchd.looplag import LoopLag
from orchd.model import HealthSettings, UpstreamTls
from orchd.router import Route, RoutingTable
from orchd.target import HEALTHY, UNHEALTHY, UNKNOWN, Target
from orchd.tls import TlsError
from orchd.upstream import AddressRefused, UpstreamBroke, UpstreamConnectError, UpstreamPool

__all__ = ("HealthChecker", "probe_url")


def probe_url(target: Target, path: str | None) -> URL:
    """``/x`` from the target's root; ``x`` under its base URL; none: the base URL."""
    if not path:
        return target.yurl
    if path.startswith("/"):
        return URL(str(target.origin).rstrip("/") + path, encoded=True)
    base = str(target.yurl).rstrip("/")
    return URL(f"{base}/{path}", encoded=True)


ProbeKey = tuple[str, HealthSettings, UpstreamTls | None]

# What a probe reads of an answer's body before it stops (and drops the connection): the
# verdict is the status; a health page larger than this costs a new connection, not memory.
PROBE_BODY_LIMIT: Final = 64 * 1024
_HEADERS: Final = [("User-Agent", "orchd-health-check"), ("Accept", "*/*")]


def keepalive_for(settings: HealthSettings) -> float:
    """How long a probe connection may wait idle: past the next round, at most 5 minutes
    (an upstream closes an idle connection long before that; a new one is cheap then)."""
    return min(settings.interval + settings.timeout + 30.0, 300.0)


def probe_error(exc: BaseException, timeout: float) -> str:
    """``error_message`` of a probe that raised ``exc``."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    cause = exc.__cause__
    if isinstance(cause, AddressRefused):
        return f"connect error: {cause}"
    if isinstance(cause, ssl.SSLError):
        return f"tls error: {cause}"
    if isinstance(cause, TlsError):  # a file of the endpoint's tls block is gone
        return f"tls: {cause}"
    if isinstance(exc, UpstreamConnectError):
        code = exc.errno
        # errno's text, as loops word it differently; a resolver's (negative codes) as given
        why = os.strerror(code) if code and code > 0 else (exc.strerror or str(exc))
        return f"connect error: {why}"
    if isinstance(exc, UpstreamBroke):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class HealthChecker:
    """Probe tasks for the targets of the current snapshot, run with ``settings`` (the
    configuration's ``health_check`` block: given at start, and to ``configure`` on each
    reload)."""

    def __init__(self, settings: HealthSettings, bus: EventBus, concurrency: int = 64) -> None:
        self.settings = settings
        self._bus = bus
        self._sem = asyncio.Semaphore(concurrency)
        self._tasks: dict[Target, tuple[ProbeKey, asyncio.Task[None]]] = {}
        self._pool = UpstreamPool(keepalive_timeout=keepalive_for(settings))
        self._started = False
        self._pending: RoutingTable | None = None
        self._sync_handle: asyncio.Handle | None = None
        self.probes = 0
        self.loop_lag = LoopLag()

    async def start(self, check_address: Callable[[str, int], str | None] | None = None
                    ) -> None:
        """Ready the probes' pool; ``check_address`` is ``server.allowed_upstreams`` at
        connect time (None: any address)."""
        self._pool.check_address = check_address
        self._started = True
        self.loop_lag.start()

    async def close(self) -> None:
        if self._sync_handle is not None:
            self._sync_handle.cancel()
            self._sync_handle = None
        tasks = [t for _, t in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._started:
            self._started = False
            await self._pool.close()
        await self.loop_lag.close()

    def monitoring(self) -> dict[str, Any]:
        """What the checker reports under ``GET /health``'s ``health_monitoring``."""
        return {"probes": self.probes, "probing_targets": len(self._tasks),
                "event_loop_lag": self.loop_lag.as_dict()}

    def configure(self, settings: HealthSettings) -> None:
        """A reload's ``health_check`` block: probe tasks whose settings changed restart at
        the next ``sync`` (the reload's snapshot swap has already scheduled one)."""
        self.settings = settings
        self._pool.keepalive_timeout = keepalive_for(settings)

    def sync(self, snapshot: RoutingTable) -> None:
        """Match the probe tasks to a new snapshot's targets, once the current change is done.

        The work runs on the next loop iteration, so a reload that swaps the snapshot and
        then installs its new ``health_check`` block is seen whole (and several swaps in a
        row cost one pass).
        """
        self._pending = snapshot
        if self._sync_handle is None:
            self._sync_handle = asyncio.get_running_loop().call_soon(self._apply_pending)

    def _apply_pending(self) -> None:
        self._sync_handle = None
        snapshot, self._pending = self._pending, None
        if snapshot is not None:
            self.sync_now(snapshot)

    def sync_now(self, snapshot: RoutingTable) -> None:
        """Start, keep or cancel probe tasks to match the snapshot's targets."""
        settings = self.settings
        wanted: dict[Target, ProbeKey] = {}
        if settings.enabled:
            for route in snapshot.routes.values():
                for target in route.targets:
                    wanted[target] = (str(probe_url(target, route.spec.health_check_path)),
                                      settings, route.spec.tls)
        for target, (key, task) in list(self._tasks.items()):
            if wanted.get(target) != key:
                task.cancel()
                del self._tasks[target]
        for target, key in wanted.items():
            if target not in self._tasks:
                task = asyncio.create_task(self._loop(target, key),
                                           name=f"health:{target.endpoint}:{target.url}")
                self._tasks[target] = (key, task)
        if not settings.enabled:
            for route in snapshot.routes.values():
                for target in route.targets:
                    self._set(target, UNKNOWN, "health checks are disabled")

    async def _loop(self, target: Target, key: ProbeKey) -> None:
        url, settings, tls = key
        path = URL(url, encoded=True).raw_path_qs
        if target.last_check_time is not None:
            # Checked before (by this process, or by the one it took over from): keep the
            # rhythm instead of probing again at once.
            due = target.last_check_time + settings.interval - time.time()
            await asyncio.sleep(min(max(due, 0.0), settings.interval))
        else:
            await asyncio.sleep(random.uniform(0, min(settings.interval, 5.0)))
        while True:
            started = time.monotonic()
            await self._probe(target, url, path, settings, tls)
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, settings.interval - elapsed))

    async def check_route(self, route: Route) -> list[dict[str, Any]]:
        """Probe every target of a route now (``POST /health/check/{id}``)."""
        settings = self.settings
        urls = [probe_url(t, route.spec.health_check_path) for t in route.targets]
        await asyncio.gather(*(self.probe(t, u, settings, route.spec.tls)
                               for t, u in zip(route.targets, urls, strict=True)))
        return [t.as_dict() for t in route.targets]

    async def probe(self, target: Target, url: URL, settings: HealthSettings,
                    tls: UpstreamTls | None = None) -> bool:
        """Probe ``target`` once at ``url`` and record the outcome; True on success."""
        return await self._probe(target, str(url), url.raw_path_qs, settings, tls)

    async def _probe(self, target: Target, url: str, path: str, settings: HealthSettings,
                     tls: UpstreamTls | None) -> bool:
        assert self._started, "HealthChecker.start() was not called"
        started = time.perf_counter()
        async with self._sem:
            error = await self._get(url, path, settings.timeout, tls)
        self.probes += 1
        target.response_time = round(time.perf_counter() - started, 6)
        target.last_check_time = time.time()
        if error is None:
            target.consecutive_successes += 1
            target.consecutive_failures = 0
            target.error_message = None
            if target.health == UNKNOWN or (
                target.health == UNHEALTHY
                and target.consecutive_successes >= settings.healthy_threshold
            ):
                self._set(target, HEALTHY, f"probe of {url} succeeded")
            return True
        target.consecutive_failures += 1
        target.consecutive_successes = 0
        target.error_message = error
        if target.health != UNHEALTHY and (
            target.consecutive_failures >= settings.unhealthy_threshold
        ):
            self._set(target, UNHEALTHY, error)
        return False

    async def _get(self, url: str, path: str, timeout: float,
                   tls: UpstreamTls | None) -> str | None:
        """``GET path`` on a kept connection to ``url``'s origin: None when the answer is
        2xx or 3xx and has ended within ``timeout``, else the reason it failed."""
        pool = self._pool
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            origin = pool.origin_for(url, tls)
            resp = await pool.request(origin, "GET", path, _HEADERS, None, None, timeout,
                                      timeout)
            try:
                await resp.discard(PROBE_BODY_LIMIT, deadline)
            finally:
                resp.release()
        except (OSError, TimeoutError) as exc:  # the pool's errors are OSErrors
            return probe_error(exc, timeout)
        status = resp.status
        return None if 200 <= status < 400 else f"HTTP {status}"

    def _set(self, target: Target, new: str, reason: str) -> None:
        old = target.health
        if old == new:
            return
        target.health = new
        log = health_logger.warning if new == UNHEALTHY else health_logger.info
        log("target %s of %s is %s (%s)", target.url, target.endpoint, new, reason)
        self._bus.publish("health", endpoint_id=target.endpoint, url=target.url,
                          old_status=old, status=new, reason=reason,
                          consecutive_failures=target.consecutive_failures,
                          consecutive_successes=target.consecutive_successes)
