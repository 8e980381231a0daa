"""Registry stores: where API registrations and operators' administrative state live.

The interface is small so that the embedded file store and the etcd store are
interchangeable: ``load`` at start, ``put``/``delete`` for endpoints, ``put_admin`` for
administrative state, ``renew`` for the heartbeat of a registration with a ``ttl``, and
``watch`` for changes made elsewhere (other instances, expired registrations) and for the
store's own reachability.

Consumers and their API keys live in the store too (``orchd.store.consumers``): ``load``
fills ``consumers``, the directory requests' keys are looked up in, and the store keeps it
current itself (its own writes, and for etcd other instances' through the watch); the
consumer methods write through and then update it. They raise ``ProblemError`` 404/409.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from orchd.store.consumers import ConsumerDirectory, ConsumerRecord, KeyRecord

__all__ = ("AdminRecord", "Record", "Store", "StoreEvent", "StoreState")


@dataclass(frozen=True, slots=True)
class Record:
    """One API registration: the endpoint document and when it was first registered."""

    config: Mapping[str, Any]
    registration_time: float

    def as_json(self) -> dict[str, Any]:
        return {"config": dict(self.config), "registration_time": self.registration_time}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        return cls(dict(data["config"]), float(data["registration_time"]))


@dataclass(frozen=True, slots=True)
class AdminRecord:
    """What an operator set: the endpoint disabled or not (None: as configured), and
    per-target states other than ``active``."""

    disabled: bool | None = None
    targets: Mapping[str, str] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return self.disabled is None and not self.targets

    def as_json(self) -> dict[str, Any]:
        return {"disabled": self.disabled, "targets": dict(self.targets)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AdminRecord:
        return cls(data.get("disabled"), dict(data.get("targets") or {}))


@dataclass(frozen=True, slots=True)
class StoreState:
    endpoints: Mapping[str, Record]
    admin: Mapping[str, AdminRecord]


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """A change made elsewhere (another instance, an expiry): ``record`` None means deleted.

    ``kind`` is ``endpoint``, ``admin`` or ``status``; a ``status`` event says the store
    became unreachable (``error`` set) or reachable again (``error`` None). ``revision``
    orders the event against this instance's own writes (see ``Store.is_stale``).
    """

    name: str
    record: Record | None = None
    admin: AdminRecord | None = None
    kind: str = "endpoint"
    revision: int = 0
    error: str | None = None


class Store(Protocol):
    name: str
    # Written by other instances too (etcd): an entry orchd cannot use is skipped with an
    # error, as the watch does, not a reason to refuse to start.
    shared: bool

    async def load(self) -> StoreState: ...

    async def put(self, name: str, record: Record) -> None: ...

    async def delete(self, name: str) -> None: ...

    async def put_admin(self, name: str, admin: AdminRecord) -> None: ...

    async def renew(self, name: str) -> float:
        """Extend a ``ttl`` registration's life; answer its ttl. LookupError: it expired."""
        ...

    def is_stale(self, event: StoreEvent) -> bool:
        """True when this instance wrote the event's key after the event happened."""
        ...

    def watch(self) -> AsyncIterator[StoreEvent]: ...

    consumers: ConsumerDirectory

    async def add_consumer(self, record: ConsumerRecord) -> None:
        """Store a new consumer (409 if the name is taken)."""
        ...

    async def remove_consumer(self, name: str) -> None:
        """Remove a consumer and its keys (404 if there is none)."""
        ...

    async def add_key(self, name: str, key: KeyRecord) -> None:
        """Store a key of an existing consumer (404 if there is none)."""
        ...

    async def remove_key(self, name: str, key_id: str) -> None:
        """Revoke a key (404 if the consumer has no such key)."""
        ...

    async def close(self) -> None: ...
