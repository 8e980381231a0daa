"""Graceful stop against a real orchd: readiness turns 503 first, nothing new is accepted, what
is in flight finishes (up to ``shutdown_timeout``), the socket is removed, exit 0; a second
SIGINT cuts what is left."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
import pytest

from tests.integration.lifecycle import control, lifecycle_app, wait_exit
from tests.support import async_wait_until, base_config


async def tcp_refused(daemon: Any) -> bool:
    """A new connection to the public port is refused."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def start_slow_request(http: aiohttp.ClientSession, daemon: Any, up: Any
                             ) -> asyncio.Task[aiohttp.ClientResponse]:
    """A request through orchd that waits at the upstream until released."""
    request = asyncio.create_task(http.get(f"{daemon.url}/orchestrator/slow/slow"))

    async def reached_upstream() -> bool:
        return any(r.path == "/slow" for r in up.requests)
    await async_wait_until(reached_upstream, what="the slow request to reach the upstream")
    return request


@pytest.fixture
async def slow_upstream(upstream_factory):
    release = asyncio.Event()
    up = await upstream_factory(lifecycle_app(release))
    yield up, release
    release.set()


async def test_sigterm_lets_a_slow_request_finish(orchd_factory, slow_upstream, http):
    up, release = slow_upstream
    daemon = orchd_factory(base_config({"name": "slow", "url": up.url},
                                       server={"shutdown_timeout": 30}))
    request = await start_slow_request(http, daemon, up)

    daemon.signal(signal.SIGTERM)

    # Readiness says "stopping" (asked over the control socket, which answers while
    # draining) and the public port takes no new connection.
    async def not_ready() -> Any:
        status, body = await control(daemon, "GET", "/health/ready")
        return status == 503 and body["status"] == "stopping"
    await async_wait_until(not_ready, what="/health/ready to turn 503")
    assert await tcp_refused(daemon)
    assert daemon.proc.poll() is None, "orchd exited with a request in flight"

    release.set()
    resp = await request
    async with resp:
        assert resp.status == 200
        assert await resp.text() == "slow and complete"
    assert await wait_exit(daemon) == 0
    assert not daemon.socket.exists()
    log = daemon.log()
    assert "stopping: draining" in log and "stopped" in log


async def test_a_stream_is_cut_after_shutdown_timeout(orchd_factory, slow_upstream, http):
    """``orchctl stop`` (``POST /control/stop``): a stream that never ends gets
    ``shutdown_timeout`` (here 1 s), then the process exits 0 anyway."""
    up, _release = slow_upstream
    daemon = orchd_factory(base_config({"name": "events", "url": up.url},
                                       server={"shutdown_timeout": 1}))
    async with http.get(f"{daemon.url}/orchestrator/events/sse") as resp:
        assert resp.status == 200
        first = await resp.content.readline()
        assert first.startswith(b"data: ")
        status, _ = await control(daemon, "POST", "/control/stop")
        assert status == 202
        received = 0
        with pytest.raises(aiohttp.ClientPayloadError):
            async for line in resp.content:
                received += line.startswith(b"data: ")
        assert received > 0, "the stream stopped at once instead of being drained"
    assert await wait_exit(daemon) == 0
    assert not daemon.socket.exists()


async def test_second_sigint_forces_the_exit(orchd_factory, slow_upstream, http):
    up, _release = slow_upstream  # never released: only a forced stop ends the request
    daemon = orchd_factory(base_config({"name": "slow", "url": up.url},
                                       server={"shutdown_timeout": 300}))
    request = await start_slow_request(http, daemon, up)

    daemon.signal(signal.SIGINT)

    async def draining() -> bool:
        status, _ = await control(daemon, "GET", "/health/ready")
        return status == 503
    await async_wait_until(draining, what="orchd to start draining")
    assert daemon.proc.poll() is None

    daemon.signal(signal.SIGINT)
    assert await wait_exit(daemon) == 0
    with pytest.raises(aiohttp.ClientError):
        resp = await request
        async with resp:
            await resp.read()
    assert not daemon.socket.exists()
    assert "second stop signal" in daemon.log()
