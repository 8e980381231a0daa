"""Zero-downtime restart of orchd itself (``orchctl restart``), against a real orchd under a
bounded client loop: no connection refused, no request failed, and another pid answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.lifecycle import control
from tests.support import ROOT, async_wait_until, base_config, free_port


async def orchctl(daemon: Any, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchctl", "--socket", str(daemon.socket), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(ROOT))
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def successors():
    """Pids of successors started by a restart: orchd's children, not ours; killed after."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Load:
    """A bounded client loop: ``concurrency`` workers, at most ``cap`` requests."""

    def __init__(self, url: str, concurrency: int = 10, cap: int = 20000,
                 seconds: float = 60.0) -> None:
        self.url, self.concurrency, self.cap = url, concurrency, cap
        self.deadline = time.monotonic() + seconds
        self.ok = 0
        self.refused = 0
        self.failed: list[str] = []
        self.stop = asyncio.Event()

    @property
    def total(self) -> int:
        return self.ok + self.refused + len(self.failed)

    async def run(self) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20)) as session:
            await asyncio.gather(*(self._worker(session) for _ in range(self.concurrency)))

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while (not self.stop.is_set() and self.total < self.cap
               and time.monotonic() < self.deadline):
            try:
                async with session.get(self.url) as r:
                    await r.read()
                    if r.status == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"HTTP {r.status}")
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, ConnectionRefusedError):
                    self.refused += 1
                else:
                    self.failed.append(repr(exc))
            except aiohttp.ClientError as exc:
                self.failed.append(repr(exc))


async def restart_under_load(daemon: Any, load: Load, successors: list[int]) -> int:
    """``orchctl restart`` while ``load`` runs: the old process drains and exits 0 while the
    loop goes on, and the new one serves 200 more requests; the new pid (also appended to
    ``successors``, which are not ours to reap)."""
    old_pid = daemon.proc.pid
    runner = asyncio.create_task(load.run())
    try:
        async def warmed() -> bool:
            return load.ok >= 200
        await async_wait_until(warmed, 30, what="the load to be running")

        code, out, err = await orchctl(daemon, "--json", "restart")
        assert code == 0, (out, err, daemon.log()[-3000:])
        answer = json.loads(out)
        new_pid: int = answer["pid"]
        successors.append(new_pid)
        assert new_pid != old_pid and answer["old_pid"] == old_pid

        async def old_gone() -> bool:
            return daemon.proc.poll() is not None
        await async_wait_until(old_gone, 30, what="the old orchd to exit")
        assert daemon.proc.returncode == 0, daemon.log()[-3000:]
        after = load.ok

        async def served_by_new() -> bool:
            return load.ok >= after + 200
        await async_wait_until(served_by_new, 30, what="requests served by the new orchd")
    finally:
        load.stop.set()
        await runner
    return new_pid


async def test_orchctl_restart_under_load(orchd_factory, upstream_factory, http, successors):
    up = await upstream_factory()
    daemon = orchd_factory(base_config({"name": "svc", "url": up.url}))
    async with http.post(f"{daemon.url}/registry/endpoints",
                         json={"config": {"name": "durable", "url": up.url}}) as r:
        assert r.status == 201
    _, info = await control(daemon, "GET", "/control/info")
    old_pid = info["pid"]
    assert old_pid == daemon.proc.pid

    load = Load(f"{daemon.url}/orchestrator/svc/ping")
    new_pid = await restart_under_load(daemon, load, successors)

    assert load.refused == 0, f"{load.refused} connections refused"
    assert load.failed == [], load.failed[:10]
    assert load.total >= 400

    # The new process answers on the same socket and port, owns the store (a write works,
    # the registration made before the restart is there) and has its own pid.
    _, info = await control(daemon, "GET", "/control/info")
    assert info["pid"] == new_pid and alive(new_pid)
    async with http.get(f"{daemon.url}/registry/endpoints/durable") as r:
        assert r.status == 200
    async with http.post(f"{daemon.url}/registry/endpoints",
                         json={"config": {"name": "after", "url": up.url}}) as r:
        assert r.status == 201, await r.text()
    async with http.get(f"{daemon.url}/health/ready") as r:
        assert r.status == 200
    log = daemon.log()
    assert f"pid {new_pid} is ready" in log and "taken over" in log

    # It stops like any orchd: socket removed.
    os.kill(new_pid, signal.SIGTERM)

    async def new_gone() -> bool:
        return not alive(new_pid)
    await async_wait_until(new_gone, 30, what="the new orchd to exit")
    assert not daemon.socket.exists()


async def test_a_restart_keeps_the_targets_health(orchd_factory, upstream_factory, http,
                                                  successors):
    up = await upstream_factory()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = base_config({"name": "svc", "urls": [up.url, dead]},
                         health_check={"enabled": True, "interval": 3600,
                                       "unhealthy_threshold": 1, "healthy_threshold": 1})
    daemon = orchd_factory(config)
    async with http.post(f"{daemon.url}/health/check/svc") as r:
        assert r.status == 200, await r.text()
    async with http.get(f"{daemon.url}/health/endpoints/svc") as r:
        before = {t["url"]: t for t in (await r.json())["targets"]}
    assert before[dead]["health"] == "unhealthy" and before[up.url]["health"] == "healthy"

    status, answer = await control(daemon, "POST", "/control/restart")
    assert status == 200, answer
    successors.append(answer["pid"])

    async def successor_answers() -> bool:
        _, info = await control(daemon, "GET", "/control/info")
        return bool(info["pid"] == answer["pid"])
    await async_wait_until(successor_answers, 30, what="the successor to answer alone")
    # It starts with its predecessor's verdicts, not "unknown", and keeps their rhythm: the
    # dead target gets no request, and is not probed again before its interval is over.
    async with aiohttp.ClientSession() as fresh:  # no connection kept to the old process
        async with fresh.get(f"{daemon.url}/health/endpoints/svc") as r:
            after = {t["url"]: t for t in (await r.json())["targets"]}
        assert after[dead]["health"] == "unhealthy", after
        assert after[dead]["error_message"] == before[dead]["error_message"]
        assert after[dead]["last_check_time"] == before[dead]["last_check_time"]
        assert after[up.url]["health"] == "healthy", after
        for _ in range(10):
            async with fresh.get(f"{daemon.url}/orchestrator/svc/x") as r:
                assert r.status == 200
    assert "took over the health of 2 targets" in daemon.log()


async def test_restart_onto_an_invalid_file_is_refused(orchd_factory, upstream_factory, http,
                                                        successors):
    up = await upstream_factory()
    daemon = orchd_factory(base_config({"name": "svc", "url": up.url}))
    daemon.config_path.write_text("endpoints:\n  - name: svc\n    url: htp://nowhere\n")
    status, problem = await control(daemon, "POST", "/control/restart")
    assert status == 422, problem
    assert "endpoints[0].url (line 3)" in problem["detail"]
    code, out, err = await orchctl(daemon, "restart")
    assert code == 1 and "line 3" in out + err, (out, err)

    # The running orchd is untouched: same pid, still serving, still writable.
    _, info = await control(daemon, "GET", "/control/info")
    assert info["pid"] == daemon.proc.pid
    async with http.get(f"{daemon.url}/orchestrator/svc/x") as r:
        assert r.status == 200
    async with http.post(f"{daemon.url}/registry/endpoints",
                         json={"config": {"name": "still", "url": up.url}}) as r:
        assert r.status == 201


class ServiceManager:
    """systemd's end of sd_notify: collects (sender pid, message) pairs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[int, str]] = []

    def _drain(self) -> None:
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return
            pid = next(struct.unpack("3i", d[:12])[0] for level, kind, d in anc
                       if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
            self.messages.extend((pid, line) for line in data.decode().splitlines())

    async def wait_for(self, pid: int, line: str) -> None:
        async def received() -> bool:
            self._drain()
            return (pid, line) in self.messages
        await async_wait_until(received, 30, what=f"{line} from pid {pid}")


async def test_the_successor_becomes_the_services_main_process(orchd_factory, successors,
                                                               http):
    daemon = orchd_factory(base_config(), start=False)
    manager = ServiceManager(daemon.dir / "notify.sock")
    daemon.env["NOTIFY_SOCKET"] = str(manager.path)
    try:
        daemon.start()
        old = daemon.proc.pid
        await manager.wait_for(old, "READY=1")

        # SIGUSR2 restarts like orchctl restart. The old main process hands the service
        # over (MAINPID=); the successor's own READY went to the old process, and its later
        # notifications come to the service manager.
        daemon.signal(signal.SIGUSR2)

        async def handed_over() -> int | None:
            manager._drain()
            return next((int(m[8:]) for pid, m in manager.messages
                         if pid == old and m.startswith("MAINPID=") and m != f"MAINPID={old}"),
                        None)
        new = await async_wait_until(handed_over, 60, what="MAINPID= of the successor")
        successors.append(new)

        async def answered_by_new() -> bool:
            _, info = await control(daemon, "GET", "/control/info")
            return bool(info["pid"] == new)
        await async_wait_until(answered_by_new, 30, what="the successor on the control socket")
        os.kill(new, signal.SIGHUP)
        await manager.wait_for(new, "RELOADING=1")
        await manager.wait_for(new, "READY=1")
        assert daemon.proc.wait(30) == 0
        assert (old, "STOPPING=1") not in manager.messages, "the old process said STOPPING"
        async with http.get(f"{daemon.url}/health/ready") as r:
            assert r.status == 200
        os.kill(new, signal.SIGTERM)
        await manager.wait_for(new, "STOPPING=1")
    finally:
        manager.sock.close()
