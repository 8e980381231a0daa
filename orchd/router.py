"""The routing snapshot: an immutable table from endpoint name to route, and path mapping.

A snapshot is built off to the side with no I/O, then swapped in by one assignment
(``Registry.snapshot``); a request reads it once and keeps it to the end.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from orchd.auth.guard import Guard
from orchd.model import BreakerSettings, EndpointSpec
from orchd.target import DISABLED, DRAINING, Target

__all__ = ("PREFIX", "PathError", "Route", "RoutingTable", "auth_mode", "map_path")

PREFIX = "/orchestrator/"
_SEP_RE = re.compile(r"[/\\]")


class PathError(ValueError):
    """The request path tries to climb above the upstream's base path."""


@dataclass(slots=True, eq=False)
class Route:
    """One routable endpoint in a snapshot. Only ``rr`` (the round-robin cursor) mutates,
    and ``guard``, set once as the snapshot is installed (``orchd.auth.pool``), before any
    request reads it: None for an endpoint without ``auth``, ``rate_limit`` or ``cors``."""

    spec: EndpointSpec
    source: str
    targets: tuple[Target, ...]
    breaker_settings: BreakerSettings
    registration_time: float
    admin_disabled: bool
    methods: frozenset[str] = field(default_factory=frozenset)
    rr: int = 0
    guard: Guard | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def disabled(self) -> bool:
        return self.admin_disabled

    @property
    def all_draining(self) -> bool:
        return all(t.admin_state in (DRAINING, DISABLED) for t in self.targets)

    def status(self) -> str:
        """``disabled``, ``draining``, ``unhealthy`` or ``active``."""
        if self.admin_disabled:
            return "disabled"
        if self.all_draining:
            return "draining"
        if all(not t.passes_health for t in self.targets):
            return "unhealthy"
        return "active"

    def breaker_state(self) -> str:
        """``open`` only when no target's breaker lets a request through."""
        states = [t.breaker.state for t in self.targets]
        if all(s in ("open", "forced_open") for s in states):
            return "open"
        if any(s == "half_open" for s in states):
            return "half_open"
        if any(s in ("open", "forced_open") for s in states):
            return "partially_open"
        return "closed"

    def as_dict(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "endpoint_id": spec.name,
            "name": spec.name,
            "url": spec.url,
            "urls": list(spec.urls),
            "version": spec.version,
            "methods": list(spec.methods),
            "auth_type": spec.auth_type,
            "require_auth": spec.require_auth,
            "disabled": self.admin_disabled,
            "timeout": spec.timeout,
            "retries": spec.retries,
            "health_check_path": spec.health_check_path,
            "ttl": spec.ttl,
            "status": self.status(),
            "circuit_breaker_state": self.breaker_state(),
            "registration_time": self.registration_time,
            "source": self.source,
            "targets": [
                {"url": t.url, "health": t.health, "admin_state": t.admin_state,
                 "circuit_breaker_state": t.breaker.state, "in_flight": t.in_flight}
                for t in self.targets
            ],
        }


@dataclass(frozen=True, slots=True)
class RoutingTable:
    routes: Mapping[str, Route]
    versioned: Mapping[tuple[str, str], Route]
    revision: int

    @classmethod
    def build(cls, routes: Sequence[Route], revision: int) -> RoutingTable:
        by_name = {r.name: r for r in routes}
        versioned = {(r.spec.version, r.name): r for r in routes if r.spec.version}
        return cls(by_name, versioned, revision)

    def resolve(self, raw_rest: str) -> tuple[Route, list[str]] | None:
        """``raw_rest`` is the raw path after ``/orchestrator/``: find the route and the
        raw segments left for the upstream."""
        parts = raw_rest.split("/")
        name = parts[0]
        if "%" in name:
            name = unquote(name)
        route = self.routes.get(name)
        if route is not None:
            return route, parts[1:]
        if len(parts) > 1:
            route = self.versioned.get((name, unquote(parts[1])))
            if route is not None:
                return route, parts[2:]
        return None


def auth_mode(spec: EndpointSpec) -> str:
    """``none``, ``presence`` (``require_auth`` alone), ``jwt``, ``api_key`` or
    ``jwt+api_key`` (``anonymous`` for an ``auth`` block with neither)."""
    auth = spec.auth
    if auth is None:
        return "presence" if spec.require_auth else "none"
    parts = [p for p, on in (("jwt", auth.jwt), ("api_key", auth.api_key)) if on is not None]
    return "+".join(parts) or "anonymous"


def map_path(base_path: str, segments: Sequence[str]) -> str:
    """Join the raw ``segments`` under ``base_path``; never climb above it.

    ``.`` segments (plain or percent-encoded) are dropped; a segment that decodes to ``..``,
    or hides one behind an encoded slash or backslash or a ``;`` parameter, raises
    ``PathError``.
    """
    kept: list[str] = []
    for seg in segments:
        if "%" in seg or "." in seg or "\\" in seg:
            decoded = unquote(seg)
            if decoded == ".":
                continue
            # ``..;x`` is ``..`` to servlet containers (path parameters are dropped).
            if any(p.split(";", 1)[0] == ".." for p in _SEP_RE.split(decoded)):
                raise PathError(f"path segment {seg!r} climbs above the endpoint's base path")
        kept.append(seg)
    if not segments:
        return base_path or "/"
    return f"{base_path}/{'/'.join(kept)}"
