"""The composition root: builds every part, wires them, runs until told to stop, stops.

Lifecycle: load the store -> build the registry and the state (``GatewayState``, with the
health checker) -> the change consumer, from the state -> start health checks and the
consumer -> open the listeners (or take over a previous orchd's, see ``orchd.handover``) ->
READY. On SIGTERM, SIGINT or /control/stop: readiness turns 503, the public listeners close,
in-flight requests and streams finish within ``shutdown_timeout`` (the control socket answers
meanwhile, e.g. ``orchctl status``), the socket is removed, exit 0. A second SIGTERM/SIGINT
cuts what is still in flight. SIGHUP reloads the file, SIGUSR1 reopens log files, SIGUSR2 (or
``orchctl restart``) restarts orchd with no downtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import grp
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from orchd import __version__, handover, systemd
from orchd.accesslog import access_logger_class
from orchd.api import build_control_app, build_public_app
from orchd.api.common import CHANGES
from orchd.api.control import RESTART
from orchd.auth.jwks import JwksRegistry, aiohttp_fetch
from orchd.auth.pool import GuardPool
from orchd.balancer import RetryBudget
from orchd.changes import ChangeConsumer, Reload, SyncFromStore, read_config
from orchd.drain import drain, linger
from orchd.edge import PublicRunner
from orchd.errors import ConfigError, ProblemError, StoreError
from orchd.events import EventBus
from orchd.front import FrontServer
from orchd.health import HealthChecker
from orchd.loader import validate_endpoint
from orchd.log import access_logger, registry_logger, server_logger
from orchd.metrics import Metrics
from orchd.model import Config, ServerSettings
from orchd.proxy import Proxy
from orchd.proxy_accept import ProxyThenTls, serve_public
from orchd.redirect import redirect_runner
from orchd.registry import Registry
from orchd.resolver import CheckedResolver
from orchd.sources import CertificateWatcher, ConfigWatcher
from orchd.state import GatewayState
from orchd.store import Store
from orchd.store.file import FileStore
from orchd.target import TargetPool
from orchd.tls import TlsEdge, TlsError, is_loopback
from orchd.traffic import ACCESS_LINES, RequestHook
from orchd.workers.supervisor import WorkerSet, bind_public

__all__ = ("Daemon", "StartupError")

# Seconds idle keep-alive connections stay open after the listeners close (see _linger).
LINGER = 1.5
GC_THRESHOLD = 10_000  # allocations between young-generation collections (CPython: 700)


class StartupError(Exception):
    """orchd cannot start; the message says why."""


def make_store(config: Config) -> Store:
    if config.registry.store == "etcd":
        from orchd.store.etcd import EtcdStore

        store: Store = EtcdStore(config.registry.etcd_endpoints, config.registry.etcd_prefix)
        return store
    return FileStore(config.server.state_dir)


def _check_socket_path(path: Path) -> None:
    """Refuse a socket a live orchd answers on; remove a stale one."""
    if len(os.fsencode(path)) > 107:
        raise StartupError(f"control socket path {path} is longer than 107 bytes")
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"control socket path {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        server_logger.info("removing stale control socket %s", path)
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        raise StartupError(f"control socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise StartupError(f"another orchd is running on the control socket {path}; "
                       "stop it first (orchctl stop) or set server.control_socket")


class Daemon:
    def __init__(self, config: Config, boot: ServerSettings, config_path: str | None) -> None:
        self.config = config
        self.boot = boot
        self.config_path = config_path
        self.stop_event = asyncio.Event()
        self._runners: list[web.BaseRunner] = []
        self._control_runner: web.BaseRunner | None = None
        self._socket_path: Path | None = None
        self._watcher: ConfigWatcher | None = None
        self._cert_watcher: CertificateWatcher | None = None
        self._redirect_runner: web.BaseRunner | None = None
        self._store_task: asyncio.Task[None] | None = None
        self._force = asyncio.Event()  # a second stop signal: stop waiting for requests
        self._inherited = handover.Inherited()
        self._restarter: handover.Restarter | None = None
        self._handed_over: int | None = None  # the successor's pid
        self._signal_tasks: set[asyncio.Task[None]] = set()
        self._workers: WorkerSet | None = None  # server.workers above 1
        self._accepting: list[ProxyThenTls] = []  # PROXY before TLS: orchd.proxy_accept

    async def run(self) -> int:
        state = await self._build()
        changes = ChangeConsumer(state)  # the one writer of the state
        try:
            await self._serve(state, changes)
            await self.stop_event.wait()
        finally:
            await self._shutdown(state, changes)
        return 0

    # -- build

    async def _build(self) -> GatewayState:
        config = self.config
        store = make_store(config)
        try:
            stored = await store.load()
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        try:  # the certificates were checked with the file: this fails only in a race
            tls = TlsEdge(self.boot.tls) if self.boot.tls is not None else None
        except TlsError as exc:
            raise StartupError(f"server.tls: {exc}") from None
        bus = EventBus()
        pool = TargetPool(bus)
        registry = Registry(pool, bus, config.circuit_breaker)
        state = GatewayState(boot=self.boot, boot_file=config.server, config=config,
                             config_path=self.config_path, bus=bus, pool=pool,
                             registry=registry, store=store,
                             health=HealthChecker(config.health_check, bus),
                             own_addresses=((self.boot.host, self.boot.port),), tls=tls)
        registry.set_config_endpoints(config.endpoints, config.circuit_breaker)
        for name, record in stored.endpoints.items():
            try:
                spec = validate_endpoint(record.config)
            except ConfigError as exc:
                where = f"{getattr(store, 'path', store.name)}: stored endpoint {name!r}"
                if store.shared:  # another instance's entry: skipped, as the watch does
                    registry_logger.error("%s is invalid, ignored: %s", where, exc.summary())
                    continue
                raise StartupError(f"{where} is invalid: {exc.summary()}") from None
            if registry.get(name) is not None:
                server_logger.warning(
                    "stored API registration %r is shadowed by the configuration file's "
                    "endpoint of the same name", name)
                continue
            registry.put_api(spec, record.registration_time)
        registry.load_admin({k: v for k, v in stored.admin.items() if registry.get(k)})
        carried = handover.carried_health(pool)  # a restart's: the predecessor's verdicts
        if carried:
            server_logger.info("restart: took over the health of %d targets", carried)
        state.last_reload.at = state.started_at
        state.last_reload.trigger = "start"
        state.last_reload.last_success_at = state.started_at
        state.last_reload.count = 1
        for warning in config.warnings:
            server_logger.warning("%s: %s", self.config_path, warning)
        if not config.server.admin_token:
            server_logger.warning("no server.admin_token is set: admin calls on TCP are "
                                  "accepted from loopback clients only")
        if self.boot.tls is None and config.server.admin_token \
                and not is_loopback(self.boot.host):
            server_logger.warning(
                "server.admin_token is set and orchd listens on %s without server.tls: the "
                "token crosses the network in clear; serve HTTPS (server.tls) or keep admin "
                "calls on the control socket", self.boot.host)
        return state

    async def _serve(self, state: GatewayState, changes: ChangeConsumer) -> None:
        loop = asyncio.get_running_loop()
        await state.health.start(check_address=state.upstream_address_allowed)
        state.registry.on_swap.append(state.health.sync)
        state.health.sync(state.registry.snapshot)
        changes.start()
        self._store_task = asyncio.create_task(self._follow_store(state.store, changes),
                                               name="orchd-store-watch")

        # WebSocket upgrades: the upstream pool's connect-time check, through the resolver.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30,
                                         ttl_dns_cache=10, enable_cleanup_closed=True,
                                         resolver=CheckedResolver(state.upstream_address_allowed))
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
        )
        # The endpoints' auth, rate limits and CORS, hung on each snapshot's routes; JWK Sets
        # are fetched through the same session (allowed_upstreams applies to them too).
        # With server.workers the supervisor serves the connections the workers relay to it
        # (WebSocket upgrades, Expect: 100-continue): it takes a worker's share of each rate,
        # as every connection does, not the whole rate on top of the workers' shares.
        guards = GuardPool(JwksRegistry(aiohttp_fetch(self._session)), state.store.consumers,
                           getattr(state.store, "instances", None),
                           workers=self.boot.worker_count())
        state.guards = guards
        state.registry.on_swap.append(guards.sync)
        guards.sync(state.registry.snapshot)
        await guards.start()
        proxy = Proxy(state, self._session, RetryBudget())
        self.proxy = proxy
        state.registry.on_swap.append(
            lambda snap: proxy.streams.on_swap(snap, state.config.server.shutdown_timeout))

        server = state.config.server
        metrics = Metrics(state) if server.metrics else None
        public = build_public_app(state, proxy, metrics)
        control = build_control_app(state, self.stop_event, metrics)
        public[CHANGES] = control[CHANGES] = changes
        self._restarter = handover.Restarter(state, changes, self._listening_fds,
                                             self._hand_over)
        control[RESTART] = self._restarter.restart
        shutdown = server.shutdown_timeout
        # One hook per finished request: the access log line and the request metrics.
        hook = RequestHook(metrics.traffic if metrics is not None else None,
                           access_logger if server.access_log else None)
        public_runner = PublicRunner(
            public, settings=lambda: state.config.server, proxy=proxy, hook=hook,
            handle_signals=False, shutdown_timeout=shutdown,
            access_log=access_logger if hook.enabled else None,
            access_log_class=access_logger_class(hook),
        )
        await public_runner.setup()
        self._runners.append(public_runner)
        self._inherited = handover.Inherited.from_environ()
        inherited = (self._inherited.public_for(self.boot.host, self.boot.port)
                     or systemd.listen_sockets())
        # TLS is per connection: an inherited listening socket serves HTTPS as well.
        tls = state.tls.listener if state.tls is not None else None
        scheme = "https" if tls is not None else "http"
        proxy_first = tls is not None and self.boot.proxy_protocol  # orchd.proxy_accept
        count = self.boot.worker_count()
        if count > 1:
            await self._start_workers(state, public_runner, metrics, inherited, count)
        elif inherited:
            self._accepting = await serve_public(public_runner, inherited, tls,
                                                 lambda: state.config.server, proxy_first)
            for sock in inherited:
                server_logger.info("serving %s on inherited socket %s", scheme,
                                   sock.getsockname())
        else:
            try:
                if proxy_first:  # accepted here: the PROXY header comes before TLS
                    socks = bind_public(self.boot.host, self.boot.port, 1,
                                        self.boot.reuse_port)[0]
                    self._accepting = await serve_public(
                        public_runner, socks, tls, lambda: state.config.server, proxy_first)
                else:
                    await web.TCPSite(public_runner, self.boot.host, self.boot.port,
                                      backlog=1024, reuse_port=self.boot.reuse_port or None,
                                      ssl_context=tls).start()
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {self.boot.host}:{self.boot.port}: {exc.strerror}"
                ) from None
            server_logger.info("listening on %s://%s:%s%s", scheme, self.boot.host,
                               self.boot.port,
                               " (shared: reuse_port)" if self.boot.reuse_port else "")
            if self.boot.reuse_port and not state.store.shared:
                server_logger.warning(
                    "server.reuse_port with the file store: registrations made through this "
                    "process's API are not seen by the others on the port (use "
                    "registry.store: etcd to share them)")
        await self._open_redirect(state)
        state.own_addresses = self._own_addresses(public_runner)

        if self.boot.control_socket:
            control_runner = web.AppRunner(control, handle_signals=False,
                                           shutdown_timeout=shutdown, access_log=None)
            await control_runner.setup()
            self._runners.append(control_runner)
            self._control_runner = control_runner
            taken = self._inherited.control_for(self.boot.control_socket)
            if taken is not None:
                await web.SockSite(control_runner, taken).start()
                self._socket_path = Path(self.boot.control_socket)
                server_logger.info("control socket %s (taken over)", self._socket_path)
            else:
                await self._open_socket(control_runner, Path(self.boot.control_socket))

        if self.config_path:
            try:
                digest, from_file = read_config(self.config_path)
                changes.last_read_digest = digest
                if isinstance(from_file, Config):  # the file's own restart-only keys
                    changes.file_server = from_file.server
                    if from_file.log_level != state.config.log_level:
                        changes.log_level_override = state.config.log_level
                watcher = ConfigWatcher(self.config_path, changes)
                watcher.start()
                self._watcher = watcher
                state.watching = True
            except OSError as exc:
                server_logger.warning("not watching %s: %s", self.config_path, exc)
        if state.tls is not None:
            self._watch_certificates(state.tls.files(), changes)
            changes.certificate_files_changed = lambda files: self._watch_certificates(
                files, changes)

        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal, changes)
        loop.add_signal_handler(signal.SIGUSR1, self._on_reopen_signal)
        loop.add_signal_handler(signal.SIGUSR2, self._on_restart_signal)
        state.started = True
        state.ready = True
        # What exists now (modules, schema, app) lives as long as the process: the cyclic
        # collector need not scan it again; and it runs less often (each request allocates
        # a few dozen short-lived objects, nearly none of them in cycles).
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
        systemd.notify(f"READY=1\nSTATUS=serving\nMAINPID={os.getpid()}")
        handover.adopted()
        server_logger.info("orchd %s ready (pid %d, %d endpoints)", __version__, os.getpid(),
                           len(state.registry.snapshot.routes))

    async def _start_workers(self, state: GatewayState, runner: PublicRunner,
                             metrics: Metrics | None, inherited: list[socket.socket],
                             count: int) -> None:
        """``server.workers`` above 1: the workers serve the public port; this process
        serves what they relay to it (``orchd.workers``) with ``runner``, and no port."""
        if inherited:  # a restart's or systemd's sockets: one set each, or all shared
            sets = ([inherited[i::count] for i in range(count)]
                    if len(inherited) % count == 0 else [inherited])
            for sock in inherited:
                sock.setblocking(False)
        else:
            try:
                sets = bind_public(self.boot.host, self.boot.port, count)
            except OSError as exc:
                raise StartupError(f"cannot listen on {self.boot.host}:{self.boot.port}: "
                                   f"{exc.strerror}") from None
        loop = asyncio.get_running_loop()
        front = runner.server
        assert isinstance(front, FrontServer)

        def serve_relayed(sock: socket.socket, secure: bool, socket_peer: str,
                          client: str) -> None:
            conn = front()
            conn.relayed(secure, socket_peer)
            conn.told(client or None)
            self._spawn(self._adopt(loop, conn, sock), "orchd-relayed")

        server = state.config.server
        workers = WorkerSet(state, count, sets, serve_relayed, metrics,
                            (state.config.log_level, server.log_format, server.log_file,
                             [server.admin_token]))
        self._workers = workers
        state.workers = workers
        state.own_addresses = self._own_addresses(runner)  # in the workers' first state
        try:
            await workers.start()
        except Exception as exc:
            await workers.stop(0.0, self._force)
            raise StartupError(f"cannot start the workers: {exc!r}") from None
        scheme = "https" if state.tls is not None else "http"
        port = workers.listeners[0].getsockname()[1]
        server_logger.info("listening on %s://%s:%s with %d workers (pids %s)", scheme,
                           self.boot.host, port, count,
                           " ".join(map(str, workers.pids)))

    def _own_addresses(self, runner: web.BaseRunner) -> tuple[tuple[str, int], ...]:
        """What the public port really listens on (inherited and ephemeral sockets
        included, the workers' and orchd.proxy_accept's too): an endpoint may not point
        there."""
        listening = [*runner.addresses,
                     *(s.getsockname() for s in (self._workers.listeners if self._workers
                                                 else ())),
                     *(a.sock.getsockname() for a in self._accepting)]
        return tuple(dict.fromkeys((
            (self.boot.host, self.boot.port),
            *((str(a[0]), int(a[1])) for a in listening if isinstance(a, tuple)))))

    @staticmethod
    async def _adopt(loop: asyncio.AbstractEventLoop, conn: asyncio.Protocol,
                     sock: socket.socket) -> None:
        try:
            await loop.connect_accepted_socket(lambda: conn, sock)
        except OSError:
            sock.close()

    async def _open_redirect(self, state: GatewayState) -> None:
        """``server.redirect_http_port``: the plain listener that sends clients to https."""
        port = self.boot.redirect_http_port
        inherited = self._inherited.redirect_for(self.boot.host, port)
        if port is None or state.tls is None:
            return
        runner = redirect_runner(self.boot.port, settings=lambda: state.config.server)
        await runner.setup()
        self._runners.append(runner)
        self._redirect_runner = runner
        if inherited:
            for sock in inherited:
                await web.SockSite(runner, sock).start()
        else:
            try:
                await web.TCPSite(runner, self.boot.host, port, backlog=1024).start()
            except OSError as exc:
                raise StartupError(f"cannot listen on {self.boot.host}:{port} "
                                   f"(server.redirect_http_port): {exc.strerror}") from None
        server_logger.info("redirecting http://%s:%s to https", self.boot.host, port)

    def _watch_certificates(self, files: list[str], changes: ChangeConsumer) -> None:
        """(Re)start the certificate files' watcher (the list changes with a reload)."""
        if self._cert_watcher is not None:
            if sorted(map(str, self._cert_watcher.paths)) == sorted(
                    os.path.abspath(f) for f in files):
                return
            self._cert_watcher.stop()
            self._cert_watcher = None
        try:
            watcher = CertificateWatcher(files, changes)
            watcher.start()
        except OSError as exc:
            server_logger.warning("not watching the certificate files: %s", exc)
            return
        self._cert_watcher = watcher

    async def _open_socket(self, runner: web.AppRunner, path: Path) -> None:
        parent = path.parent
        if not parent.exists():
            try:
                parent.mkdir(parents=True, mode=0o750)
            except OSError as exc:
                raise StartupError(f"cannot create the control socket's directory {parent}: "
                                   f"{exc.strerror}") from None
        elif parent.stat().st_mode & 0o007:
            server_logger.warning("the control socket's directory %s is open to others (mode "
                                  "%03o): make it 0750 so only orchd's group reaches the socket",
                                  parent, stat.S_IMODE(parent.stat().st_mode))
        _check_socket_path(path)
        old_umask = os.umask(0o117)
        try:
            await web.UnixSite(runner, os.fspath(path)).start()
        except OSError as exc:
            raise StartupError(f"cannot create control socket {path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o660)
        group = self.boot.socket_group
        if group is not None:
            try:
                gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
                os.chown(path, -1, gid)
            except (KeyError, PermissionError) as exc:
                raise StartupError(f"cannot give {path} to group {group!r}: {exc}") from None
        self._socket_path = path
        server_logger.info("control socket %s", path)

    async def _follow_store(self, store: Store, changes: ChangeConsumer) -> None:
        """Changes made elsewhere (other instances, expiries) go through the one consumer."""
        async for event in store.watch():
            changes.submit_nowait(SyncFromStore(event))

    # -- signals only set a flag or enqueue

    def _on_stop_signal(self) -> None:
        if not self.stop_event.is_set():
            self.stop_event.set()
        elif not self._force.is_set():
            server_logger.warning("second stop signal: cutting the requests still in flight")
            self._force.set()

    def _on_reload_signal(self, changes: ChangeConsumer) -> None:
        self._spawn(self._reload_from_signal(changes), "orchd-sighup")

    async def _reload_from_signal(self, changes: ChangeConsumer) -> None:
        """RELOADING=1, the reload through the change consumer, then READY=1 once it is
        applied (or refused): what systemd's Type=notify(-reload) waits for."""
        systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            result = await changes.submit(Reload("SIGHUP"))
        except ProblemError as exc:
            status = f"reload refused: {exc.detail}"
        else:
            status = "serving" if result.get("ok") else f"reload failed: {result.get('error')}"
        systemd.notify(f"READY=1\nSTATUS={status}")

    def _on_restart_signal(self) -> None:
        self._spawn(self._restart_from_signal(), "orchd-restart")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._signal_tasks.add(task)
        task.add_done_callback(self._signal_tasks.discard)

    async def _restart_from_signal(self) -> None:
        assert self._restarter is not None
        try:
            await self._restarter.restart()
        except ProblemError as exc:
            server_logger.error("restart (SIGUSR2) failed: %s", exc.detail)

    # -- handover (orchd.handover)

    def _listening_fds(self) -> dict[str, list[int]]:
        fds: dict[str, list[int]] = {"public": [], "control": [], "redirect": []}
        if self._workers is not None:
            fds["public"].extend(s.fileno() for s in self._workers.listeners)
        fds["public"].extend(a.sock.fileno() for a in self._accepting)
        for runner in self._runners:
            role = ("control" if runner is self._control_runner else
                    "redirect" if runner is self._redirect_runner else "public")
            fds[role].extend(handover.listening_fds(runner))
        return fds

    def _hand_over(self, pid: int) -> None:
        self._handed_over = pid
        self.stop_event.set()

    def _on_reopen_signal(self) -> None:
        ACCESS_LINES.flush()  # into the file being rotated away, before it is closed
        if self._workers is not None:
            self._workers.reopen_logs()
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.close()  # reopened on the next record
        server_logger.info("log files reopened")

    # -- stop

    async def _shutdown(self, state: GatewayState, changes: ChangeConsumer) -> None:
        state.stopping = True
        state.ready = False
        timeout = state.config.server.shutdown_timeout
        if self._handed_over is None:
            systemd.notify("STOPPING=1")  # not after a handover: the service goes on
        server_logger.info("stopping: draining in-flight requests (up to %gs)", timeout)
        if self._watcher is not None:
            self._watcher.stop()
        if self._cert_watcher is not None:
            self._cert_watcher.stop()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            loop.remove_signal_handler(sig)
        # Stop accepting: the public listeners always; the control socket too after a
        # handover (it is the successor's now), else it answers status calls until the end.
        control = self._control_runner if self._handed_over is None else None
        for accepting in self._accepting:
            accepting.close()
        for runner in self._runners:
            if runner is not control:
                for site in list(runner.sites):
                    await site.stop()
        workers = (asyncio.create_task(self._workers.stop(timeout, self._force))
                   if self._workers is not None else None)
        lingered = await linger([r for r in self._runners if r is not control],
                                min(LINGER, timeout / 2), self._force)
        await asyncio.gather(*(drain(r, max(timeout - lingered, 0.0), self._force)
                               for r in self._runners if r is not control))
        if workers is not None:
            await workers
        if control is not None:
            await drain(control, min(timeout, 1.0), self._force)
        if self._socket_path is not None and self._handed_over is None:
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()
        await changes.stop()
        await state.health.close()
        if state.guards is not None:
            await state.guards.close()
        session = getattr(self, "_session", None)
        if session is not None:
            await session.close()
        proxy = getattr(self, "proxy", None)
        if proxy is not None:
            await proxy.upstream.close()
        state.bus.close()
        if self._store_task is not None:
            self._store_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._store_task
        await state.store.close()
        ACCESS_LINES.flush()
        if self._handed_over is not None:
            server_logger.info("stopped; pid %d serves on", self._handed_over)
        else:
            server_logger.info("stopped")
