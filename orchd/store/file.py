"""The embedded store: one JSON file under ``state_dir``, written atomically.

Every write goes to a temporary file in the same directory, is fsync'd, renamed over the
store file and the directory is fsync'd: after ``put`` returns, the change survives a crash.
A store file that cannot be read or parsed stops the start; it is never overwritten.

Registrations with a ``ttl`` expire here too: each has a deadline, moved on by ``renew``
(the heartbeat) and kept in memory only. After a restart every such registration gets a
whole ``ttl`` from the start to send its next heartbeat, as etcd does for leases when a new
leader takes over. ``watch`` deletes what expired and reports it.

Consumers and their keys are kept in a file of their own beside it, ``consumers.json``,
written the same way: a registry write never rewrites them, nor the other way round.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from orchd.errors import StoreError
from orchd.log import registry_logger as logger
from orchd.store import AdminRecord, Record, StoreEvent, StoreState
from orchd.store.consumers import (
    ConsumerDirectory,
    ConsumerRecord,
    KeyRecord,
    consumer_exists,
    consumer_not_found,
    key_not_found,
)

__all__ = ("FileStore",)

FORMAT = 1
FILENAME = "registry.json"
CONSUMERS_FILENAME = "consumers.json"


class FileStore:
    name = "file"
    shared = False  # this instance's own file: an entry it cannot use stops the start

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / FILENAME
        self._endpoints: dict[str, Record] = {}
        self._admin: dict[str, AdminRecord] = {}
        self._lock_fd: int | None = None
        self._write_lock = asyncio.Lock()
        self._deadlines: dict[str, float] = {}  # name -> time.monotonic() of expiry
        self._revisions: dict[str, int] = {}  # name -> counter of the last write
        self._counter = itertools.count(1)
        self._wake = asyncio.Event()
        self.consumers = ConsumerDirectory()
        self.consumers_path = self.dir / CONSUMERS_FILENAME
        self._consumers_doc: dict[str, Any] = {}

    # -- start

    def open(self) -> None:
        """Create the directory, take the instance lock (one orchd per state_dir)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise StoreError(f"state directory {self.dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"state directory {self.dir} is in use by another orchd "
                "(set server.state_dir to a directory of its own)"
            ) from None
        self._lock_fd = fd

    async def load(self) -> StoreState:
        if self._lock_fd is None:
            self.open()
        data = await asyncio.to_thread(self._read)
        self._endpoints = {
            name: self._record(name, rec) for name, rec in data.get("endpoints", {}).items()
        }
        self._admin = {
            name: AdminRecord.from_json(rec) for name, rec in data.get("admin", {}).items()
        }
        doc = await asyncio.to_thread(self._read_consumers)
        try:
            self.consumers = ConsumerDirectory.from_json(doc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{self.consumers_path}: a consumer is malformed ({exc!r})") from None
        self._consumers_doc = self.consumers.as_json()
        now = time.monotonic()
        self._deadlines = {name: now + ttl for name, rec in self._endpoints.items()
                           if (ttl := _ttl(rec)) is not None}
        return StoreState(dict(self._endpoints), dict(self._admin))

    def _record(self, name: str, rec: Any) -> Record:
        try:
            return Record.from_json(rec)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self.path}: endpoints.{name} is malformed ({exc!r})") from None

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read the store file: {exc.strerror}") from None
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(
                f"{self.path}: the store file is not valid JSON ({exc}); it was left untouched: "
                "restore it from a backup or move it away to start with an empty registry"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StoreError(
                f"{self.path}: not an orchd registry store "
                f"(expected an object with format {FORMAT})"
            )
        for key in ("endpoints", "admin"):
            if not isinstance(data.get(key, {}), dict):
                raise StoreError(f"{self.path}: '{key}' must be an object")
        return data

    def _read_consumers(self) -> dict[str, Any]:
        path = self.consumers_path
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"{path}: cannot read the consumers file: {exc.strerror}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: the consumers file is not valid JSON ({exc}); it was "
                             "left untouched: restore it from a backup") from None
        if (not isinstance(data, dict) or data.get("format") != FORMAT
                or not isinstance(data.get("consumers", {}), dict)):
            raise StoreError(f"{path}: not an orchd consumers file "
                             f"(expected an object with format {FORMAT} and 'consumers')")
        consumers: dict[str, Any] = data.get("consumers", {})
        return consumers

    # -- consumers

    async def add_consumer(self, record: ConsumerRecord) -> None:
        def update(doc: dict[str, Any]) -> None:
            if record.name in doc:
                raise consumer_exists(record.name)
            doc[record.name] = {**record.as_json(), "keys": {}}

        await self._commit_consumers(update)
        self.consumers.put_consumer(record)

    async def remove_consumer(self, name: str) -> None:
        def update(doc: dict[str, Any]) -> None:
            if doc.pop(name, None) is None:
                raise consumer_not_found(name)

        await self._commit_consumers(update)
        self.consumers.drop_consumer(name)

    async def add_key(self, name: str, key: KeyRecord) -> None:
        def update(doc: dict[str, Any]) -> None:
            if name not in doc:
                raise consumer_not_found(name)
            doc[name] = {**doc[name], "keys": {**doc[name]["keys"], key.key_id: key.as_json()}}

        await self._commit_consumers(update)
        self.consumers.put_key(name, key)

    async def remove_key(self, name: str, key_id: str) -> None:
        def update(doc: dict[str, Any]) -> None:
            keys = dict(doc[name]["keys"]) if name in doc else {}
            if keys.pop(key_id, None) is None:
                raise key_not_found(name, key_id)
            doc[name] = {**doc[name], "keys": keys}

        await self._commit_consumers(update)
        self.consumers.drop_key(name, key_id)

    async def _commit_consumers(self, update: Callable[[dict[str, Any]], None]) -> None:
        """Apply ``update`` to a copy of the consumers document and write it whole; the
        directory changes only once the file is on disk."""
        async with self._write_lock:
            doc = dict(self._consumers_doc)
            update(doc)
            payload = json.dumps({"format": FORMAT, "consumers": doc}, indent=1,
                                 sort_keys=True).encode() + b"\n"
            await asyncio.to_thread(self._write_file, self.consumers_path, payload)
            self._consumers_doc = doc

    # -- writes

    async def put(self, name: str, record: Record) -> None:
        def update(endpoints: dict[str, Record], admin: dict[str, AdminRecord]) -> None:
            endpoints[name] = record

        await self._commit(update)
        self._revisions[name] = next(self._counter)
        ttl = _ttl(record)
        if ttl is None:
            self._deadlines.pop(name, None)
        else:
            self._deadlines[name] = time.monotonic() + ttl
        self._wake.set()

    async def delete(self, name: str) -> None:
        def update(endpoints: dict[str, Record], admin: dict[str, AdminRecord]) -> None:
            endpoints.pop(name, None)
            admin.pop(name, None)

        await self._commit(update)
        self._revisions[name] = next(self._counter)
        self._deadlines.pop(name, None)

    async def put_admin(self, name: str, admin: AdminRecord) -> None:
        def update(endpoints: dict[str, Record], merged: dict[str, AdminRecord]) -> None:
            merged.pop(name, None)
            if not admin.is_empty():
                merged[name] = admin

        await self._commit(update)

    async def renew(self, name: str) -> float:
        record = self._endpoints.get(name)
        ttl = None if record is None else _ttl(record)
        if ttl is None or name not in self._deadlines:
            raise LookupError(name)
        self._deadlines[name] = time.monotonic() + ttl
        return ttl

    def is_stale(self, event: StoreEvent) -> bool:
        return event.revision < self._revisions.get(event.name, 0)

    async def _commit(
        self, update: Callable[[dict[str, Record], dict[str, AdminRecord]], None]
    ) -> None:
        """Apply ``update`` to copies of the current state and write them; the copies are
        made under the lock, so concurrent writers (the API, expiry) never lose a change."""
        async with self._write_lock:
            endpoints, admin = dict(self._endpoints), dict(self._admin)
            update(endpoints, admin)
            doc = {
                "format": FORMAT,
                "endpoints": {k: v.as_json() for k, v in sorted(endpoints.items())},
                "admin": {k: v.as_json() for k, v in sorted(admin.items())},
            }
            payload = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
            await asyncio.to_thread(self._write, payload)
            self._endpoints, self._admin = endpoints, admin

    def _write(self, payload: bytes) -> None:
        self._write_file(self.path, payload)

    def _write_file(self, path: Path, payload: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(f"{path}: cannot write the store file: {exc.strerror}") from None

    async def watch(self) -> AsyncIterator[StoreEvent]:
        """One instance owns the file: nothing changes behind its back but expiries."""
        while True:
            now = time.monotonic()
            for name in [n for n, at in self._deadlines.items() if at <= now]:
                try:
                    await self.delete(name)
                except StoreError as exc:
                    logger.error("cannot remove expired registration %s: %s", name, exc)
                    self._deadlines[name] = time.monotonic() + 1.0
                    continue
                logger.info("registration %s expired (no heartbeat within its ttl)", name)
                yield StoreEvent(name, None, revision=self._revisions[name])
            self._wake.clear()
            nearest = min(self._deadlines.values(), default=None)
            timeout = None if nearest is None else max(0.0, nearest - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _ttl(record: Record) -> float | None:
    ttl = record.config.get("ttl") if isinstance(record.config, Mapping) else None
    if isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0:
        return float(ttl)
    return None
