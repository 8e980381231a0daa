"""The supervisor's workers (``server.workers`` above 1; design section 14).

``WorkerSet`` forks N worker processes (``orchd.workers.worker``) from a fork server that
imported orchd once at start, so a worker that dies is replaced in milliseconds, and a
replacement runs the same code as the supervisor even when the installed files changed.
Each worker gets its own listening socket on the public port (``SO_REUSEPORT``: the kernel
spreads new connections evenly; one socket shared by all would let one worker's accept loop
take a burst of connections), a line (``orchd.workers.channel``) and a relay line
(``orchd.workers.relay``). The supervisor keeps every socket, so connections that arrive
while a worker is being replaced wait in its socket's queue.

What goes over the line:

* ``sync()``: the state to serve (configuration, endpoints, operators' settings, consumers,
  certificates) and every target's health and breaker, acknowledged by each worker; the
  change consumer and the breaker and consumer routes await it before they answer, so a
  change is in force on every worker when its answer is sent.
* ``push_targets()``: health and breaker changes, as they happen (no acknowledgement).
* A worker's ``outcome`` goes to the instance's breaker (the one that decides), its
  ``counts`` to the instance's counters (``orchd.workers.stats``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchd.log import server_logger
from orchd.workers import stats
from orchd.workers.channel import Channel, Message, encode, open_channel
from orchd.workers.relay import RelayIntake

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerProcess

    from orchd.metrics import Metrics
    from orchd.state import GatewayState

__all__ = ("WorkerSet", "bind_public")

SYNC_TIMEOUT = 5.0  # seconds a worker has to acknowledge a state; then it is replaced
READY_TIMEOUT = 60.0
ASK_TIMEOUT = 1.0  # seconds /metrics waits for the workers' latest counts
TICK = 1.0  # seconds between two checks for changes no hook reports (an etcd peer's keys)
RESPAWN_BACKOFF = 1.0  # seconds between two starts of a worker that keeps dying at once

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["orchd.workers.worker"])
_spawn_lock = threading.Lock()


def _own_path() -> list[str]:
    """The entries of this process's module path in front of the standard library's (what
    ``PYTHONPATH``, ``-m`` or a script's directory put there), the empty one (the working
    directory) left out."""
    stdlib = os.path.dirname(os.__file__)
    front = sys.path[:sys.path.index(stdlib)] if stdlib in sys.path else []
    return [path for path in front if path]


def _start_process(process: ForkServerProcess) -> None:
    """``process.start()``, which starts the fork server (and multiprocessing's resource
    tracker) when none runs, on the supervisor's own module path.

    Both are new interpreters started with ``python -c``, whose module path begins with
    the working directory, and Python 3.11's fork server does not take its parent's path:
    a directory or file in the working directory named like a module they import
    (``multiprocessing``, ``orchd``, ``aiohttp``...) would be imported and run in orchd's
    processes. ``PYTHONSAFEPATH`` keeps the working directory off their path and
    ``PYTHONPATH`` gives them what the supervisor's path has in front of the standard
    library. A fork server that died is started again the same way."""
    with _spawn_lock:
        saved = {name: os.environ.get(name) for name in ("PYTHONSAFEPATH", "PYTHONPATH")}
        os.environ["PYTHONSAFEPATH"] = "1"
        os.environ["PYTHONPATH"] = os.pathsep.join(_own_path())
        try:
            process.start()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def bind_public(host: str, port: int, count: int,
                reuse_port: bool = True) -> list[list[socket.socket]]:
    """``count`` sets of listening sockets on ``host:port`` (every address the host name
    has), with ``SO_REUSEPORT`` (more than one set needs it); port 0 takes one free port
    for all."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    seen: list[tuple[socket.AddressFamily, Any]] = []
    for family, _, _, _, addr in infos:
        if (family, addr[0]) not in [(f, a[0]) for f, a in seen]:
            seen.append((family, addr))
    sets: list[list[socket.socket]] = []
    try:
        for _ in range(count):
            socks: list[socket.socket] = []
            sets.append(socks)
            for kind, addr in seen:
                sock = socket.socket(kind, socket.SOCK_STREAM)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port or count > 1:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if kind == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((addr[0], port, *addr[2:]))
                if port == 0:
                    port = sock.getsockname()[1]
                sock.listen(1024)
                sock.setblocking(False)
    except OSError:
        for socks in sets:
            for sock in socks:
                sock.close()
        raise
    return sets


class _Worker:
    """One worker process as the supervisor sees it."""

    def __init__(self, index: int, listeners: list[socket.socket]) -> None:
        self.index = index
        self.listeners = listeners
        self.process: ForkServerProcess | None = None
        self.channel: Channel | None = None
        self.intake: RelayIntake | None = None
        self.ready: asyncio.Future[None] | None = None
        self.acks: dict[int, asyncio.Future[None]] = {}
        self.asks: dict[int, asyncio.Future[None]] = {}
        self.levels: dict[tuple[str, str], int] = {}  # its in_flight per target
        self.started = 0.0
        self.failures = 0  # deaths in a row soon after a start
        self.pid = 0


class WorkerSet:
    def __init__(self, state: GatewayState, count: int, listeners: list[list[socket.socket]],
                 serve_relayed: Callable[[socket.socket, bool, str, str], None],
                 metrics: Metrics | None, logging_setup: tuple[Any, ...]) -> None:
        self.state = state
        self.count = count
        self._serve_relayed = serve_relayed
        self._metrics = metrics
        self._logging_setup = logging_setup
        self._workers = [_Worker(i, listeners[i % len(listeners)]) for i in range(count)]
        self._seq = 0
        self._stopping = False
        self._pending_targets: set[tuple[str, str]] = set()
        self._push_scheduled = False
        self._tick_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumers_sent = -1  # the consumers' revision the workers have
        self._sent_targets: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.replaced = 0  # workers replaced since start (a metric and a log line)
        self._instances: int | None = None  # the live instances last sent

    @property
    def listeners(self) -> list[socket.socket]:
        return [sock for w in self._workers for sock in w.listeners]

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid]

    def status(self) -> dict[str, Any]:
        live = [w for w in self._workers if w.ready is not None and w.ready.done()
                and w.process is not None]
        return {"configured": self.count, "live": len(live), "pids": [w.pid for w in live],
                "replaced": self.replaced}

    # -- start and stop

    async def start(self) -> None:
        self.state.bus.add_listener(self._on_event)
        await asyncio.gather(*(self._start(w) for w in self._workers))
        self._tick_task = asyncio.create_task(self._tick(), name="orchd-workers-tick")

    async def _start(self, worker: _Worker) -> None:
        from orchd.workers.worker import WorkerArgs, main

        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        relay_ours, relay_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        state = self.state
        args = WorkerArgs(worker.index, theirs, relay_theirs, worker.listeners, state.boot,
                          state.config, state.config_path, self._logging_setup)
        process = _context.Process(target=main, args=(args,), name=f"orchd-worker-{worker.index}",
                                   daemon=False)
        worker.ready = loop.create_future()
        worker.started = time.monotonic()
        try:
            await asyncio.to_thread(_start_process, process)
        finally:
            theirs.close()
            relay_theirs.close()
        worker.process = process
        worker.pid = process.pid or 0
        worker.channel = await open_channel(
            ours, lambda m: self._on_message(worker, m), lambda: None)
        worker.intake = RelayIntake(relay_ours, self._serve_relayed, loop)
        loop.add_reader(process.sentinel, self._on_exit, worker)
        self._send_state(worker, self._next_seq())
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), READY_TIMEOUT)
        except TimeoutError:
            server_logger.error("worker %d (pid %d) did not start within %gs", worker.index,
                                worker.pid, READY_TIMEOUT)
            self._kill(worker)

    async def stop(self, timeout: float, force: asyncio.Event) -> None:
        """Tell every worker to stop (its linger and drain, within ``timeout``); a second
        stop signal (``force``) tells them to cut what is in flight."""
        self._stopping = True
        if self._tick_task is not None:
            self._tick_task.cancel()
        for worker in self._workers:
            if worker.channel is not None:
                worker.channel.send("stop", force.is_set())

        async def forced() -> None:
            await force.wait()
            for w in self._workers:
                if w.channel is not None:
                    w.channel.send("stop", True)

        forcing = asyncio.create_task(forced())
        deadline = time.monotonic() + timeout + 5.0
        while any(w.process is not None and w.process.exitcode is None
                  for w in self._workers):
            if time.monotonic() > deadline:
                for w in self._workers:
                    self._kill(w)
                break
            await asyncio.sleep(0.05)
        forcing.cancel()
        for worker in self._workers:
            self._close(worker)

    def _kill(self, worker: _Worker) -> None:
        if worker.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, 9)

    def _close(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        if worker.process is not None:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(worker.process.sentinel)
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None
        if worker.intake is not None:
            worker.intake.close()
            worker.intake = None
        for fut in (*worker.acks.values(), *worker.asks.values()):
            if not fut.done():
                fut.set_result(None)
        worker.acks.clear()
        worker.asks.clear()
        stats.forget(self.state.pool, worker.levels)

    def _on_exit(self, worker: _Worker) -> None:
        process = worker.process
        if process is None:
            return
        process.join(0)
        code = process.exitcode
        self._close(worker)
        worker.process = None
        worker.pid = 0
        if self._stopping:
            return
        lived = time.monotonic() - worker.started
        worker.failures = worker.failures + 1 if lived < 5 else 0
        server_logger.error("worker %d (pid %s) exited with %s after %.1fs; starting another",
                            worker.index, process.pid, _exit_text(code), lived)
        delay = RESPAWN_BACKOFF if worker.failures > 3 else 0.0
        self._spawn(self._replace(worker, delay))

    async def _replace(self, worker: _Worker, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self._stopping:
            return
        started = time.monotonic()
        await self._start(worker)
        if worker.ready is not None and worker.ready.done():
            self.replaced += 1
            server_logger.info("worker %d replaced by pid %d in %.0f ms", worker.index,
                               worker.pid, (time.monotonic() - started) * 1000)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- messages from a worker

    def _on_message(self, worker: _Worker, message: Message) -> None:
        kind = message[0]
        if kind == "outcome":
            _, endpoint, url, succeeded, reason = message
            target = self.state.pool.find(endpoint, url)
            if target is not None:
                if succeeded:
                    target.breaker.success()
                else:
                    target.breaker.failure(reason)
                self._target_changed(endpoint, url)
        elif kind == "counts":
            _, ask, report = message
            guards = self.state.guards
            stats.absorb(report, self._metrics.traffic if self._metrics else None,
                         self.state.pool, guards.counters if guards else None, worker.levels)
            fut = worker.asks.pop(ask, None) if ask is not None else None
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif kind == "ack":
            seq = message[1]
            for s in [s for s in worker.acks if s <= seq]:
                fut = worker.acks.pop(s)
                if not fut.done():
                    fut.set_result(None)
        elif kind == "ready":
            worker.pid = message[1]
            worker.failures = 0 if time.monotonic() - worker.started >= 5 else worker.failures
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_result(None)

    # -- the state, to every worker

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _payload(self, with_consumers: bool) -> dict[str, Any]:
        state = self.state
        registry = state.registry
        payload: dict[str, Any] = {
            "config": state.config,
            "own_addresses": state.own_addresses,
            "revision": registry.revision,
            "entries": [(n, e.spec, e.source, e.registration_time)
                        for n, e in registry.entries.items()],
            "admin": registry.admin,
            "targets": [self._target_row(t) for t in state.pool.all()],
        }
        instances = getattr(state.store, "instances", None)  # the etcd store's live count
        payload["instances"] = instances.count if instances is not None else None
        self._instances = payload["instances"]
        if with_consumers:
            payload["consumers"] = state.store.consumers.as_json()
        if state.tls is not None:
            payload["tls"] = (repr(state.tls.facts), state.tls.settings)
        return payload

    @staticmethod
    def _target_row(target: Any) -> tuple[Any, ...]:
        breaker = target.breaker
        return (target.endpoint, target.url, target.health, breaker.decided(),
                breaker.last_failure or "")

    def _send_state(self, worker: _Worker, seq: int,
                    encoded: bytes | None = None) -> asyncio.Future[None] | None:
        if worker.channel is None or not worker.channel.open:
            return None
        if encoded is None:
            encoded = encode("state", seq, self._payload(True))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        worker.acks[seq] = fut
        worker.channel.send_encoded(encoded)
        return fut

    async def sync(self) -> None:
        """Send the state to every worker and wait until each has applied it."""
        revision = self.state.store.consumers.revision
        payload = self._payload(revision != self._consumers_sent)
        self._consumers_sent = revision
        seq = self._next_seq()
        encoded = encode("state", seq, payload)  # once for all
        waits = [f for w in self._workers
                 if w.ready is not None and w.ready.done()
                 and (f := self._send_state(w, seq, encoded)) is not None]
        if not waits:
            return
        _, pending = await asyncio.wait(waits, timeout=SYNC_TIMEOUT)
        if pending:
            for worker in self._workers:
                if seq in worker.acks:
                    server_logger.error("worker %d (pid %d) did not apply a change within "
                                        "%gs; replacing it", worker.index, worker.pid,
                                        SYNC_TIMEOUT)
                    self._kill(worker)

    async def refresh(self) -> None:
        """Ask every worker for its counts and wait (briefly) until they are in."""
        seq = self._next_seq()
        loop = asyncio.get_running_loop()
        waits = []
        for worker in self._workers:
            if worker.channel is not None and worker.channel.open:
                fut: asyncio.Future[None] = loop.create_future()
                worker.asks[seq] = fut
                worker.channel.send("report", seq)
                waits.append(fut)
        if waits:
            await asyncio.wait(waits, timeout=ASK_TIMEOUT)
        for worker in self._workers:
            worker.asks.pop(seq, None)

    def reopen_logs(self) -> None:
        for worker in self._workers:
            if worker.channel is not None:
                worker.channel.send("reopen")

    # -- targets' health and breakers, as they change

    def _on_event(self, event: Any) -> None:
        if event.type in ("health", "breaker"):
            data = event.data
            self._target_changed(data.get("endpoint_id"), data.get("url"))

    def _target_changed(self, endpoint: str, url: str) -> None:
        self._pending_targets.add((endpoint, url))
        if not self._push_scheduled:
            self._push_scheduled = True
            asyncio.get_running_loop().call_soon(self._push_targets)

    def _push_targets(self) -> None:
        self._push_scheduled = False
        pool = self.state.pool
        rows = []
        for endpoint, url in self._pending_targets:
            target = pool.find(endpoint, url)
            if target is None:
                continue
            row = self._target_row(target)
            if self._sent_targets.get((endpoint, url)) != row:
                self._sent_targets[(endpoint, url)] = row
                rows.append(row)
        self._pending_targets.clear()
        if rows:
            for worker in self._workers:
                if worker.channel is not None:
                    worker.channel.send("targets", rows)

    async def _tick(self) -> None:
        """What changes without a hook (breakers moved by the supervisor's own requests,
        consumers written by another instance): compared and sent every ``TICK``."""
        while True:
            await asyncio.sleep(TICK)
            for target in self.state.pool.all():
                key = (target.endpoint, target.url)
                if self._sent_targets.get(key) != self._target_row(target):
                    self._target_changed(*key)
            instances = getattr(self.state.store, "instances", None)
            if (self.state.store.consumers.revision != self._consumers_sent
                    or (instances is not None and instances.count != self._instances)):
                await self.sync()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "an unknown status"
    if code < 0:
        return f"signal {-code}"
    return f"status {code}"
