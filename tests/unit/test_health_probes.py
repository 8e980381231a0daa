"""The health checker's probes in process, against real servers on 127.0.0.1: kept
connections, the verdict and the reason each kind of failure shows in ``error_message``."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from orchd.breaker import CircuitBreaker
from orchd.events import EventBus
from orchd.health import PROBE_BODY_LIMIT, HealthChecker, probe_url
from orchd.model import BreakerSettings, HealthSettings, UpstreamTls
from orchd.target import HEALTHY, UNHEALTHY, Target
from tests.support import free_port
from tests.tls_support import CA, write_pair

SETTINGS = HealthSettings(interval=0.2, timeout=1.0, healthy_threshold=2,
                          unhealthy_threshold=2)


def target(url: str) -> Target:
    return Target("svc", url, CircuitBreaker(BreakerSettings()))


class Probed:
    """An upstream that records the path and the client's port of every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.status = 200
        self.body = b'{"status": "ok"}'
        self.delay = 0.0
        self.headers: list[dict[str, str]] = []

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            assert request.transport is not None
            self.seen.append((request.path_qs, request.transport.get_extra_info("peername")[1]))
            self.headers.append(dict(request.headers))
            if self.delay:
                await asyncio.sleep(self.delay)
            return web.Response(status=self.status, body=self.body)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    def connections(self) -> int:
        return len({port for _, port in self.seen})


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def checker() -> AsyncIterator[HealthChecker]:
    c = HealthChecker(SETTINGS, EventBus())
    await c.start()
    yield c
    await c.close()


async def test_probes_reuse_a_kept_connection(serve: Any, checker: HealthChecker) -> None:
    up = Probed()
    port = await serve(up.app())
    targets = [target(f"http://127.0.0.1:{port}/api/{i}") for i in range(3)]
    for _ in range(5):
        for t in targets:
            assert await checker.probe(t, probe_url(t, "status"), SETTINGS)
    assert [p for p, _ in up.seen[:3]] == ["/api/0/status", "/api/1/status", "/api/2/status"]
    assert up.connections() == 1  # probes one after another: one connection for all
    assert all(t.health == HEALTHY and t.error_message is None for t in targets)
    assert up.headers[0]["User-Agent"] == "orchd-health-check"
    assert up.headers[0]["Host"] == f"127.0.0.1:{port}"


async def test_concurrent_probes_keep_at_most_one_connection_each(
        serve: Any, checker: HealthChecker) -> None:
    up = Probed()
    up.delay = 0.05
    port = await serve(up.app())
    targets = [target(f"http://127.0.0.1:{port}/{i}") for i in range(4)]
    for _ in range(3):
        results = await asyncio.gather(*(checker.probe(t, probe_url(t, None), SETTINGS)
                                         for t in targets))
        assert all(results)
    assert len(up.seen) == 12 and up.connections() == 4


async def test_the_periodic_loop_probes_every_interval_on_one_connection(
        serve: Any) -> None:
    up = Probed()
    port = await serve(up.app())
    t = target(f"http://127.0.0.1:{port}/api")
    settings = HealthSettings(interval=0.05, timeout=1.0)
    c = HealthChecker(settings, EventBus())
    await c.start()
    try:
        task = asyncio.create_task(c._loop(t, (str(probe_url(t, "/health")), settings, None)))
        for _ in range(200):
            if len(up.seen) >= 5:
                break
            await asyncio.sleep(0.02)
        task.cancel()
    finally:
        await c.close()
    assert len(up.seen) >= 5 and {p for p, _ in up.seen} == {"/health"}
    assert up.connections() == 1


@pytest.mark.parametrize(("status", "ok"), [(200, True), (204, True), (302, True),
                                            (404, False), (503, False)])
async def test_2xx_and_3xx_pass(serve: Any, checker: HealthChecker, status: int,
                                ok: bool) -> None:
    up = Probed()
    up.status = status
    port = await serve(up.app())
    t = target(f"http://127.0.0.1:{port}")
    assert await checker.probe(t, probe_url(t, "/h"), SETTINGS) is ok
    assert t.error_message == (None if ok else f"HTTP {status}")
    assert await checker.probe(t, probe_url(t, "/h"), SETTINGS) is ok
    assert t.health == (HEALTHY if ok else UNHEALTHY)
    assert up.connections() == 1


async def test_a_large_body_is_not_kept_in_memory_nor_its_connection(
        serve: Any, checker: HealthChecker) -> None:
    up = Probed()
    up.body = b"x" * (PROBE_BODY_LIMIT * 4)
    port = await serve(up.app())
    t = target(f"http://127.0.0.1:{port}")
    for _ in range(2):
        assert await checker.probe(t, probe_url(t, "/h"), SETTINGS)
    assert up.connections() == 2  # not read to its end: the connection is closed


async def test_failure_reasons(serve: Any, checker: HealthChecker) -> None:
    dead = target(f"http://127.0.0.1:{free_port()}")
    assert not await checker.probe(dead, probe_url(dead, None), SETTINGS)
    assert dead.error_message == "connect error: Connection refused"

    slow = Probed()
    slow.delay = 2.0
    port = await serve(slow.app())
    t = target(f"http://127.0.0.1:{port}")
    quick = HealthSettings(interval=1.0, timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await checker.probe(t, probe_url(t, None), quick)
    assert t.error_message == "timed out after 0.2s"
    assert loop.time() - started < 1.0


async def test_a_body_that_never_ends_times_out(checker: HealthChecker) -> None:
    done = asyncio.Event()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nx")
        await done.wait()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        t = target(f"http://127.0.0.1:{port}")
        quick = HealthSettings(interval=1.0, timeout=0.3)
        assert not await checker.probe(t, probe_url(t, None), quick)
        assert t.error_message == "timed out after 0.3s"
    finally:
        done.set()
        server.close()
        await server.wait_closed()


async def test_the_address_policy_is_applied_with_the_port(serve: Any) -> None:
    up = Probed()
    port = await serve(up.app())
    asked: list[tuple[str, int]] = []

    def check(ip: str, p: int) -> str | None:
        asked.append((ip, p))
        return f"{ip} port {p} is this orchd's own listening address" if p == port else None

    c = HealthChecker(SETTINGS, EventBus())
    await c.start(check_address=check)
    try:
        t = target(f"http://localhost:{port}")
        assert not await c.probe(t, probe_url(t, "/h"), SETTINGS)
    finally:
        await c.close()
    assert asked and asked[0][1] == port
    assert t.error_message is not None
    assert t.error_message.startswith("connect error: localhost: ")
    assert "own listening address" in t.error_message
    assert up.seen == []


async def test_tls_settings_and_tls_errors(tmp_path: Path, serve: Any,
                                           checker: HealthChecker) -> None:
    ca = CA()
    cert, key = write_pair(tmp_path, "server", ca.issue("backend.internal"))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    up = Probed()
    port = await serve(up.app(), server_ctx)
    url = f"https://127.0.0.1:{port}"

    trusted = target(url)
    tls = UpstreamTls(ca_file=str(ca_file), server_name="backend.internal")
    for _ in range(3):
        assert await checker.probe(trusted, probe_url(trusted, "/h"), SETTINGS, tls)
    assert up.connections() == 1

    untrusted = target(url)
    assert not await checker.probe(untrusted, probe_url(untrusted, "/h"), SETTINGS)
    assert untrusted.error_message is not None
    assert untrusted.error_message.startswith("tls error: ")
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.error_message

    unchecked = target(url)
    assert await checker.probe(unchecked, probe_url(unchecked, "/h"), SETTINGS,
                               UpstreamTls(verify=False))

    gone = target(url)
    missing = UpstreamTls(ca_file=str(tmp_path / "gone.pem"))
    assert not await checker.probe(gone, probe_url(gone, "/h"), SETTINGS, missing)
    assert gone.error_message is not None and gone.error_message.startswith("tls: ")
