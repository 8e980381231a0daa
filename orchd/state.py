"""The gateway's shared state: what the routes, the proxy and the background tasks read.

``GatewayState`` is built whole, once, by the composition root (``orchd.daemon``) and passed
explicitly (to the applications under ``STATE``): the boot settings, the running
configuration, the event bus, the target pool, the registry, the store, the health checker
and the stream caps, plus the few flags of the process's life (started, ready, stopping).

What it does not hold: the change consumer (``orchd.changes``). The consumer is the one
writer of this state, so it is built from it, afterwards; the API reaches it under
``orchd.api.common.CHANGES``. Imports run one way: ``changes`` -> ``state`` -> ``health``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from orchd.events import EventBus
from orchd.model import Config, ServerSettings
from orchd.registry import Registry
from orchd.streams import StreamCaps
from orchd.target import TargetPool
from orchd.timestamps import iso
from orchd.upstream_policy import UpstreamPolicy, policy_for

if TYPE_CHECKING:
    from orchd.auth.pool import GuardPool
    from orchd.health import HealthChecker
    from orchd.store import Store
    from orchd.tls import TlsEdge

__all__ = ("STATE", "GatewayState", "ReloadStatus", "Workers", "sync_workers")


class Workers(Protocol):
    """The worker processes (``server.workers`` above 1; ``orchd.workers.supervisor``)."""

    async def sync(self) -> None:
        """Every worker has the state as it is now when this returns."""

    async def refresh(self) -> None:
        """The workers' latest counts are in the instance's when this returns."""

    def status(self) -> dict[str, Any]:
        """How many there are, which run now, and how many were replaced."""


@dataclass
class ReloadStatus:
    ok: bool = True
    at: float | None = None
    error: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    trigger: str | None = None
    diff: dict[str, Any] | None = None
    restart_required: list[str] = field(default_factory=list)
    count: int = 0
    failures: int = 0
    last_success_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "at": self.at,
            "at_iso": iso(self.at),
            "error": self.error,
            "errors": self.errors,
            "trigger": self.trigger,
            "diff": self.diff,
            "restart_required": self.restart_required,
        }


@dataclass
class GatewayState:
    """Everything the routes, the proxy and the background tasks share; only the change
    consumer assigns ``config`` (a reload) and ``last_reload``."""

    boot: ServerSettings
    boot_file: ServerSettings
    config: Config
    config_path: str | None
    bus: EventBus
    pool: TargetPool
    registry: Registry
    store: Store
    health: HealthChecker
    started_at: float = field(default_factory=time.time)
    started: bool = False
    ready: bool = False
    stopping: bool = False
    watching: bool = False
    store_degraded: str | None = None
    last_reload: ReloadStatus = field(default_factory=ReloadStatus)
    streams: StreamCaps = field(init=False)  # /events and WebSockets: orchd.streams
    # The public listeners' (host, port): server.allowed_upstreams refuses them.
    own_addresses: tuple[tuple[str, int], ...] = ()
    tls: TlsEdge | None = None  # the public port's certificates (server.tls)
    # The endpoints' auth, rate limits and CORS, and the JWK Sets (orchd.auth.pool).
    guards: GuardPool | None = None
    # The worker processes that serve the public port, with server.workers above 1.
    workers: Workers | None = None

    def __post_init__(self) -> None:
        self.streams = StreamCaps(lambda: self.config.server)

    @property
    def admin_token(self) -> str:
        return self.config.server.admin_token

    @property
    def upstream_policy(self) -> UpstreamPolicy:
        """``server.allowed_upstreams`` with this instance's own listening addresses."""
        return policy_for(self.config.server.allowed_upstreams, self.own_addresses)

    def upstream_address_allowed(self, ip: str, port: int | None = None) -> str | None:
        """``server.allowed_upstreams`` at connect time: None when orchd may connect to
        ``ip`` (and ``port``), else why not (every client of orchd's asks: the upstream
        pool, WebSocket upgrades and health probes)."""
        return self.upstream_policy.check_address(ip, port)


STATE: web.AppKey[GatewayState] = web.AppKey("state", GatewayState)


async def sync_workers(state: GatewayState) -> None:
    """After a change made outside the change consumer (a breaker tripped or reset, a
    consumer's keys): wait until every worker has it, if there are workers."""
    if state.workers is not None:
        await state.workers.sync()
