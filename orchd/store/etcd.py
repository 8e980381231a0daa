"""The etcd store: several orchd instances share API registrations through etcd (v3 API).

Keys under the configured prefix (default ``/orchd/``)::

    {prefix}endpoints/{name}   {"config": {...endpoint...}, "registration_time": 1700000000.0}
    {prefix}admin/{name}       {"disabled": null, "targets": {"http://10.0.0.5:8080": "draining"}}
    {prefix}consumers/{name}   {"created": 1700000000.0}
    {prefix}consumer-keys/{name}/{key_id}   {"prefix": "ok_AbCdEfGh", "hash": "<sha256>", ...}
    {prefix}instances/{id}     {"host": "gw-1", "pid": 4242, "started": 1700000000.0}

Consumers and keys are read with the registry and followed by the same watch, straight
into ``consumers`` (the directory of keys by hash): they are not registry changes, so they
do not reach the change consumer. A key is refused on an instance as soon as its watch
sees the deletion.

Every instance keeps one ``instances/`` key of its own, attached to a lease of
``INSTANCE_TTL`` seconds that it renews every third of that, from ``watch`` until ``close``
(which revokes the lease, so the others see it leave at once; an instance that dies is gone
when its lease runs out). The same watch follows the others' keys into ``instances``, the
count of live instances that ``rate_limit.scope: cluster`` divides its rate by.

A registration with a ``ttl`` is attached to an etcd lease of that many seconds (its admin
key too); the heartbeat renews the lease; when heartbeats stop, etcd deletes the keys and
every instance sees the deletion through its watch.

Client: etcd's own v3 JSON gateway (``/v3/kv/range``, ``/v3/kv/txn``, ``/v3/watch``,
``/v3/lease/grant``, ``/v3/lease/keepalive``), which every etcd 3.4+ member serves on its
client port, spoken over aiohttp, which orchd already uses. The maintained asyncio client on
PyPI, ``aetcd``, speaks gRPC: it brings ``grpcio`` and ``protobuf`` (large compiled packages
whose versions other software pins) and connects to one ``host:port``, while orchd must fail
over between the members of a cluster; the older ``aioetcd3``/``aio-etcd`` are unmaintained
(and the latter speaks the v2 API, which etcd 3.4 no longer serves by default).

Behaviour:

* ``load`` reads every key with one linearizable range and remembers its revision; ``watch``
  follows the prefix from the revision after it, so nothing written in between is missed.
* Requests go to the member that answered last and fail over to the next ones in turn; a
  watch reconnects with exponential backoff (``backoff`` seconds, doubled up to a cap) and
  resumes from the revision after the last event it saw. If etcd compacted that revision
  away, the store reads everything again, reports the differences and resumes from there.
* When no member answers, writes raise ``StoreError`` (answered 503 by the change consumer,
  nothing applied), ``watch`` yields a ``status`` event with the error and the instance
  keeps routing with what it knew; a ``status`` event with no error follows on recovery.
* A new registration is written only if the name is free in etcd (a transaction comparing
  the key's create revision with 0), so two instances cannot both register one name: the
  second gets 409.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from orchd.errors import ProblemError, StoreError
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

__all__ = ("INSTANCE_TTL", "EtcdStore", "Instances")

ENDPOINTS = "endpoints/"
ADMIN = "admin/"
CONSUMERS = "consumers/"
CONSUMER_KEYS = "consumer-keys/"
INSTANCES = "instances/"
INSTANCE_TTL = 4  # seconds an instance's key outlives its last renewal
# gRPC codes that mean "try another member": UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED,
# RESOURCE_EXHAUSTED (and UNKNOWN, which etcd 3.4 uses for "leader changed").
_RETRY_CODES = frozenset({14, 4, 10, 8, 2})
# Forwarded to etcd as gRPC metadata: a member that has lost its leader cancels the watch
# instead of leaving it silent.
_WATCH_HEADERS = {"Grpc-Metadata-hasleader": "true"}
FORGET_AFTER = 60.0  # seconds
FORGET_AFTER_COUNT = 1024  # deleted keys remembered before the old ones are forgotten


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(data: str) -> str:
    return base64.b64decode(data).decode()


def _prefix_end(prefix: str) -> str:
    """The end of etcd's range for keys starting with ``prefix`` (last byte plus one)."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return "\0"
    raw[-1] += 1
    return raw.decode("latin-1")


def _ttl(record: Record) -> int | None:
    ttl = record.config.get("ttl")
    if isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0:
        return max(1, math.ceil(ttl))
    return None


@dataclass(frozen=True, slots=True)
class _Known:
    """What this instance knows of one key: its value, revision and lease."""

    value: bytes
    revision: int
    lease: int


class Instances:
    """The live orchd instances sharing this etcd, as this one knows them: its own, and the
    others whose ``instances/`` keys its watch has seen and not seen deleted. ``count``
    never falls below one; while etcd is unreachable it keeps the last known figure."""

    __slots__ = ("_others", "count", "own")

    def __init__(self, own: str) -> None:
        self.own = own
        self._others: set[str] = set()
        self.count = 1

    def replace(self, ids: set[str]) -> None:
        self._others = ids - {self.own}
        self._recount()

    def joined(self, instance: str) -> None:
        if instance != self.own:
            self._others.add(instance)
            self._recount()

    def left(self, instance: str) -> None:
        self._others.discard(instance)
        self._recount()

    def _recount(self) -> None:
        count = 1 + len(self._others)
        if count != self.count:
            logger.info("%d orchd instance%s share the etcd store", count,
                        "" if count == 1 else "s")
        self.count = count


class EtcdStore:
    name = "etcd"
    shared = True

    def __init__(self, endpoints: Sequence[str], prefix: str = "/orchd/", *,
                 request_timeout: float = 2.0, probe_interval: float = 1.0,
                 backoff: tuple[float, float] = (0.05, 2.0)) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self.prefix = prefix
        self.request_timeout = request_timeout
        self.probe_interval = probe_interval
        self.backoff = backoff
        self._current = 0
        self._session: aiohttp.ClientSession | None = None
        self._revision = 0  # the store revision the watch has reached
        self._known: dict[str, _Known] = {}  # full key -> what we know of it
        self._latest: dict[str, int] = {}  # full key -> newest revision written or seen
        self._deleted: dict[str, float] = {}  # full key -> when it was deleted (monotonic)
        self._events: asyncio.Queue[StoreEvent] = asyncio.Queue()
        self._error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._created = False  # the current watch stream was accepted
        self.consumers = ConsumerDirectory()
        self.instances = Instances(secrets.token_hex(8))
        self._instance_lease = 0

    # -- keys

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}{name}"

    def _split(self, key: str) -> tuple[str, str] | None:
        rest = key[len(self.prefix):] if key.startswith(self.prefix) else None
        if rest is None:
            return None
        for kind, part in (("endpoint", ENDPOINTS), ("admin", ADMIN)):
            if rest.startswith(part) and len(rest) > len(part):
                return kind, rest[len(part):]
        return None

    # -- transport

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                trust_env=False, raise_for_status=False)
        return self._session

    async def _call(self, path: str, body: Mapping[str, Any], what: str) -> dict[str, Any]:
        """POST to the member that answered last, then to the others in turn."""
        session = self._http()
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        failures: list[str] = []
        count = len(self.endpoints)
        for step in range(count):
            index = (self._current + step) % count
            base = self.endpoints[index]
            try:
                async with session.post(base + path, json=body, timeout=timeout) as resp:
                    data = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                failures.append(f"{base}: {_describe(exc)}")
                continue
            if not isinstance(data, dict):
                failures.append(f"{base}: unexpected answer {data!r:.80}")
                continue
            if resp.status == 200:
                self._current = index
                self._set_error(None)
                return data
            message = str(data.get("message") or data.get("error") or resp.reason)
            if data.get("code") in _RETRY_CODES or resp.status >= 500:
                failures.append(f"{base}: {message}")
                continue
            raise StoreError(f"etcd at {base} refused to {what}: {message}")
        reason = "; ".join(failures)
        self._set_error(f"no etcd member answered ({reason})")
        if any(f.endswith("timed out") for f in failures):
            reason += ("; a change etcd receives late may still be applied, and then shows "
                       "on every instance")
        raise StoreError(f"etcd is unreachable, cannot {what} ({reason})")

    def _set_error(self, error: str | None) -> None:
        if (error is None) == (self._error is None):
            self._error = error  # no change of state: no event
            return
        self._error = error
        if error is None:
            logger.warning("etcd store reachable again")
        else:
            logger.error("etcd store degraded: %s", error)
        self._events.put_nowait(StoreEvent("", kind="status", error=error))

    # -- load

    async def load(self) -> StoreState:
        try:
            state, _ = await self._read_all()
        except StoreError:
            await self.close()
            raise
        return state

    async def _read_all(self) -> tuple[StoreState, list[StoreEvent]]:
        """Read every key; replace what we knew and answer what changed since."""
        data = await self._call("/v3/kv/range", {
            "key": _b64(self.prefix), "range_end": _b64(_prefix_end(self.prefix)),
        }, "read the registry")
        revision = int(data["header"]["revision"])
        endpoints: dict[str, Record] = {}
        admin: dict[str, AdminRecord] = {}
        known: dict[str, _Known] = {}
        changes: list[StoreEvent] = []
        consumers = ConsumerDirectory()
        instances: set[str] = set()
        for kv in data.get("kvs", ()):
            key = _unb64(kv["key"])
            instance = self._instance_of(key)
            if instance is not None:
                instances.add(instance)
                continue
            value = base64.b64decode(kv.get("value", ""))
            mod = int(kv.get("mod_revision", 0))
            if self._consumer_change(consumers, key, value):
                self._note(key, mod, deleted=False)
                continue
            entry = _Known(value, mod, int(kv.get("lease", 0)))
            event = self._decode(key, entry)
            if event is None:
                continue
            known[key] = entry
            if event.kind == "endpoint" and event.record is not None:
                endpoints[event.name] = event.record
            elif event.admin is not None:
                admin[event.name] = event.admin
            old = self._known.get(key)
            if old is None or old.value != value:
                changes.append(event)
        for key in self._known.keys() - known.keys():
            split = self._split(key)
            if split is not None:
                changes.append(StoreEvent(split[1], kind=split[0], revision=revision))
        self._known = known
        self.consumers.replace(consumers)
        self.instances.replace(instances)
        for key in (self._latest.keys() - self._consumer_keys()) | known.keys():
            self._note(key, known[key].revision if key in known else revision,
                       deleted=key not in known)
        self._revision = revision
        return StoreState(endpoints, admin), changes

    def _decode(self, key: str, entry: _Known) -> StoreEvent | None:
        split = self._split(key)
        if split is None:
            return None
        kind, name = split
        try:
            doc = json.loads(entry.value)
            if kind == "endpoint":
                return StoreEvent(name, record=Record.from_json(doc), revision=entry.revision)
            return StoreEvent(name, admin=AdminRecord.from_json(doc), kind="admin",
                              revision=entry.revision)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.error("etcd key %s is malformed, ignored: %r", key, exc)
            return None

    # -- writes

    async def put(self, name: str, record: Record) -> None:
        """Write a registration: a new one only if the name is free in etcd (another
        instance may have taken it a moment ago), a replacement (same registration time
        as the stored one) over what is there."""
        key = self._key(ENDPOINTS, name)
        value = json.dumps(record.as_json(), sort_keys=True).encode()
        old = self._known.get(key)
        stored = _record_of(old) if old is not None else None
        replacing = stored is not None and stored.registration_time == record.registration_time
        ttl = _ttl(record)
        lease = 0
        if ttl is not None:
            if old is not None and old.lease and stored is not None and _ttl(stored) == ttl:
                with contextlib.suppress(LookupError):  # same ttl: keep and renew the lease
                    await self._keepalive(old.lease)
                    lease = old.lease
            if not lease:
                granted = await self._call("/v3/lease/grant", {"TTL": ttl},
                                           f"grant a {ttl}s lease for {name}")
                lease = int(granted["ID"])
        ops = [_put_op(key, value, lease)]
        admin_key = self._key(ADMIN, name)
        admin = self._known.get(admin_key)
        if admin is not None and admin.lease != lease:
            ops.append(_put_op(admin_key, admin.value, lease))
        compare = [] if replacing else [{
            "key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0",
        }]
        result = await self._call("/v3/kv/txn", {"compare": compare, "success": ops},
                                  f"store endpoint {name}")
        if not result.get("succeeded"):
            raise ProblemError(409, "Endpoint exists",
                               f"endpoint {name!r} was just registered through another "
                               "orchd instance sharing this etcd")
        revision = int(result["header"]["revision"])
        self._wrote(key, _Known(value, revision, lease))
        if len(ops) > 1 and admin is not None:
            self._wrote(admin_key, _Known(admin.value, revision, lease))

    async def delete(self, name: str) -> None:
        keys = (self._key(ENDPOINTS, name), self._key(ADMIN, name))
        result = await self._call("/v3/kv/txn", {
            "success": [{"request_delete_range": {"key": _b64(k)}} for k in keys],
        }, f"delete endpoint {name}")
        revision = int(result["header"]["revision"])
        for key in keys:
            self._wrote(key, None, revision)

    async def put_admin(self, name: str, admin: AdminRecord) -> None:
        key = self._key(ADMIN, name)
        if admin.is_empty():
            result = await self._call("/v3/kv/deleterange", {"key": _b64(key)},
                                      f"clear the state of {name}")
            self._wrote(key, None, int(result["header"]["revision"]))
            return
        endpoint = self._known.get(self._key(ENDPOINTS, name))
        lease = endpoint.lease if endpoint is not None else 0
        value = json.dumps(admin.as_json(), sort_keys=True).encode()
        result = await self._call("/v3/kv/put", {"key": _b64(key), "value": _b64v(value),
                                                 "lease": str(lease)},
                                  f"store the state of {name}")
        revision = int(result["header"]["revision"])
        self._wrote(key, _Known(value, revision, lease))

    async def renew(self, name: str) -> float:
        key = self._key(ENDPOINTS, name)
        known = self._known.get(key)
        if known is None or not known.lease:
            data = await self._call("/v3/kv/range", {"key": _b64(key)},
                                    f"read endpoint {name}")
            kvs = data.get("kvs") or ()
            if not kvs or not int(kvs[0].get("lease", 0)):
                raise LookupError(name)
            lease = int(kvs[0]["lease"])
        else:
            lease = known.lease
        return float(await self._keepalive(lease))

    async def _keepalive(self, lease: int, what: str = "renew a registration's lease") -> int:
        data = await self._call("/v3/lease/keepalive", {"ID": str(lease)}, what)
        ttl = int((data.get("result") or {}).get("TTL", 0))
        if ttl <= 0:
            raise LookupError(lease)
        return ttl

    def _wrote(self, key: str, entry: _Known | None, revision: int = 0) -> None:
        if entry is None:
            self._known.pop(key, None)
        else:
            self._known[key] = entry
            revision = entry.revision
        self._note(key, revision, deleted=entry is None)

    def _note(self, key: str, revision: int, deleted: bool) -> None:
        """Remember the newest revision of a key. A deleted key is forgotten a minute
        later (when many are), long after any event older than its deletion was applied."""
        self._latest[key] = max(self._latest.get(key, 0), revision)
        if not deleted:
            self._deleted.pop(key, None)
            return
        now = time.monotonic()
        self._deleted[key] = now
        if len(self._deleted) > FORGET_AFTER_COUNT:
            for old in [k for k, at in self._deleted.items() if at < now - FORGET_AFTER]:
                del self._deleted[old]
                self._latest.pop(old, None)

    def is_stale(self, event: StoreEvent) -> bool:
        if event.kind not in ("endpoint", "admin"):
            return False
        key = self._key(ENDPOINTS if event.kind == "endpoint" else ADMIN, event.name)
        return event.revision < self._latest.get(key, 0)

    # -- watch

    async def watch(self) -> AsyncIterator[StoreEvent]:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._follow(), name="orchd-etcd-watch"),
                           asyncio.create_task(self._probe(), name="orchd-etcd-probe"),
                           asyncio.create_task(self._announce(), name="orchd-etcd-instance")]
        while True:
            yield await self._events.get()

    async def _follow(self) -> None:
        """Keep one watch stream open, from the member that answered last, then the next
        ones in turn, waiting longer after each failed attempt."""
        delay = self.backoff[0]
        attempt = 0
        while True:
            base = self.endpoints[(self._current + attempt) % len(self.endpoints)]
            try:
                if await self._watch_from(base):
                    delay = self.backoff[0]
                    attempt = 0
                    continue
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, StoreError) as exc:
                reason = str(exc) if isinstance(exc, StoreError) else _describe(exc)
                if self._created:  # it had worked: say so once, retry from the shortest wait
                    logger.warning("etcd watch on %s lost (%s): reconnecting", base, reason)
                    self._created = False
                    delay = self.backoff[0]
                else:
                    logger.debug("etcd watch on %s: %s", base, reason)
                attempt += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    async def _watch_from(self, base: str) -> bool:
        """Follow one watch stream; True when it must restart at once (after a resync)."""
        body = {"create_request": {
            "key": _b64(self.prefix), "range_end": _b64(_prefix_end(self.prefix)),
            "start_revision": str(self._revision + 1), "progress_notify": True,
        }}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.request_timeout)
        async with self._http().post(f"{base}/v3/watch", json=body, headers=_WATCH_HEADERS,
                                     timeout=timeout) as resp:
            if resp.status != 200:
                raise StoreError(f"{base} refused the watch: HTTP {resp.status}")
            async for line in _lines(resp.content):
                message = json.loads(line)
                if "error" in message:
                    error = message["error"]
                    raise StoreError(f"{base}: {error.get('message', error)}")
                result = message.get("result") or {}
                if int(result.get("compact_revision", 0)):
                    logger.warning("etcd compacted revision %d away: reading the registry "
                                   "again", self._revision + 1)
                    _, changes = await self._read_all()
                    for event in changes:
                        self._events.put_nowait(event)
                    return True
                if result.get("canceled"):
                    raise StoreError(f"{base} cancelled the watch: "
                                     f"{result.get('cancel_reason') or 'no leader'}")
                if result.get("created"):
                    self._created = True
                    self._current = self.endpoints.index(base)
                    self._set_error(None)
                    logger.info("following etcd %s from revision %d", base, self._revision + 1)
                for raw in result.get("events", ()):
                    self._apply(raw)
        raise StoreError(f"{base} closed the watch stream")

    def _apply(self, raw: Mapping[str, Any]) -> None:
        kv = raw["kv"]
        key = _unb64(kv["key"])
        revision = int(kv.get("mod_revision", 0))
        self._revision = max(self._revision, revision)
        if revision <= self._latest.get(key, 0):
            return  # this instance wrote it (or has written the key since), or read it
        deleted = raw.get("type") == "DELETE"
        instance = self._instance_of(key)
        if instance is not None:
            if deleted:
                self.instances.left(instance)
            else:
                self.instances.joined(instance)
            return
        value = None if deleted else base64.b64decode(kv.get("value", ""))
        if self._consumer_change(self.consumers, key, value):
            self._note(key, revision, deleted)
            return
        split = self._split(key)
        if split is None:
            return
        self._note(key, revision, deleted)
        if deleted:
            self._known.pop(key, None)
            self._events.put_nowait(StoreEvent(split[1], kind=split[0], revision=revision))
            return
        entry = _Known(value or b"", revision, int(kv.get("lease", 0)))
        event = self._decode(key, entry)
        if event is not None:
            self._known[key] = entry
            self._events.put_nowait(event)

    # -- instances

    def _instance_of(self, key: str) -> str | None:
        """The instance id of an ``instances/`` key; None for any other key."""
        base = self.prefix + INSTANCES
        if key.startswith(base) and len(key) > len(base):
            return key[len(base):]
        return None

    async def _announce(self) -> None:
        """Keep this instance's key alive: a lease of ``INSTANCE_TTL`` seconds renewed
        every third of it, granted again (and the key written again) when it ran out while
        etcd was out of reach. A failure is the store's status, as any other call's."""
        key = self._key(INSTANCES, self.instances.own)
        value = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                            "started": time.time()}).encode()
        while True:
            try:
                if self._instance_lease:
                    await self._keepalive(self._instance_lease, "renew this instance's lease")
                else:
                    granted = await self._call("/v3/lease/grant", {"TTL": INSTANCE_TTL},
                                               "grant this instance's lease")
                    lease = int(granted["ID"])
                    await self._call("/v3/kv/put", {"key": _b64(key), "value": _b64v(value),
                                                    "lease": str(lease)},
                                     "announce this instance")
                    self._instance_lease = lease
            except LookupError:  # the lease ran out: etcd deleted the key, write it again
                self._instance_lease = 0
                continue
            except StoreError:
                pass
            await asyncio.sleep(INSTANCE_TTL / 3)

    async def _leave(self) -> None:
        """Revoke this instance's lease: its key goes, and the others count one less."""
        lease, self._instance_lease = self._instance_lease, 0
        if lease:
            with contextlib.suppress(StoreError):
                await self._call("/v3/lease/revoke", {"ID": str(lease)},
                                 "withdraw this instance")

    # -- consumers

    def _consumer_change(self, into: ConsumerDirectory, key: str, value: bytes | None) -> bool:
        """Apply a consumer or key (``value`` None: deleted) to ``into``; False for any
        other key. A malformed entry is skipped with an error, as a registration is."""
        rest = key[len(self.prefix):] if key.startswith(self.prefix) else ""
        try:
            if rest.startswith(CONSUMERS) and len(rest) > len(CONSUMERS):
                name = rest[len(CONSUMERS):]
                if value is None:
                    into.drop_consumer(name)
                else:
                    into.put_consumer(ConsumerRecord.from_json(name, json.loads(value)))
                return True
            if rest.startswith(CONSUMER_KEYS):
                name, _, key_id = rest[len(CONSUMER_KEYS):].partition("/")
                if name and key_id:
                    if value is None:
                        into.drop_key(name, key_id)
                    else:
                        into.put_key(name, KeyRecord.from_json(key_id, json.loads(value)))
                return True
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.error("etcd key %s is malformed, ignored: %r", key, exc)
            return True
        return False

    def _consumer_keys(self) -> set[str]:
        base = (self.prefix + CONSUMERS, self.prefix + CONSUMER_KEYS)
        return {k for k in self._latest if k.startswith(base)}

    async def add_consumer(self, record: ConsumerRecord) -> None:
        key = self._key(CONSUMERS, record.name)
        value = json.dumps(record.as_json()).encode()
        result = await self._call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                         "create_revision": "0"}],
            "success": [_put_op(key, value, 0)],
        }, f"store consumer {record.name}")
        if not result.get("succeeded"):
            raise consumer_exists(record.name)
        self._note(key, int(result["header"]["revision"]), deleted=False)
        self.consumers.put_consumer(record)

    async def remove_consumer(self, name: str) -> None:
        key = self._key(CONSUMERS, name)
        keys = f"{self.prefix}{CONSUMER_KEYS}{name}/"
        result = await self._call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "CREATE", "result": "GREATER",
                         "create_revision": "0"}],
            "success": [{"request_delete_range": {"key": _b64(key)}},
                        {"request_delete_range": {"key": _b64(keys),
                                                  "range_end": _b64(_prefix_end(keys))}}],
        }, f"remove consumer {name}")
        if not result.get("succeeded"):
            self.consumers.drop_consumer(name)
            raise consumer_not_found(name)
        revision = int(result["header"]["revision"])
        for key_id in [k.key_id for k in self.consumers.keys_of(name)]:
            self._note(f"{keys}{key_id}", revision, deleted=True)
        self._note(key, revision, deleted=True)
        self.consumers.drop_consumer(name)

    async def add_key(self, name: str, key: KeyRecord) -> None:
        owner = self._key(CONSUMERS, name)
        path = f"{self.prefix}{CONSUMER_KEYS}{name}/{key.key_id}"
        result = await self._call("/v3/kv/txn", {
            "compare": [{"key": _b64(owner), "target": "CREATE", "result": "GREATER",
                         "create_revision": "0"}],
            "success": [_put_op(path, json.dumps(key.as_json()).encode(), 0)],
        }, f"store a key of consumer {name}")
        if not result.get("succeeded"):
            self.consumers.drop_consumer(name)
            raise consumer_not_found(name)
        self._note(path, int(result["header"]["revision"]), deleted=False)
        self.consumers.put_key(name, key)

    async def remove_key(self, name: str, key_id: str) -> None:
        path = f"{self.prefix}{CONSUMER_KEYS}{name}/{key_id}"
        result = await self._call("/v3/kv/deleterange", {"key": _b64(path)},
                                  f"revoke a key of consumer {name}")
        self.consumers.drop_key(name, key_id)
        if not int(result.get("deleted", 0)):
            raise key_not_found(name, key_id)
        self._note(path, int(result["header"]["revision"]), deleted=True)

    async def _probe(self) -> None:
        """A linearizable read now and then: tells "no member answers" (or "no quorum")
        while nothing is written."""
        while True:
            await asyncio.sleep(self.probe_interval)
            with contextlib.suppress(StoreError):
                await self._call("/v3/kv/range", {"key": _b64(self.prefix), "limit": 1,
                                                  "keys_only": True}, "check etcd")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._leave()
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The stream's newline-separated messages, however large (one may carry many events)."""
    buffer = b""
    async for chunk in stream.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line


def _b64v(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _put_op(key: str, value: bytes, lease: int) -> dict[str, Any]:
    return {"request_put": {"key": _b64(key), "value": _b64v(value), "lease": str(lease)}}


def _record_of(entry: _Known) -> Record | None:
    try:
        return Record.from_json(json.loads(entry.value))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        code = exc.os_error.errno
        return f"cannot connect ({os.strerror(code) if code else exc.os_error})"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return "the connection was lost"
    return str(exc) or type(exc).__name__
