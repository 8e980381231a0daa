"""Real etcd for the tests: members on loopback ports, each with its own data directory.

``EtcdCluster(n)`` starts ``n`` members that form one cluster; ``kill``/``restart`` one of
them, ``cleanup`` stops all and removes their directories. ``TcpRelay`` is a loopback TCP
forwarder that a test can cut and restore, to take one orchd's view of etcd away while
others keep theirs. With CI=true a missing ``etcd`` binary fails the test instead of
skipping it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import IN_CI, fixed_port, short_tmpdir, wait_until

# Short raft timings: a lost leader is replaced within about a second.
RAFT_FLAGS = ("--heartbeat-interval", "50", "--election-timeout", "500")


def etcd_binary() -> str:
    path = shutil.which("etcd") or ("/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK)
                                    else None)
    if path is None:
        message = ("etcd is not installed (Debian package etcd-server; "
                   "`make test` installs it via scripts/system-deps.sh)")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    def __init__(self, size: int = 1) -> None:
        self.binary = etcd_binary()
        self.dir = short_tmpdir()
        self.members = [
            Member(f"m{i}", fixed_port(), fixed_port(), self.dir / f"m{i}.etcd",
                   self.dir / f"m{i}.log")
            for i in range(size)
        ]
        self.token = f"orchd-test-{os.getpid()}-{self.dir.name}"

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    def _command(self, member: Member) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            self.binary, "--name", member.name, "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", initial, "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new", *RAFT_FLAGS,
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
        ]

    def _spawn(self, member: Member) -> None:
        log = open(member.log_path, "ab")  # noqa: SIM115 - the child keeps it
        try:
            member.proc = subprocess.Popen(self._command(member), stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    def start(self, timeout: float = 20.0) -> EtcdCluster:
        for member in self.members:
            self._spawn(member)
        for member in self.members:
            self.wait_healthy(member, timeout)
        return self

    def restart(self, index: int, wait: bool = True, timeout: float = 20.0) -> None:
        member = self.members[index]
        assert not member.running(), f"{member.name} is running"
        self._spawn(member)  # an existing data dir: the --initial-* flags are ignored
        if wait:
            self.wait_healthy(member, timeout)

    def kill(self, index: int) -> None:
        member = self.members[index]
        if member.proc is not None and member.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(member.proc.pid, signal.SIGKILL)
            member.proc.wait(5)
        member.proc = None

    def healthy(self, member: Member) -> bool:
        if member.proc is None or member.proc.poll() is not None:
            raise AssertionError(f"etcd {member.name} exited:\n{self.log(member)}")
        try:
            with urllib.request.urlopen(f"{member.client_url}/health", timeout=1) as resp:
                return bool(json.load(resp).get("health") == "true")
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_healthy(self, member: Member, timeout: float = 20.0) -> None:
        wait_until(lambda: self.healthy(member), timeout, 0.05,
                   what=f"etcd {member.name} to be healthy")

    def log(self, member: Member) -> str:
        try:
            return member.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    # -- direct access, to check what etcd holds

    def call(self, path: str, body: dict[str, Any], member: int | None = None) -> Any:
        members = [self.members[member]] if member is not None else self.members
        last: Exception | None = None
        for m in members:
            if not m.running():
                continue
            request = urllib.request.Request(f"{m.client_url}{path}",
                                             data=json.dumps(body).encode(), method="POST")
            try:
                with urllib.request.urlopen(request, timeout=5) as resp:
                    return json.load(resp)
            except (urllib.error.URLError, OSError) as exc:
                last = exc
        raise AssertionError(f"no etcd member answered {path}: {last!r}")

    def keys(self, prefix: str) -> dict[str, Any]:
        end = bytearray(prefix.encode())
        end[-1] += 1
        data = self.call("/v3/kv/range", {"key": _b64(prefix.encode()),
                                          "range_end": _b64(bytes(end))})
        return {base64.b64decode(kv["key"]).decode():
                json.loads(base64.b64decode(kv.get("value", "")))
                for kv in data.get("kvs", ())}

    def compact(self) -> int:
        revision = int(self.call("/v3/kv/range", {"key": _b64(b"x")})["header"]["revision"])
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def cleanup(self) -> None:
        for index in range(len(self.members)):
            self.kill(index)
        shutil.rmtree(self.dir, ignore_errors=True)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class TcpRelay:
    """A loopback TCP forwarder on a thread of its own (so it keeps forwarding while a test
    blocks); ``cut`` drops every connection and refuses new ones until ``restore``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.open = True
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="tcp-relay")
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpRelay:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer.transport, up_writer.transport)
        self._transports.update(pair)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._transports.difference_update(pair)

    def _abort_all(self) -> None:
        self.open = False
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(5)

    async def _cut(self) -> None:
        self._abort_all()

    def restore(self) -> None:
        self.open = True

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def close() -> None:
            self._abort_all()
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def etcd_config(urls: list[str], *endpoints: dict[str, Any],
                prefix: str = "/orchd-test/") -> dict[str, Any]:
    """An orchd config on the etcd store (health checks off, as tests/support.base_config)."""
    return {
        "log_level": "INFO",
        "health_check": {"enabled": False},
        "endpoints": list(endpoints),
        "registry": {"store": "etcd", "etcd": {"endpoints": urls, "prefix": prefix}},
    }
