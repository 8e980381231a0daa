"""Active health checks: each target is probed on its own schedule, rise/fall thresholds.

The checker knows nothing of routing: it is handed the targets of each new snapshot (``sync``)
and the ``health_check`` block of each new configuration (``configure``), and writes only the
health fields of ``Target``. It imports nothing of the gateway state, which holds it. A probe
task belongs to a generation: it is cancelled when its target goes away or its probe settings
change, while the state it wrote stays on the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from yarl import URL

from orchd.events import EventBus
from orchd.log import health_logger
from orchd.looplag import LoopLag
from orchd.model import HealthSettings, UpstreamTls
from orchd.resolver import CheckedResolver
from orchd.router import Route, RoutingTable
from orchd.target import HEALTHY, UNHEALTHY, UNKNOWN, Target
from orchd.tls import TlsError, client_server_name, client_ssl

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


class HealthChecker:
    """Probe tasks for the targets of the current snapshot, run with ``settings`` (the
    configuration's ``health_check`` block: given at start, and to ``configure`` on each
    reload)."""

    def __init__(self, settings: HealthSettings, bus: EventBus, concurrency: int = 64) -> None:
        self.settings = settings
        self._bus = bus
        self._sem = asyncio.Semaphore(concurrency)
        self._tasks: dict[Target, tuple[ProbeKey, asyncio.Task[None]]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._pending: RoutingTable | None = None
        self._sync_handle: asyncio.Handle | None = None
        self.probes = 0
        self.loop_lag = LoopLag()

    async def start(self, check_address: Callable[[str, int], str | None] | None = None
                    ) -> None:
        """Open the probes' client session; ``check_address`` is ``server.allowed_upstreams``
        at connect time (None: any address)."""
        resolver = CheckedResolver(check_address) if check_address is not None else None
        connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True, resolver=resolver)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "orchd-health-check"},
        )
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
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.loop_lag.close()

    def monitoring(self) -> dict[str, Any]:
        """What the checker reports under ``GET /health``'s ``health_monitoring``."""
        return {"probes": self.probes, "probing_targets": len(self._tasks),
                "event_loop_lag": self.loop_lag.as_dict()}

    def configure(self, settings: HealthSettings) -> None:
        """A reload's ``health_check`` block: probe tasks whose settings changed restart at
        the next ``sync`` (the reload's snapshot swap has already scheduled one)."""
        self.settings = settings

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
        if target.last_check_time is not None:
            # Checked before (by this process, or by the one it took over from): keep the
            # rhythm instead of probing again at once.
            due = target.last_check_time + settings.interval - time.time()
            await asyncio.sleep(min(max(due, 0.0), settings.interval))
        else:
            await asyncio.sleep(random.uniform(0, min(settings.interval, 5.0)))
        while True:
            started = time.monotonic()
            await self.probe(target, URL(url, encoded=True), settings, tls)
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
        assert self._session is not None, "HealthChecker.start() was not called"
        error: str | None = None
        started = time.perf_counter()
        async with self._sem:
            try:
                async with self._session.get(
                    url, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=settings.timeout),
                    ssl=client_ssl(tls), server_hostname=client_server_name(tls),
                ) as resp:
                    await resp.read()
                    if not 200 <= resp.status < 400:
                        error = f"HTTP {resp.status}"
            except TimeoutError:
                error = f"timed out after {settings.timeout:g}s"
            except (aiohttp.ClientConnectorCertificateError,
                    aiohttp.ClientConnectorSSLError) as exc:
                error = f"tls error: {exc}"
            except aiohttp.ClientConnectorError as exc:
                err = exc.os_error
                why = os.strerror(err.errno) if err.errno else (err.strerror or str(err))
                error = f"connect error: {why}"
            except (aiohttp.ClientError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            except TlsError as exc:  # a file of the endpoint's tls block is gone
                error = f"tls: {exc}"
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
