"""Consumers and their API keys as the stores keep them, and the in-memory directory.

``ConsumerDirectory`` is what a request's key is looked up in: by the key's hash, in one
dict. Each store (file, etcd) holds one, loads it with the registry and keeps it current:
the file store on its own writes, the etcd store on its writes and on every other
instance's, through its watch, so a revoked key is refused everywhere at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchd.auth.keys import hash_key
from orchd.errors import ProblemError

__all__ = ("ConsumerDirectory", "ConsumerRecord", "KeyRecord", "consumer_exists",
           "consumer_not_found", "key_not_found")


@dataclass(frozen=True, slots=True)
class ConsumerRecord:
    name: str
    created: float

    def as_json(self) -> dict[str, Any]:
        return {"created": self.created}

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> ConsumerRecord:
        return cls(name, float(data["created"]))


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key of a consumer: never the key itself, only its hash and first characters."""

    key_id: str
    prefix: str
    hash: str
    created: float

    def as_json(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "hash": self.hash, "created": self.created}

    def public(self) -> dict[str, Any]:
        """What an answer may show."""
        return {"key_id": self.key_id, "prefix": self.prefix, "created": self.created}

    @classmethod
    def from_json(cls, key_id: str, data: Mapping[str, Any]) -> KeyRecord:
        digest = str(data["hash"])
        if len(digest) != 64:
            raise ValueError("hash is not a SHA-256")
        return cls(key_id, str(data["prefix"]), digest, float(data["created"]))


class ConsumerDirectory:
    """Consumers, their keys, and an index of keys by hash."""

    def __init__(self) -> None:
        self._consumers: dict[str, ConsumerRecord] = {}
        self._keys: dict[str, dict[str, KeyRecord]] = {}
        self._by_hash: dict[str, tuple[str, str]] = {}
        self.revision = 0  # counts changes: a worker's copy is resent when it moves

    # -- reads

    def lookup(self, key: str) -> str | None:
        """The name of the consumer whose key ``key`` is, if any."""
        digest = hash_key(key)
        found = None if digest is None else self._by_hash.get(digest)
        if found is None or found[0] not in self._consumers:
            return None
        return found[0]

    def get(self, name: str) -> ConsumerRecord | None:
        return self._consumers.get(name)

    def names(self) -> list[str]:
        return sorted(self._consumers)

    def keys_of(self, name: str) -> list[KeyRecord]:
        return sorted(self._keys.get(name, {}).values(), key=lambda k: (k.created, k.key_id))

    def __len__(self) -> int:
        return len(self._consumers)

    # -- changes (the store's, after it has written them, or seen them written)

    def put_consumer(self, record: ConsumerRecord) -> None:
        self.revision += 1
        self._consumers[record.name] = record

    def drop_consumer(self, name: str) -> None:
        self.revision += 1
        self._consumers.pop(name, None)
        for key in self._keys.pop(name, {}).values():
            self._by_hash.pop(key.hash, None)

    def put_key(self, name: str, key: KeyRecord) -> None:
        self.revision += 1
        keys = self._keys.setdefault(name, {})
        old = keys.get(key.key_id)
        if old is not None:
            self._by_hash.pop(old.hash, None)
        keys[key.key_id] = key
        self._by_hash[key.hash] = (name, key.key_id)

    def drop_key(self, name: str, key_id: str) -> None:
        self.revision += 1
        key = self._keys.get(name, {}).pop(key_id, None)
        if key is not None:
            self._by_hash.pop(key.hash, None)

    def replace(self, other: ConsumerDirectory) -> None:
        self.revision += 1
        self._consumers, self._keys, self._by_hash = (
            other._consumers, other._keys, other._by_hash)

    def as_json(self) -> dict[str, Any]:
        """The file store's ``consumers`` document."""
        return {name: {**rec.as_json(),
                       "keys": {k.key_id: k.as_json() for k in self.keys_of(name)}}
                for name, rec in sorted(self._consumers.items())}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConsumerDirectory:
        out = cls()
        for name, doc in data.items():
            out.put_consumer(ConsumerRecord.from_json(name, doc))
            for key_id, key in (doc.get("keys") or {}).items():
                out.put_key(name, KeyRecord.from_json(key_id, key))
        return out


def consumer_not_found(name: str) -> ProblemError:
    return ProblemError(404, "Consumer not found", f"no consumer named {name!r}")


def consumer_exists(name: str) -> ProblemError:
    return ProblemError(409, "Consumer exists", f"a consumer named {name!r} exists")


def key_not_found(name: str, key_id: str) -> ProblemError:
    return ProblemError(404, "Key not found", f"consumer {name!r} has no key {key_id!r}")
