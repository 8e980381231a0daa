"""Several orchd processes sharing the public port (``server.reuse_port``), each with its own
control socket and state directory: the kernel spreads new connections across them."""

from __future__ import annotations

import re

import aiohttp

from tests.integration.lifecycle import wait_exit
from tests.integration.rawhttp import endpoint
from tests.support import async_wait_until, base_config, free_port


async def requests_served(daemon) -> int:
    """``orchd_requests_total`` for endpoint svc, from this process's own control socket."""
    connector = aiohttp.UnixConnector(str(daemon.socket))
    async with (aiohttp.ClientSession(connector=connector) as session,
                session.get("http://orchd/metrics") as r):
        text = await r.text()
    return sum(int(float(v)) for v in
               re.findall(r'^orchd_requests_total\{[^}]*endpoint="svc"[^}]*\} (\S+)$', text, re.M))


async def test_processes_share_the_port(orchd_factory, upstream_factory):
    up = await upstream_factory()
    port = free_port()
    config = base_config(endpoint("svc", up.url), server={"reuse_port": True})
    a = orchd_factory(config, port=port)
    b = orchd_factory(config, port=port)  # its readiness check may be answered by a

    async def both_ready() -> bool:
        return all("ready (pid" in d.log() and d.socket.exists() for d in (a, b))
    await async_wait_until(both_ready, 20, what="both processes to be ready")
    assert "not seen by the others on the port" in a.log()  # the file store: per process

    # A new connection per request: each goes to one of the two processes.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(64):
            async with http.get(f"http://127.0.0.1:{port}/orchestrator/svc/x") as r:
                assert r.status == 200
        served = [await requests_served(a), await requests_served(b)]
        assert sum(served) == 64 and min(served) > 0, served

        # Without reuse_port the port is taken: a third process refuses to start.
        c = orchd_factory(base_config(endpoint("svc", up.url)), port=port, start=False)
        c.start(wait=False)
        assert await wait_exit(c) == 3
        assert "cannot listen on" in c.log()

        # One process stopping leaves the port to the other.
        a.stop()
        for _ in range(16):
            async with http.get(f"http://127.0.0.1:{port}/orchestrator/svc/x") as r:
                assert r.status == 200
    assert await requests_served(b) == served[1] + 16
