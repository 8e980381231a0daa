"""Zero-downtime restart of orchd itself: hand the listening sockets to a successor.

``orchctl restart`` (``POST /control/restart`` on the control socket) or ``SIGUSR2`` makes the
running orchd start a new orchd (same command line, same working directory, the code and the
configuration file as they are on disk now), give it its listening sockets, wait until it is
ready, and only then stop accepting, drain its in-flight requests and exit.

Why inherited sockets. The successor gets the *same* listening sockets (file descriptors passed
on exec, like systemd's ``LISTEN_FDS``), not sockets of its own:

* Nothing is ever unbound: the kernel's accept queue belongs to the socket, not to a process.
  While both processes run, both accept from it; when the old one closes its descriptor, the
  connections still queued are accepted by the successor. With ``SO_REUSEPORT`` each process
  would have a queue of its own, and the connections queued on the old process's socket when
  it closes are reset; socket activation alone needs systemd and restarts the service, which
  is not a handover.
* The control socket keeps its path and its inode: ``orchctl`` never finds it missing.
* It works the same under systemd (socket-activated or not), in a container and in a shell.

The protocol, in order:

1. The old process validates the configuration file (a restart onto a broken file is refused
   with the errors, as a reload is), then freezes registry writes (answered 503 with
   ``Retry-After: 1`` until the handover ends) and waits for the queued ones to be applied.
2. The embedded file store holds an ``flock`` on ``state_dir``: the old process releases it so
   that the successor can load the registry. Shared stores (etcd) stay open.
3. It starts the successor with ``ORCHD_LISTEN_FDS=5:public,6:control`` (descriptor numbers
   and their role; no pid is needed because the variable is read and removed at once) and
   ``NOTIFY_SOCKET`` pointing at a private datagram socket, on which the successor's
   ``sd_notify("READY=1")`` arrives (checked with ``SO_PASSCRED``: only the successor's pid is
   believed). The service manager's own ``NOTIFY_SOCKET``, if any, is passed in
   ``ORCHD_NOTIFY_SOCKET``; the successor switches to it once it has said READY. The
   successor is started through a launcher that forks it and exits at once: orphaned, it is
   the service manager's child (systemd is process 1) rather than this process's, so that
   systemd supervises it as its own when it becomes the main process (see ``_LAUNCHER``).
4. Ready: under systemd the old process sends ``MAINPID=<successor>`` so the successor becomes
   the service's main process (the unit needs ``NotifyAccess=all`` for the successor's later
   messages only if they could race the switch; ``main`` works). A main process systemd did
   not see as its child ("alien") is one it neither waits for on stop nor reaps: with the
   legacy cgroup hierarchy in a container, `systemctl stop` then sent SIGKILL at once instead
   of letting it drain. Then it stops accepting,
   drains within ``shutdown_timeout`` (without sending ``STOPPING=1``: the service is not
   stopping), leaves the control socket in place and exits 0.
   The targets' health goes along (``ORCHD_HANDOVER_HEALTH``, a descriptor of an in-memory
   file with each target's health, counters and last error): the successor starts with the
   verdicts its predecessor reached instead of ``unknown``, so an unhealthy target gets no
   traffic in the seconds (or, with a long ``interval``, minutes) before its first probes.
5. Not ready (it exited, or ``READY_TIMEOUT`` passed): the successor is killed, the old process
   takes the store lock back, thaws writes and keeps serving; the answer says why.

orchd refuses to restart when it is process 1 (a container without an init): its successor
would be killed with the container when it exits. Run it under an init (``docker run --init``,
tini) for ``orchctl restart`` to work in a container.

A successor whose listen address or control socket path differs from the inherited sockets'
(the point of restarting after changing ``server.port``) closes those and binds its own; the
old process's sockets then close when it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from orchd import systemd
from orchd.changes import ChangeConsumer, read_config
from orchd.errors import ConfigError, ProblemError
from orchd.log import server_logger
from orchd.state import GatewayState
from orchd.target import HEALTHY, UNHEALTHY, UNKNOWN, Target, TargetPool

__all__ = ("ENV_FDS", "ENV_HEALTH", "ENV_NOTIFY", "READY_TIMEOUT", "Inherited", "Restarter",
           "adopted", "carried_health", "health_file", "listening_fds")

ENV_FDS = "ORCHD_LISTEN_FDS"
ENV_NOTIFY = "ORCHD_NOTIFY_SOCKET"
ENV_HEALTH = "ORCHD_HANDOVER_HEALTH"  # a descriptor: the targets' health, as JSON
READY_TIMEOUT = 60.0
PUBLIC = "public"
CONTROL = "control"
REDIRECT = "redirect"  # server.redirect_http_port's plain listener


def listening_fds(runner: web.BaseRunner) -> list[int]:
    """The descriptors of the listening sockets a runner's sites serve on."""
    fds: list[int] = []
    for site in runner.sites:
        server = getattr(site, "_server", None)  # the asyncio Server a started site holds
        for sock in getattr(server, "sockets", None) or ():
            fds.append(sock.fileno())
    return fds


# -- the successor's side


@dataclass
class Inherited:
    """Listening sockets handed over by the previous orchd (``ORCHD_LISTEN_FDS``)."""

    public: list[socket.socket] = field(default_factory=list)
    control: list[socket.socket] = field(default_factory=list)
    redirect: list[socket.socket] = field(default_factory=list)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Inherited:
        env = os.environ if environ is None else environ
        raw = env.pop(ENV_FDS, "")
        out = cls()
        for item in filter(None, raw.split(",")):
            fd_text, _, role = item.partition(":")
            try:
                fd = int(fd_text)
                os.set_inheritable(fd, False)
                sock = socket.socket(fileno=fd)
            except (ValueError, OSError) as exc:
                server_logger.warning("%s: ignoring %r: %s", ENV_FDS, item, exc)
                continue
            {CONTROL: out.control, REDIRECT: out.redirect}.get(role, out.public).append(sock)
        return out

    @property
    def active(self) -> bool:
        return bool(self.public or self.control or self.redirect)

    def public_for(self, host: str, port: int) -> list[socket.socket]:
        """The inherited TCP sockets, if they listen where this process is configured to."""
        socks, self.public = self.public, []
        return self._tcp_for(socks, host, port)

    def redirect_for(self, host: str, port: int | None) -> list[socket.socket]:
        """The inherited redirect listener's sockets, if it still listens there."""
        socks, self.redirect = self.redirect, []
        if port is None:
            for sock in socks:
                sock.close()
            return []
        return self._tcp_for(socks, host, port)

    @staticmethod
    def _tcp_for(socks: list[socket.socket], host: str, port: int) -> list[socket.socket]:
        if not socks:
            return []
        wanted = _addresses(host, port)
        names = [s.getsockname() for s in socks]
        if all(_matches(name, wanted, port) for name in names):
            return socks
        server_logger.info("listen address changed to %s:%s: not taking over %s",
                           host, port, ", ".join(map(str, names)))
        for sock in socks:
            sock.close()
        return []

    def control_for(self, path: str) -> socket.socket | None:
        """The inherited control socket, if it is bound to ``path``."""
        found: socket.socket | None = None
        socks, self.control = self.control, []
        for sock in socks:
            name = sock.getsockname()
            if found is None and isinstance(name, str) and os.path.abspath(name) == \
                    os.path.abspath(path):
                found = sock
                continue
            sock.close()
            if isinstance(name, str) and name:
                server_logger.info("control socket moved to %s: removing %s", path, name)
                with contextlib.suppress(OSError):
                    os.unlink(name)
        return found


_HEALTH_FIELDS = ("health", "consecutive_failures", "consecutive_successes", "last_check_time",
                  "response_time", "error_message")


def health_file(targets: Iterable[Target]) -> int:
    """An in-memory file (a descriptor, inheritable) holding ``targets``' health."""
    data = json.dumps([{"endpoint": t.endpoint, "url": t.url,
                        **{k: getattr(t, k) for k in _HEALTH_FIELDS}} for t in targets])
    fd = os.memfd_create("orchd-handover-health", 0)
    os.write(fd, data.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def carried_health(pool: TargetPool, environ: MutableMapping[str, str] | None = None) -> int:
    """Give the targets in ``pool`` the health the previous orchd handed over; how many."""
    env = os.environ if environ is None else environ
    raw = env.pop(ENV_HEALTH, "")
    if not raw:
        return 0
    try:
        fd = int(raw)
        with os.fdopen(fd, "rb") as carried:
            entries = json.loads(carried.read())
    except (ValueError, OSError) as exc:
        server_logger.warning("%s: ignoring %r: %s", ENV_HEALTH, raw, exc)
        return 0
    targets = {(t.endpoint, t.url): t for t in pool.all()}
    taken = 0
    for entry in entries if isinstance(entries, list) else ():
        try:
            target = targets.get((entry["endpoint"], entry["url"]))
            if target is None or entry["health"] not in (HEALTHY, UNHEALTHY, UNKNOWN):
                continue
            failures, successes = int(entry["consecutive_failures"]), int(
                entry["consecutive_successes"])
            checked, took = _seconds(entry["last_check_time"]), _seconds(entry["response_time"])
            error = entry["error_message"]
        except (KeyError, TypeError, ValueError):
            continue  # not what health_file() writes
        target.health = entry["health"]
        target.consecutive_failures, target.consecutive_successes = failures, successes
        target.last_check_time, target.response_time = checked, took
        target.error_message = None if error is None else str(error)
        taken += 1
    return taken


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def _addresses(host: str, port: int) -> set[str]:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError:
        return {host}
    return {str(info[4][0]) for info in infos}


def _matches(name: Any, wanted: set[str], port: int) -> bool:
    if not isinstance(name, tuple) or len(name) < 2:
        return False
    return (port == 0 or name[1] == port) and str(name[0]) in wanted


def adopted(environ: MutableMapping[str, str] | None = None) -> None:
    """Called once this process has said READY: later notifications go to the service
    manager (or nowhere), not to the previous process."""
    env = os.environ if environ is None else environ
    upstream = env.pop(ENV_NOTIFY, None)
    if upstream is not None:
        env["NOTIFY_SOCKET"] = upstream
    elif env.get("NOTIFY_SOCKET", "").startswith("@orchd-handover-"):
        env.pop("NOTIFY_SOCKET", None)


# -- the running process's side


class Restarter:
    """Start a successor, hand it the listeners, and tell the daemon to drain and exit."""

    def __init__(self, state: GatewayState, changes: ChangeConsumer,
                 sockets: Callable[[], Mapping[str, Iterable[int]]],
                 handed_over: Callable[[int], None], ready_timeout: float = READY_TIMEOUT
                 ) -> None:
        self.state = state
        self.changes = changes  # frozen while the successor starts
        self.sockets = sockets
        self.handed_over = handed_over
        self.ready_timeout = ready_timeout
        self.busy = False
        self.successor: int | None = None  # its pid

    async def restart(self) -> dict[str, Any]:
        state = self.state
        if state.stopping:
            raise ProblemError(409, "Stopping", "orchd is stopping; start it again instead")
        if self.busy:
            raise ProblemError(409, "Restart in progress", "a restart is already under way")
        if os.getpid() == 1:
            raise ProblemError(409, "Restart not possible",
                               "orchd is process 1 (a container's init): the container would "
                               "end with it; run it under an init (docker run --init, tini) "
                               "or restart the container")
        self.busy = True
        try:
            result = await self._restart()
        except BaseException:
            self.busy = False
            raise
        return result

    async def _restart(self) -> dict[str, Any]:
        state, changes = self.state, self.changes
        if state.config_path is not None:
            _, loaded = await asyncio.to_thread(read_config, state.config_path)
            if isinstance(loaded, ConfigError):
                raise ProblemError(422, "Invalid configuration",
                                   f"not restarting: {loaded.summary()}", errors=loaded.errors,
                                   extra={"ok": False})
        started = time.monotonic()
        server_logger.info("restart: pausing registry writes and handing over")
        await changes.freeze("restarting")
        released = state.store.name == "file"
        if released:
            await state.store.close()  # the successor takes the state_dir lock
        try:
            pid = await self._spawn_and_wait()
        except BaseException:
            if released:
                await state.store.load()
            changes.thaw()
            raise
        if os.environ.get("NOTIFY_SOCKET"):
            systemd.notify(f"MAINPID={pid}\nREADY=1\nSTATUS=handed over to pid {pid}")
        server_logger.info("restart: pid %d is ready (%.2fs); draining and exiting",
                           pid, time.monotonic() - started)
        self.handed_over(pid)
        return {"success": True, "message": f"orchd restarted: pid {pid} serves now",
                "pid": pid, "new_pid": pid, "old_pid": os.getpid(),
                "seconds": round(time.monotonic() - started, 3)}

    async def _spawn_and_wait(self) -> int:
        loop = asyncio.get_running_loop()
        roles = self.sockets()
        fds = {fd: role for role, role_fds in roles.items() for fd in role_fds}
        name = f"orchd-handover-{os.getpid()}-{secrets.token_hex(6)}"
        notify = socket.socket(socket.AF_UNIX,
                               socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            notify.bind("\0" + name)
            notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            env = dict(os.environ)
            for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                env.pop(key, None)
            env[ENV_FDS] = ",".join(f"{fd}:{role}" for fd, role in fds.items())
            health = health_file(self.state.pool.all())
            env[ENV_HEALTH] = str(health)
            if os.environ.get("NOTIFY_SOCKET"):
                env[ENV_NOTIFY] = os.environ["NOTIFY_SOCKET"]
            env["NOTIFY_SOCKET"] = "@" + name
            argv = [sys.executable, *sys.orig_argv[1:]]
            try:
                pid = await _launch(argv, (*fds, health), env)
            finally:
                os.close(health)
            self.successor = pid
            server_logger.info("restart: started pid %d, waiting until it is ready", pid)
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(notify.fileno(), _read_notify, notify, pid, ready)
            try:
                with _Watched(pid) as watched:
                    await self._wait(watched, ready)
            finally:
                loop.remove_reader(notify.fileno())
            return pid
        finally:
            notify.close()

    async def _wait(self, proc: _Watched, ready: asyncio.Future[None]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while not ready.done():
            if proc.exited():
                raise ProblemError(500, "Restart failed",
                                   f"the new orchd (pid {proc.pid}) exited before it was "
                                   "ready; this one keeps serving (see the log)")
            if time.monotonic() > deadline:
                proc.kill()
                raise ProblemError(500, "Restart failed",
                                   f"the new orchd (pid {proc.pid}) was not ready within "
                                   f"{self.ready_timeout:g}s and was killed; this one keeps "
                                   "serving")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(ready), 0.05)


# The successor is started through a short-lived launcher that forks it and exits, so it is
# not this process's child: orphaned at once, it becomes the child of the service manager
# (systemd is process 1, or a user manager is the subreaper) or of init. systemd then treats
# the MAINPID= this process sends as its own child, not as an "alien" process it can neither
# wait for nor reap: `systemctl stop` sends SIGTERM and waits for the drain (whatever the
# KillMode and the cgroup layout), and the exit status is the service's.
_LAUNCHER = """\
import os, sys
out = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(out)
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        sys.stderr.write(f"orchd: cannot start {sys.argv[2]}: {exc.strerror}\\n")
        os._exit(127)
os.write(out, str(pid).encode())
"""
LAUNCH_TIMEOUT = 10.0


async def _launch(argv: list[str], fds: tuple[int, ...], env: dict[str, str]) -> int:
    """Start ``argv`` (keeping ``fds``) as an orphan; its pid."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            launcher = subprocess.Popen(
                [argv[0], "-I", "-S", "-c", _LAUNCHER, str(write_end), *argv],
                pass_fds=(*fds, write_end), env=env)
        except OSError as exc:
            raise ProblemError(500, "Restart failed",
                               f"cannot start {argv[0]}: {exc.strerror}") from None
        os.close(write_end)
        write_end = -1
        try:
            code = await asyncio.to_thread(launcher.wait, LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            launcher.kill()
            await asyncio.to_thread(launcher.wait)
            code = -1
        text = os.read(read_end, 64).decode() if code == 0 else ""
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if not text.isdigit():
        raise ProblemError(500, "Restart failed",
                           f"cannot start {argv[0]}: the launcher exited with status {code}")
    return int(text)


class _Watched:
    """A process that is not this one's child: whether it exited (a pidfd, where the kernel
    has them), and a kill that cannot reach another process that took its pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self.pidfd = os.pidfd_open(pid)

    def __enter__(self) -> _Watched:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def exited(self) -> bool:
        if self.pidfd is not None:
            return bool(select.select([self.pidfd], [], [], 0)[0])
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")  # exited, not yet reaped

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)


_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _read_notify(sock: socket.socket, pid: int, ready: asyncio.Future[None]) -> None:
    while True:
        try:
            data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(_CRED.size))
        except (BlockingIOError, InterruptedError):
            return
        sender = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender = _CRED.unpack(payload[:_CRED.size])[0]
        if sender != pid:
            continue
        fields = dict(line.partition("=")[::2] for line in data.decode(errors="replace")
                      .splitlines())
        if fields.get("STATUS"):
            server_logger.info("restart: pid %d: %s", pid, fields["STATUS"])
        if fields.get("READY") == "1" and not ready.done():
            ready.set_result(None)
