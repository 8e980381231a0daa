"""Every endpoint's ``Guard``, kept across reloads as targets' breakers are.

``GuardPool.sync`` listens to the registry's swaps (``Registry.on_swap``): it hangs a
``Guard`` on each ``Route`` of the new snapshot that has an ``auth``, ``rate_limit`` or
``cors`` block (``Route.guard``; None otherwise, so an unprotected endpoint costs the
proxy one attribute check). The swap and this call run with no ``await`` in between: no
request sees the snapshot without its guards.

State belongs to the endpoint's settings, not to a snapshot: an endpoint whose ``auth`` is
equal keeps its ``Authenticator`` (and its cache of verified tokens), one whose
``rate_limit`` is equal keeps its ``RateLimiter`` (and its buckets); a change rebuilds that
part only, and a removed endpoint's go with it. One ``JwksRegistry`` per instance holds the
key sets, shared by URL (or file); the ones no endpoint names any more are closed after
the swap. Counters (``orchd.auth.guard.Counters``) outlive guards and are forgotten with
their endpoint.

``instances`` (the etcd store's count of live instances; None with the file store, where
one instance is all there is) is handed to every ``scope: cluster`` limiter, which divides
its rate by it. ``workers`` (``server.workers``; each worker process has a pool of its own)
divides every limit once more: an instance's rate is its workers' shares together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from orchd.auth.gateway import Authenticator, build_authenticator
from orchd.auth.guard import Counters, Guard
from orchd.auth.jwks import JwksCache, JwksRegistry
from orchd.auth.ratelimit import Instances, RateLimiter
from orchd.model import AuthSettings, RateLimitSettings
from orchd.router import Route, RoutingTable
from orchd.store.consumers import ConsumerDirectory

__all__ = ("GuardPool",)


_S = TypeVar("_S")
_T = TypeVar("_T")


def _kept(built: dict[str, tuple[_S, _T]], name: str, settings: _S | None,
          build: Callable[[_S], _T]) -> _T | None:
    """``name``'s object for ``settings``: the one built before if they are equal, else a
    new one (and none without settings)."""
    if settings is None:
        built.pop(name, None)
        return None
    kept = built.get(name)
    if kept is not None and kept[0] == settings:
        return kept[1]
    made = build(settings)
    built[name] = (settings, made)
    return made


class _Shares:
    """What one limiter divides its rate by: this process's workers, times the live
    instances for a ``scope: cluster`` limit."""

    __slots__ = ("instances", "workers")

    def __init__(self, workers: int, instances: Instances | None) -> None:
        self.workers = workers
        self.instances = instances

    @property
    def count(self) -> int:
        return self.workers * (self.instances.count if self.instances is not None else 1)


class GuardPool:
    def __init__(self, jwks: JwksRegistry, consumers: ConsumerDirectory | None,
                 instances: Instances | None = None, workers: int = 1) -> None:
        self.jwks = jwks
        self.consumers = consumers
        self.instances = instances
        self.workers = workers
        self.counters = Counters()
        self._auth: dict[str, tuple[AuthSettings, Authenticator]] = {}
        self._limits: dict[str, tuple[RateLimitSettings, RateLimiter]] = {}
        self._guards: dict[str, Guard] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the registry's swaps

    def sync(self, snapshot: RoutingTable) -> None:
        names = set(snapshot.routes)
        for route in snapshot.routes.values():
            route.guard = self._guard_for(route)
        for name in [n for n in self._guards if n not in names]:
            del self._guards[name]
        for name in [n for n in self._auth if n not in names]:
            del self._auth[name]
        for name in [n for n in self._limits if n not in names]:
            del self._limits[name]
        for name in [n for n in self.counters.limited if n not in names]:
            self.counters.forget(name)
        for name in {n for n, _ in self.counters.failures if n not in names}:
            self.counters.forget(name)
        with contextlib.suppress(RuntimeError):  # no loop: nothing to close or fetch yet
            loop = asyncio.get_running_loop()
            task = loop.create_task(self._retain(), name="orchd-jwks-retain")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _guard_for(self, route: Route) -> Guard | None:
        spec = route.spec
        name = spec.name
        if spec.auth is None and spec.rate_limit is None and spec.cors is None:
            self._guards.pop(name, None)
            self._auth.pop(name, None)
            self._limits.pop(name, None)
            return None
        authenticator = self._authenticator(name, spec.auth)
        limiter = self._limiter(name, spec.rate_limit)
        methods = tuple(spec.methods)
        guard = self._guards.get(name)
        if (guard is not None and guard.authenticator is authenticator
                and guard.limiter is limiter and guard.cors == spec.cors
                and guard.methods == methods):
            return guard
        guard = Guard(name, methods, authenticator, limiter, spec.cors, self.counters)
        self._guards[name] = guard
        return guard

    def _authenticator(self, name: str, settings: AuthSettings | None) -> Authenticator | None:
        return _kept(self._auth, name, settings,
                     lambda s: build_authenticator(s, self.jwks, self.consumers))

    def _limiter(self, name: str, settings: RateLimitSettings | None) -> RateLimiter | None:
        return _kept(self._limits, name, settings, self._build_limiter)

    def _build_limiter(self, settings: RateLimitSettings) -> RateLimiter:
        cluster = self.instances if settings.scope == "cluster" else None
        if self.workers == 1:
            return RateLimiter(settings, instances=cluster)
        return RateLimiter(settings, instances=_Shares(self.workers, cluster))

    def _in_use(self) -> tuple[set[str], set[str]]:
        urls: set[str] = set()
        files: set[str] = set()
        for settings, _ in self._auth.values():
            jwt = settings.jwt
            if jwt is not None and jwt.jwks_url is not None:
                urls.add(jwt.jwks_url)
            elif jwt is not None and jwt.jwks_file is not None:
                files.add(jwt.jwks_file)
        return urls, files

    async def _retain(self) -> None:
        """After a swap: close the key sets no endpoint names (read when this runs, so a
        later swap that names one again keeps it), fetch the new ones."""
        urls, files = self._in_use()
        await self.jwks.retain(urls, files)
        for url in urls:
            cache: JwksCache = self.jwks.for_url(url)
            if cache.fetched_at is None:
                cache.refresh_soon()

    # -- lifecycle

    async def start(self) -> None:
        """Fetch every key set now (failures are recorded and retried by requests)."""
        await self.jwks.refresh_all()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.jwks.close()

    # -- views

    def status(self) -> dict[str, Any]:
        """``auth`` of ``/health/status``: the key sets, and with the etcd store the live
        instances that ``scope: cluster`` limits are shared by."""
        status: dict[str, Any] = {"jwks": self.jwks.status()}
        if self.instances is not None:
            status["instances"] = self.instances.count
        return status
