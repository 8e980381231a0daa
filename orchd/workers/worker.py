"""A worker process: serves the public port with a copy of the supervisor's state.

It is forked by the supervisor's fork server (``orchd.workers.supervisor``) with three
things: its line to the supervisor (``orchd.workers.channel``), its relay line
(``orchd.workers.relay``) and the listening sockets. It builds what the proxy path needs
(registry, target pool, guards, proxy, the public listener), waits for the supervisor's
first state, says ``ready``, and then:

* applies every ``state`` the supervisor sends (the configuration, the endpoints, the
  operators' settings, the consumers' keys, the targets' health and breakers) and
  acknowledges it, so a change is in force here before the API answers it;
* tells its breakers' outcomes to the supervisor, which decides for the instance
  (``orchd.breaker``: a following breaker), and its counts every half second
  (``orchd.workers.stats``);
* relays every connection its listener does not serve to the supervisor.

It stops on SIGTERM/SIGINT or the supervisor's ``stop`` as one process stops (the linger,
then the drain within ``shutdown_timeout``), and when its line closes: the supervisor is
gone, and a worker never outlives it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from aiohttp import web

from orchd.auth.jwks import JwksRegistry, aiohttp_fetch
from orchd.auth.pool import GuardPool
from orchd.balancer import RetryBudget
from orchd.drain import drain, linger
from orchd.edge import PublicRunner
from orchd.events import EventBus
from orchd.health import HealthChecker
from orchd.log import access_logger, server_logger
from orchd.model import Config, ServerSettings
from orchd.process import configure_logging, tune_malloc
from orchd.proxy import Proxy
from orchd.proxy_accept import serve_public
from orchd.registry import Entry, Registry
from orchd.resolver import CheckedResolver
from orchd.state import GatewayState
from orchd.store import Store
from orchd.store.consumers import ConsumerDirectory
from orchd.target import TargetPool
from orchd.tls import TlsEdge
from orchd.traffic import ACCESS_LINES, RequestHook, Traffic
from orchd.workers.channel import Channel, Message, open_channel
from orchd.workers.relay import Relayer
from orchd.workers.stats import Tally

__all__ = ("WorkerArgs", "main")

REPORT_INTERVAL = 0.5  # seconds between two reports of the counts
LINGER = 1.5


@dataclass(slots=True)
class WorkerArgs:
    """What the supervisor gives a worker when it forks it (pickled by multiprocessing)."""

    index: int
    channel: socket.socket
    relay: socket.socket
    listeners: list[socket.socket]
    boot: ServerSettings
    config: Config
    config_path: str | None
    logging_setup: tuple[Any, ...]


class _Replica:
    """The store as a worker sees it: only the consumers' keys, kept by the supervisor."""

    name = "supervisor"
    shared = False

    def __init__(self) -> None:
        self.consumers = ConsumerDirectory()
        self.instances: _Count | None = None  # the etcd store's live instances


class _Count:
    """The supervisor's count of live instances (``scope: cluster`` rate limits)."""

    def __init__(self, count: int) -> None:
        self.count = count

    async def close(self) -> None:
        return None


def main(args: WorkerArgs) -> None:
    """The process's entry point (the fork server calls it)."""
    level, fmt, log_file, secrets = args.logging_setup
    configure_logging(level, fmt, log_file, secrets=secrets)
    tune_malloc()
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(Worker(args).run())
    os._exit(0)  # multiprocessing's own exit handling is not needed here


class Worker:
    def __init__(self, args: WorkerArgs) -> None:
        self.args = args
        self.stop_event = asyncio.Event()
        self._force = asyncio.Event()
        self._channel: Channel | None = None
        self._first_state: asyncio.Future[None] | None = None
        self._tls_key: Any = None
        self._revision: Any = None

    async def run(self) -> None:
        args = self.args
        loop = asyncio.get_running_loop()
        self._first_state = loop.create_future()
        boot, config = args.boot, args.config
        bus = EventBus()
        pool = TargetPool(bus)
        pool.reporters = self._reporter
        registry = Registry(pool, bus, config.circuit_breaker)
        store = _Replica()
        tls = TlsEdge(boot.tls) if boot.tls is not None else None
        state = GatewayState(boot=boot, boot_file=config.server, config=config,
                             config_path=args.config_path, bus=bus, pool=pool,
                             registry=registry, store=cast(Store, store),
                             health=HealthChecker(config.health_check, bus), tls=tls)
        self.state = state
        self.store = store
        traffic = Traffic()
        self.tally = Tally(traffic, pool)
        self._channel = await open_channel(args.channel, self._on_message, self._on_lost)
        await asyncio.wait_for(asyncio.shield(self._first_state), 60)

        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30,
                                         ttl_dns_cache=10, enable_cleanup_closed=True,
                                         resolver=CheckedResolver(state.upstream_address_allowed))
        session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        guards = GuardPool(JwksRegistry(aiohttp_fetch(session)), store.consumers,
                           store.instances, workers=boot.worker_count())
        state.guards = guards
        self.tally.counters = guards.counters
        registry.on_swap.append(guards.sync)
        guards.sync(registry.snapshot)
        await guards.start()
        proxy = Proxy(state, session, RetryBudget())
        registry.on_swap.append(
            lambda snap: proxy.streams.on_swap(snap, state.config.server.shutdown_timeout))
        server = state.config.server
        hook = RequestHook(traffic if server.metrics else None,
                           access_logger if server.access_log else None)
        runner = PublicRunner(web.Application(), settings=lambda: state.config.server,
                              proxy=proxy, hook=hook, handle_signals=False,
                              shutdown_timeout=server.shutdown_timeout, access_log=None)
        await runner.setup()
        front = runner.server
        assert front is not None
        front.relay = Relayer(args.relay, loop).relay  # type: ignore[attr-defined]
        args.relay.setblocking(False)
        accepting = await serve_public(runner, args.listeners,
                                       tls.listener if tls is not None else None,
                                       lambda: state.config.server, boot.proxy_protocol)
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor's to handle
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        loop.add_signal_handler(signal.SIGUSR2, lambda: None)
        reporter = loop.create_task(self._report_every(REPORT_INTERVAL))
        gc.freeze()
        self._send("ready", os.getpid())
        try:
            await self.stop_event.wait()
        finally:
            reporter.cancel()
            state.stopping = True
            timeout = state.config.server.shutdown_timeout
            for listener in accepting:
                listener.close()
            for site in list(runner.sites):
                await site.stop()
            lingered = await linger([runner], min(LINGER, timeout / 2), self._force)
            await drain(runner, max(timeout - lingered, 0.0), self._force)
            await guards.close()
            await session.close()
            await proxy.upstream.close()
            self._report()
            ACCESS_LINES.flush()
            if self._channel is not None:
                self._channel.close()

    # -- from the supervisor

    def _on_message(self, message: Message) -> None:
        kind = message[0]
        if kind == "state":
            self._apply_state(message[2])
            self._send("ack", message[1])
        elif kind == "targets":
            self._apply_targets(message[1])
        elif kind == "report":
            self._report(message[1])
        elif kind == "stop":
            if message[1]:
                self._force.set()
            self.stop_event.set()
        elif kind == "reopen":
            self._reopen_logs()

    def _on_lost(self) -> None:
        if not self.stop_event.is_set():
            server_logger.warning("worker %d: the supervisor is gone; stopping",
                                  self.args.index)
            self.stop_event.set()
        if self._first_state is not None and not self._first_state.done():
            self._first_state.set_exception(ConnectionError("the supervisor is gone"))

    def _apply_state(self, payload: dict[str, Any]) -> None:
        state = self.state
        config: Config = payload["config"]
        if config is not state.config:
            state.config = config
        state.own_addresses = payload["own_addresses"]
        instances = payload.get("instances")
        if instances is not None:
            if self.store.instances is None:
                self.store.instances = _Count(instances)
            self.store.instances.count = instances
        consumers = payload.get("consumers")
        if consumers is not None:
            self.store.consumers.replace(ConsumerDirectory.from_json(consumers))
        tls = payload.get("tls")
        if tls is not None and state.tls is not None and tls[0] != self._tls_key:
            if self._tls_key is not None:
                for error in state.tls.reload(tls[1]):
                    server_logger.error("worker %d: server.tls: %s", self.args.index, error)
            self._tls_key = tls[0]
        registry = state.registry
        if payload["revision"] != self._revision:
            self._revision = payload["revision"]
            registry.replace_all({name: Entry(spec, source, at)
                                  for name, spec, source, at in payload["entries"]},
                                 payload["admin"], config.circuit_breaker)
        self._apply_targets(payload["targets"])
        if self._first_state is not None and not self._first_state.done():
            self._first_state.set_result(None)

    def _apply_targets(self, targets: list[tuple[Any, ...]]) -> None:
        pool = self.state.pool
        for endpoint, url, health, decided, reason in targets:
            target = pool.find(endpoint, url)
            if target is None:
                continue
            target.health = health
            state, opened_at, failure_count, changed_at = decided
            target.breaker.follow(state, opened_at, failure_count, changed_at, reason)

    # -- to the supervisor

    def _send(self, *message: Any) -> None:
        if self._channel is not None:
            self._channel.send(*message)

    def _reporter(self, endpoint: str, url: str) -> Any:
        key = (endpoint, url)
        tally = self.tally

        def report(succeeded: bool, reason: str) -> None:
            self._send("outcome", endpoint, url, succeeded, reason)
            if succeeded:  # counted by the supervisor's breaker: not again in the tally
                tally.reported[key] = tally.reported.get(key, 0) + 1

        return report

    def _report(self, ask: int | None = None) -> None:
        self._send("counts", ask, self.tally.take())

    async def _report_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self._report()

    # -- signals

    def _on_stop_signal(self) -> None:
        if not self.stop_event.is_set():
            self.stop_event.set()
        else:
            self._force.set()

    def _reopen_logs(self) -> None:
        ACCESS_LINES.flush()
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.close()
