"""Test support: a real orchd in a subprocess, real upstream servers, polling helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fixed_port() -> int:
    """A free port below the kernel's ephemeral range: outgoing connections are never given
    it, so a server stopped and started again on it (an etcd member) finds it still free."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(low, 10001))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


@dataclass
class SchemathesisRun:
    returncode: int
    output: str
    generated: int | None  # test cases, from its summary line
    passed: int | None


def run_schemathesis(url: str, token: str, report_dir: Path, *options: str,
                     timeout: float) -> SchemathesisRun:
    """schemathesis' CLI against the OpenAPI document at ``url``: the admin routes only
    (not the proxy, event stream, control or docs), with ``token``, one worker, no example
    database. ``options`` pick the checks, phases, examples and seed. Without schemathesis
    the test fails in CI and is skipped elsewhere."""
    import pytest

    st = Path(sys.executable).parent / "st"
    if not st.exists():
        if IN_CI:
            pytest.fail("schemathesis is not installed (pip install -e '.[test]')")
        pytest.skip("schemathesis is not installed")
    cmd = [str(st), "run", url, *options, "--workers", "1", "--generation-database", "none",
           "--request-timeout", "10", "--exclude-path-regex",
           r"^/(orchestrator|events|control|docs)", "-H", f"Authorization: Bearer {token}",
           "--no-color", "--report-dir", str(report_dir)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    proc = subprocess.run(cmd, cwd=report_dir, env=env, capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    counts = re.search(r"(\d+) generated, (\d+) passed", out)
    return SchemathesisRun(proc.returncode, out,
                           int(counts.group(1)) if counts else None,
                           int(counts.group(2)) if counts else None)


def short_tmpdir() -> Path:
    """A directory with a short path: Unix socket paths are limited to 107 bytes."""
    return Path(tempfile.mkdtemp(prefix="orch", dir="/tmp"))


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def async_wait_until(predicate: Callable[[], Awaitable[Any]], timeout: float = 10.0,
                           interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Upstream:
    """A real aiohttp server on 127.0.0.1 with an ephemeral port; counts its requests."""

    app: web.Application
    runner: web.AppRunner | None = None
    port: int = 0
    requests: list[web.Request] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> Upstream:
        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            self.requests.append(request)
            return await handler(request)

        self.app.middlewares.append(count)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def echo_app() -> web.Application:
    """An upstream that answers what it received as JSON, at any path and method."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({
            "method": request.method,
            "path": request.raw_path.split("?", 1)[0],
            "raw_path": request.raw_path,
            "query": [[k, v] for k, v in request.query.items()],
            "headers": {k: v for k, v in request.headers.items()},
            "header_list": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("latin-1"),
            "body_length": len(body),
        })

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


class Orchd:
    """A real orchd process on an ephemeral port, with its own state dir and socket."""

    def __init__(self, config: dict[str, Any] | str, workdir: Path | None = None,
                 env: dict[str, str] | None = None, extra_args: list[str] | None = None,
                 port: int | None = None, cwd: Path | None = None) -> None:
        self.dir = workdir or short_tmpdir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "orchestrator.yaml"
        self.write_config(config)
        self.port = port or free_port()
        self.socket = self.dir / "orchd.sock"
        self.state_dir = self.dir / "state"
        self.log_path = self.dir / "orchd.log"
        self.env = env or {}
        self.extra_args = extra_args or []
        # A working directory of its own: orchd runs as an operator runs it, the installed
        # script (``python -m`` would put the working directory on its module path).
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def command(self) -> list[str]:
        program = ([str(Path(sys.executable).parent / "orchd")] if self.cwd is not None
                   else [sys.executable, "-m", "orchd"])
        return [*program, "--config", str(self.config_path),
                "--port", str(self.port), "--state-dir", str(self.state_dir),
                "--control-socket", str(self.socket), *self.extra_args]

    def start(self, wait: bool = True, timeout: float = 20.0) -> Orchd:
        env = {**os.environ, **self.env}
        env.pop("CONFIG_PATH", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, cwd=str(self.cwd or ROOT), start_new_session=True)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        import urllib.error
        import urllib.request

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"orchd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/ready", timeout=1) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_until(ready, timeout, what="orchd to be ready")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self._log.close()
        self.proc = None
        return proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def cleanup(self) -> None:
        self.kill()
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def base_config(*endpoints: dict[str, Any], **blocks: Any) -> dict[str, Any]:
    """A config with health checks slowed down (tests probe on demand) and given endpoints."""
    cfg: dict[str, Any] = {
        "log_level": "INFO",
        "health_check": {"enabled": False},
        "endpoints": list(endpoints),
    }
    cfg.update(blocks)
    return cfg


async def get_json(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with session.get(url, **kw) as r:
        return r.status, await r.json(content_type=None)
