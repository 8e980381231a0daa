"""The change consumer: the one way in for every change. The file watcher
(``orchd.sources``), SIGHUP (``orchd.daemon``), the REST API and the control socket
(``orchd.api.registry``, ``orchd.api.config``) and the shared store's watch all hand a change
(``Register``, ``Replace``, ``Remove``, ``SetStatus``, ``SetTargetState``, ``Heartbeat``,
``Reload``, ``SyncFromStore``) to ``ChangeConsumer.submit``; one task applies them in order.

Each change is validated against the whole current state first, then written to the store
(for API changes), then applied to the registry (one snapshot swap), then answered. A reload
reads the file once (``read_config``: its digest and its validated config), keeps the last
good configuration when it is invalid, and answers the diff.

What it does not do: watch the file (``orchd.sources``), or build the routing table
(``orchd.registry``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from orchd.errors import ConfigError, FieldError, ProblemError, StoreError, endpoint_not_found
from orchd.loader import parse_config, validate_endpoint
from orchd.log import config_logger, registry_logger
from orchd.model import Config, EndpointSpec, ServerSettings
from orchd.state import GatewayState
from orchd.store import AdminRecord, Record, StoreEvent
from orchd.target import ACTIVE, ADMIN_STATES, DRAINING
from orchd.tls import key_path, restart_keys

__all__ = (
    "ChangeConsumer",
    "Heartbeat",
    "Register",
    "Reload",
    "ReloadCertificates",
    "Remove",
    "Replace",
    "SetStatus",
    "SetTargetState",
    "SyncFromStore",
    "file_digest",
    "read_config",
)


@dataclass(frozen=True, slots=True)
class Register:
    spec: EndpointSpec


@dataclass(frozen=True, slots=True)
class Replace:
    spec: EndpointSpec


@dataclass(frozen=True, slots=True)
class Remove:
    name: str


@dataclass(frozen=True, slots=True)
class SetStatus:
    name: str
    status: str  # active | disabled


@dataclass(frozen=True, slots=True)
class SetTargetState:
    """Drain or enable one target (``url``) or every target of an endpoint; enabling every
    target also ends an operator's ``disabled``."""

    name: str
    url: str | None
    state: str  # draining | active


@dataclass(frozen=True, slots=True)
class Heartbeat:
    name: str


@dataclass(frozen=True, slots=True)
class Reload:
    trigger: str


@dataclass(frozen=True, slots=True)
class ReloadCertificates:
    """Reread the public port's certificate and key files (they changed on disk)."""

    trigger: str


@dataclass(frozen=True, slots=True)
class SyncFromStore:
    event: StoreEvent


Change = (Register | Replace | Remove | SetStatus | SetTargetState | Heartbeat | Reload
          | ReloadCertificates | SyncFromStore)


def _store_unavailable(store: str, exc: Exception) -> ProblemError:
    return ProblemError(
        503, "Registry store unavailable",
        f"the {store} store did not take the change, nothing was applied: {exc}",
        headers={"Retry-After": "5"},
    )


class ChangeConsumer:
    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self._queue: asyncio.Queue[tuple[Change, asyncio.Future[Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.last_read_digest: str | None = None  # of the config file, by the last reload
        self.file_server: ServerSettings | None = None  # its server block, for restart keys
        self.frozen: str | None = None  # why changes are refused for now (a restart)
        self.log_level_override: str | None = None  # set by a flag or LOG_LEVEL at start
        # Told the certificate files after a reload changed their list (the daemon's
        # watcher follows them).
        self.certificate_files_changed: Callable[[list[str]], None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="orchd-changes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def submit(self, change: Change) -> Any:
        """Queue a change and wait for its result (or its ProblemError)."""
        if self.frozen is not None:
            raise ProblemError(503, "Changes paused", f"orchd is {self.frozen}: changes are "
                               "refused for a moment; retry", headers={"Retry-After": "1"})
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((change, fut))
        return await asyncio.shield(fut)

    def submit_nowait(self, change: Change) -> None:
        """Queue a change whose result nobody waits for (signals, file events)."""
        if self.frozen is not None:
            registry_logger.warning("%s ignored: orchd is %s", type(change).__name__,
                                    self.frozen)
            return
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        self._queue.put_nowait((change, fut))

    async def freeze(self, reason: str) -> None:
        """Refuse new changes (503) and wait until the queued ones are applied."""
        self.frozen = reason
        await self._queue.join()

    def thaw(self) -> None:
        self.frozen = None

    async def _run(self) -> None:
        while True:
            change, fut = await self._queue.get()
            try:
                await self._run_one(change, fut)
            finally:
                self._queue.task_done()

    async def _run_one(self, change: Change, fut: asyncio.Future[Any]) -> None:
        try:
            result = await self.apply(change)
            if self.state.workers is not None:  # in force on every worker before the answer
                await self.state.workers.sync()
        except ProblemError as exc:
            if not fut.done():
                fut.set_exception(exc)
        except Exception as exc:  # keep the consumer alive whatever a change does
            registry_logger.exception("change %s failed", type(change).__name__)
            if not fut.done():
                fut.set_exception(ProblemError(500, "Internal error", repr(exc)))
        else:
            if not fut.done():
                fut.set_result(result)

    async def apply(self, change: Change) -> Any:
        match change:
            case Register(spec):
                return await self._register(spec)
            case Replace(spec):
                return await self._replace(spec)
            case Remove(name):
                return await self._remove(name)
            case SetStatus(name, status):
                return await self._set_status(name, status)
            case SetTargetState(name, url, st):
                return await self._set_target_state(name, url, st)
            case Heartbeat(name):
                return await self._heartbeat(name)
            case Reload(trigger):
                return await self.reload(trigger)
            case ReloadCertificates(trigger):
                return await self.reload_certificates(trigger)
            case SyncFromStore(event):
                return self._sync(event)
        raise AssertionError(change)

    # -- registry changes

    def _check_upstreams(self, spec: EndpointSpec) -> None:
        """422 naming the rule when ``server.allowed_upstreams`` refuses one of the URLs."""
        policy = self.state.upstream_policy
        key = "urls" if "urls" in spec.document else "url"
        errors = [FieldError(f"config.{key}" + (f"[{i}]" if key == "urls" else ""), why)
                  for i, url in enumerate(spec.urls) if (why := policy.check(url)) is not None]
        if errors:
            raise ProblemError(422, "Upstream not allowed", errors[0].message, errors=errors)

    async def _register(self, spec: EndpointSpec) -> dict[str, Any]:
        self._check_upstreams(spec)
        reg = self.state.registry
        existing = reg.get(spec.name)
        if existing is not None:
            where = ("the configuration file" if existing.source == "config"
                     else "an earlier registration")
            raise ProblemError(409, "Endpoint exists",
                               f"endpoint {spec.name!r} is already defined by {where}")
        record = Record(spec.as_document(), time.time())
        await self._store_put(spec.name, record)
        reg.put_api(spec, record.registration_time)
        registry_logger.info("registered endpoint %s -> %s", spec.name, ", ".join(spec.urls))
        self.state.bus.publish("registry", action="registered", endpoint_id=spec.name,
                               source="api")
        return {"endpoint_id": spec.name, "endpoint_url": spec.url}

    async def _replace(self, spec: EndpointSpec) -> dict[str, Any]:
        self._check_upstreams(spec)
        reg = self.state.registry
        existing = reg.get(spec.name)
        if existing is None:
            raise endpoint_not_found(spec.name)
        if existing.source == "config":
            raise ProblemError(409, "Endpoint defined in the configuration file",
                               f"endpoint {spec.name!r} comes from the configuration file; "
                               "edit the file and reload")
        record = Record(spec.as_document(), existing.registration_time)
        await self._store_put(spec.name, record)
        reg.put_api(spec, existing.registration_time)
        self.state.bus.publish("registry", action="updated", endpoint_id=spec.name, source="api")
        return {"endpoint_id": spec.name, "endpoint_url": spec.url}

    async def _remove(self, name: str) -> dict[str, Any]:
        reg = self.state.registry
        existing = reg.get(name)
        if existing is None:
            raise endpoint_not_found(name)
        if existing.source == "config":
            raise ProblemError(409, "Endpoint defined in the configuration file",
                               f"endpoint {name!r} comes from the configuration file; "
                               "remove it there and reload")
        try:
            await self.state.store.delete(name)
        except StoreError as exc:
            raise _store_unavailable(self.state.store.name, exc) from None
        reg.remove(name)
        registry_logger.info("removed endpoint %s", name)
        self.state.bus.publish("registry", action="removed", endpoint_id=name, source="api")
        return {"endpoint_id": name}

    async def _set_status(self, name: str, status: str) -> dict[str, Any]:
        if status not in ("active", "disabled"):
            raise ProblemError(422, "Invalid status",
                               f"status must be 'active' or 'disabled', not {status!r}",
                               errors=[FieldError("status", "must be 'active' or 'disabled'")])
        reg = self.state.registry
        if reg.get(name) is None:
            raise endpoint_not_found(name)
        old = reg.admin.get(name, AdminRecord())
        new = AdminRecord(status == "disabled", old.targets)
        await self._admin_put(name, new)
        self.state.bus.publish("registry", action="status", endpoint_id=name, status=status)
        return {"endpoint_id": name, "status": status}

    async def _set_target_state(self, name: str, url: str | None, state: str) -> dict[str, Any]:
        assert state in ADMIN_STATES
        reg = self.state.registry
        entry = reg.get(name)
        if entry is None:
            raise endpoint_not_found(name)
        urls = entry.spec.urls
        if url is not None:
            url = url.rstrip("/") if url.count("/") > 2 else url
            if url not in urls:
                raise ProblemError(
                    404, "Target not found",
                    f"endpoint {name!r} has no target {url!r} (targets: {', '.join(urls)})")
        old = reg.admin.get(name, AdminRecord())
        targets = dict(old.targets)
        disabled = old.disabled
        for u in (url,) if url else urls:
            if state == ACTIVE:
                targets.pop(u, None)
            else:
                targets[u] = state
        if url is None and state == ACTIVE and disabled:
            disabled = False
        await self._admin_put(name, AdminRecord(disabled, targets))
        action = "drained" if state == DRAINING else "enabled"
        self.state.bus.publish("registry", action=action, endpoint_id=name, url=url)
        return {"endpoint_id": name, "targets": [{"url": u, "admin_state": targets.get(u, ACTIVE)}
                                                 for u in urls]}

    async def _store_put(self, name: str, record: Record) -> None:
        try:
            await self.state.store.put(name, record)
        except StoreError as exc:
            raise _store_unavailable(self.state.store.name, exc) from None

    async def _admin_put(self, name: str, admin: AdminRecord) -> None:
        try:
            await self.state.store.put_admin(name, admin)
        except StoreError as exc:
            raise _store_unavailable(self.state.store.name, exc) from None
        self.state.registry.set_admin(name, admin)

    async def _heartbeat(self, name: str) -> dict[str, Any]:
        entry = self.state.registry.get(name)
        if entry is None:
            raise endpoint_not_found(name)
        if entry.source == "config" or entry.spec.ttl is None:
            raise ProblemError(409, "Endpoint has no ttl",
                               f"endpoint {name!r} was registered without a ttl; "
                               "it lives until it is removed")
        try:
            ttl = await self.state.store.renew(name)
        except StoreError as exc:
            raise _store_unavailable(self.state.store.name, exc) from None
        except LookupError:
            raise ProblemError(404, "Registration expired",
                               f"endpoint {name!r} expired before this heartbeat; "
                               "register it again") from None
        return {"endpoint_id": name, "ttl": entry.spec.ttl, "expires_in": ttl}

    def _sync(self, event: StoreEvent) -> None:
        """Apply a change another instance wrote to the shared store (or an expiry)."""
        reg = self.state.registry
        if event.kind == "status":
            if event.error != self.state.store_degraded:
                self.state.store_degraded = event.error
                self.state.bus.publish("registry", action="store", store=self.state.store.name,
                                       status="degraded" if event.error else "ok",
                                       error=event.error)
            return
        if self.state.store.is_stale(event):
            return  # this instance has written that key since
        if event.kind == "admin":
            if reg.get(event.name) is not None and reg.admin.get(event.name) != event.admin:
                reg.set_admin(event.name, event.admin or AdminRecord())
            return
        existing = reg.get(event.name)
        if existing is not None and existing.source == "config":
            registry_logger.warning("store entry %s shadowed by the configuration file",
                                    event.name)
            return
        if event.record is None:
            if existing is not None:
                reg.remove(event.name)
                registry_logger.info("removed endpoint %s (from the %s store)", event.name,
                                     self.state.store.name)
                self.state.bus.publish("registry", action="removed", endpoint_id=event.name,
                                       source="store")
            return

        try:
            spec = validate_endpoint(event.record.config)
        except ConfigError as exc:
            registry_logger.error("store entry %s is invalid: %s", event.name, exc)
            return
        if (existing is not None and existing.spec == spec
                and existing.registration_time == event.record.registration_time):
            return
        reg.put_api(spec, event.record.registration_time)
        registry_logger.info("%s endpoint %s (from the %s store)",
                             "registered" if existing is None else "updated", event.name,
                             self.state.store.name)
        self.state.bus.publish("registry", action="registered" if existing is None else "updated",
                               endpoint_id=event.name, source="store")

    # -- reload

    async def reload(self, trigger: str) -> dict[str, Any]:
        """Read and validate the whole file; apply it only if it is valid; answer the diff.

        API registrations are left alone. Settings that only a restart applies (listen
        address, socket, state directory) keep their running values and are listed in
        ``restart_required`` when the file's differ from those the process started with.
        """
        state = self.state
        status = state.last_reload
        now = time.time()
        path = state.config_path
        if path is None:
            raise ProblemError(409, "No configuration file",
                               "orchd was started without a configuration file")
        status.count += 1
        status.at = now
        status.trigger = trigger
        try:
            digest, loaded = await asyncio.to_thread(read_config, path)
            self.last_read_digest = digest  # even when invalid: the file watcher skips it
            if isinstance(loaded, ConfigError):
                raise loaded
            config = loaded
            conflicts = [
                FieldError(f"endpoints[{i}].name",
                           f"{spec.name!r} is registered through the API; remove that "
                           "registration first or rename this endpoint")
                for i, spec in enumerate(config.endpoints)
                if (e := state.registry.get(spec.name)) is not None and e.source == "api"
            ]
            if conflicts:
                raise ConfigError(conflicts, path)
        except ConfigError as exc:
            status.ok = False
            status.failures += 1
            status.error = exc.summary()
            status.errors = [e.as_dict() for e in exc.errors]
            status.diff = None
            config_logger.error("reload (%s) failed, the running configuration stays: %s",
                                trigger, exc.summary())
            state.bus.publish("reload", ok=False, trigger=trigger, error=status.error)
            return {"ok": False, "error": status.error, "errors": status.errors}
        for warning in config.warnings:
            config_logger.warning("%s: %s", path, warning)
        started = self.file_server or state.boot_file
        running = state.config.server
        restart = [f"server.{k}" for k in running.RESTART_KEYS
                   if getattr(config.server, k) != getattr(started, k)]
        restart += restart_keys(running.tls, config.server.tls)
        if config.registry != state.config.registry:  # the store is opened once, at start
            restart.append("registry")
        kept: dict[str, Any] = {k: getattr(running, k) for k in running.RESTART_KEYS}
        kept["tls"] = running.tls if running.tls is None or config.server.tls is None else \
            replace(running.tls, certificates=config.server.tls.certificates)
        config = replace(config, server=replace(config.server, **kept),
                         registry=state.config.registry)
        if self.log_level_override is not None:  # --log-level / LOG_LEVEL win over the file
            config = replace(config, log_level=self.log_level_override)
        diff = state.registry.set_config_endpoints(config.endpoints, config.circuit_breaker)
        state.config = config
        state.health.configure(config.health_check)
        logging.getLogger("orchd").setLevel(config.log_level)
        tls_errors = await self._reload_tls(config)
        status.ok = not tls_errors
        status.error = tls_errors[0]["message"] if tls_errors else None
        status.errors = tls_errors
        status.diff = diff.as_dict()
        status.restart_required = restart
        status.last_success_at = now
        if restart:
            config_logger.warning("%s changed in the file: restart orchd to apply it "
                                  "(orchctl restart)", ", ".join(restart))
        config_logger.info("reload (%s): %d added, %d changed, %d removed", trigger,
                           len(diff.added), len(diff.changed), len(diff.removed))
        state.bus.publish("reload", ok=status.ok, trigger=trigger, **diff.as_dict(),
                          restart_required=restart, error=status.error)
        out = {"ok": status.ok, **diff.as_dict(), "restart_required": restart,
               "warnings": list(config.warnings)}
        if tls_errors:
            out.update(error=status.error, errors=tls_errors)
        return out

    async def _reload_tls(self, config: Config) -> list[dict[str, Any]]:
        """Reread the certificates (off the loop: file reads and key checks); the errors,
        as ``last_reload.errors`` shows them. A pair that fails keeps its previous version."""
        edge = self.state.tls
        tls = config.server.tls
        if edge is None or tls is None:
            return []
        before = edge.files()
        failed = await asyncio.to_thread(edge.reload, tls)
        if edge.files() != before and self.certificate_files_changed is not None:
            self.certificate_files_changed(edge.files())
        for exc in failed:
            config_logger.error("certificate not reloaded, the previous one stays in use: %s",
                                exc)
        return [{"path": key_path(tls, exc.file),
                 "message": f"{exc}; the previous certificate stays in use", "file": exc.file}
                for exc in failed]

    async def reload_certificates(self, trigger: str) -> dict[str, Any]:
        """Reread the certificate files alone (the watcher saw them change): reported in
        ``last_reload`` and on ``/events`` as a reload is."""
        state = self.state
        status = state.last_reload
        now = time.time()
        status.count += 1
        status.at = now
        status.trigger = trigger
        errors = await self._reload_tls(state.config)
        status.ok = not errors
        status.error = errors[0]["message"] if errors else None
        status.errors = errors
        status.diff = None
        if errors:
            status.failures += 1
        else:
            status.last_success_at = now
            config_logger.info("certificates reloaded (%s)", trigger)
        state.bus.publish("reload", ok=status.ok, trigger=trigger, error=status.error,
                          certificates=[f.as_dict(now) for f in state.tls.facts]
                          if state.tls else [])
        return {"ok": status.ok, "error": status.error, "errors": errors}


def file_digest(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 of a file's bytes (through symlinks); None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def read_config(path: str | os.PathLike[str]) -> tuple[str | None, Config | ConfigError]:
    """Read the file once, whole, and validate it: the digest of exactly the bytes read
    (None when unreadable) and the config, or the error that says why it is invalid."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        return None, ConfigError([FieldError("", f"cannot read the file: {exc.strerror}")],
                                 str(p))
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return digest, ConfigError(
            [FieldError("", f"the file is not UTF-8 text: {exc.reason}")], str(p))
    try:
        return digest, parse_config(text, str(p))
    except ConfigError as exc:
        return digest, exc
