"""The registry: what endpoints exist (from the file and from the API), what operators set,
and the current routing snapshot built from them.

Only the change consumer (``orchd.changes``) calls the mutating methods; each call ends in
``_swap``, which builds a new ``RoutingTable`` off to the side and installs it in one
assignment. Readers take ``registry.snapshot`` once per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchd.events import EventBus
from orchd.model import BreakerSettings, EndpointSpec
from orchd.router import Route, RoutingTable
from orchd.store import AdminRecord
from orchd.target import ACTIVE, TargetPool

__all__ = ("Diff", "Entry", "Registry")

CONFIG = "config"
API = "api"


@dataclass(frozen=True, slots=True)
class Entry:
    spec: EndpointSpec
    source: str
    registration_time: float


@dataclass(frozen=True, slots=True)
class Diff:
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"added": list(self.added), "changed": list(self.changed),
                "removed": list(self.removed), "unchanged": len(self.unchanged)}

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


@dataclass
class Registry:
    pool: TargetPool
    bus: EventBus
    breaker_defaults: BreakerSettings = field(default_factory=BreakerSettings)
    clock: Callable[[], float] = time.time
    entries: dict[str, Entry] = field(default_factory=dict)
    admin: dict[str, AdminRecord] = field(default_factory=dict)
    revision: int = 0
    snapshot: RoutingTable = field(default_factory=lambda: RoutingTable({}, {}, 0))
    on_swap: list[Callable[[RoutingTable], None]] = field(default_factory=list)

    # -- reads

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name)

    def names(self, source: str | None = None) -> list[str]:
        return [n for n, e in self.entries.items() if source is None or e.source == source]

    # -- changes (called by the change consumer only)

    def set_config_endpoints(
        self, specs: Iterable[EndpointSpec], breaker_defaults: BreakerSettings
    ) -> Diff:
        """Replace the file's endpoints as a whole; API endpoints are left alone."""
        new = {s.name: s for s in specs}
        old = {n: e for n, e in self.entries.items() if e.source == CONFIG}
        added = tuple(n for n in new if n not in old)
        removed = tuple(n for n in old if n not in new)
        changed = tuple(n for n in new if n in old and old[n].spec != new[n])
        unchanged = tuple(n for n in new if n in old and old[n].spec == new[n])
        now = self.clock()
        entries = {n: e for n, e in self.entries.items() if e.source != CONFIG}
        for name, spec in new.items():
            prev = old.get(name)
            entries[name] = Entry(spec, CONFIG, prev.registration_time if prev else now)
        self.entries = dict(sorted(entries.items(), key=lambda kv: kv[1].registration_time))
        self.breaker_defaults = breaker_defaults
        for name in removed:
            self.admin.pop(name, None)
        self._swap()
        return Diff(added, changed, removed, unchanged)

    def put_api(self, spec: EndpointSpec, registration_time: float) -> None:
        self.entries[spec.name] = Entry(spec, API, registration_time)
        self._swap()

    def remove(self, name: str) -> Entry | None:
        entry = self.entries.pop(name, None)
        self.admin.pop(name, None)
        self._swap()
        return entry

    def set_admin(self, name: str, admin: AdminRecord) -> None:
        if admin.is_empty():
            self.admin.pop(name, None)
        else:
            self.admin[name] = admin
        self._swap()

    def load_admin(self, admin: Mapping[str, AdminRecord]) -> None:
        self.admin = dict(admin)
        self._swap()

    def replace_all(self, entries: dict[str, Entry], admin: Mapping[str, AdminRecord],
                    breaker_defaults: BreakerSettings) -> None:
        """Take another registry's contents whole (a worker process, from its supervisor)."""
        self.entries = entries
        self.admin = dict(admin)
        self.breaker_defaults = breaker_defaults
        self._swap()

    # -- snapshot

    def _swap(self) -> None:
        routes = []
        keep: list[tuple[str, str]] = []
        for name, entry in self.entries.items():
            spec = entry.spec
            settings = BreakerSettings.from_dict(spec.breaker_overrides, self.breaker_defaults)
            admin = self.admin.get(name, AdminRecord())
            targets = []
            for url in spec.urls:
                target = self.pool.get(name, url, settings)
                target.admin_state = admin.targets.get(url, ACTIVE)
                targets.append(target)
                keep.append((name, url))
            disabled = spec.disabled if admin.disabled is None else admin.disabled
            routes.append(Route(spec, entry.source, tuple(targets), settings,
                                entry.registration_time, disabled, frozenset(spec.methods)))
        self.revision += 1
        self.snapshot = RoutingTable.build(routes, self.revision)
        self.pool.retain(keep)
        for listener in self.on_swap:
            listener(self.snapshot)

    # -- views

    def stats(self) -> dict[str, Any]:
        routes = list(self.snapshot.routes.values())
        statuses = [r.status() for r in routes]
        by_source: dict[str, int] = {CONFIG: 0, API: 0}
        for r in routes:
            by_source[r.source] = by_source.get(r.source, 0) + 1
        active = statuses.count("active")
        return {
            "total": len(routes),
            "active": active,
            "inactive": len(routes) - active,
            "disabled": statuses.count("disabled"),
            "unhealthy": statuses.count("unhealthy"),
            "draining": statuses.count("draining"),
            "by_source": by_source,
        }
