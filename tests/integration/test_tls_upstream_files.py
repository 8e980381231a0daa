"""An endpoint's upstream ``tls`` files replaced on disk at the same path (a CA bundle, a
client certificate) take effect without a change to the endpoint: at a reload (POST
/config/reload, SIGHUP), which also reports a file that does not load while the previous
one stays in use, and at a new connection after the change without any reload."""

from __future__ import annotations

import os
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.integration.test_tls import close_upstream
from tests.support import Orchd, async_wait_until, base_config, free_port
from tests.tls_support import CA, write_pair

UPSTREAM_NAME = "backend.internal"


def replace(path: Path, data: bytes) -> None:
    """Write ``path`` by atomic rename, as deploy tools and cert-manager do."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[tuple[web.AppRunner, int, CA]]:
    """An HTTPS upstream whose certificate a CA made here issued; (runner, port, that CA)."""
    issuer = CA("upstream CA")
    cert, key = write_pair(tmp_path / "up", "upstream", issuer.issue(UPSTREAM_NAME))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(cert), str(key))

    async def hello(_: web.Request) -> web.Response:
        # A new connection (a new handshake) for every request: none outlives a change.
        return web.Response(text="hello over tls", headers={"Connection": "close"})

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
    yield runner, port, issuer
    await runner.cleanup()


def gateway(tmp_path: Path, port: int, ca_file: Path) -> Orchd:
    """orchd with one endpoint that trusts ``ca_file`` only (health checks off: no
    connection is made but the test's; the breaker does not open on the refusals)."""
    return Orchd(base_config({"name": "secure", "url": f"https://127.0.0.1:{port}",
                              "tls": {"ca_file": str(ca_file),
                                      "server_name": UPSTREAM_NAME}},
                             circuit_breaker={"failure_threshold": 1000}),
                 workdir=tmp_path / "gw")


async def status_of(http: aiohttp.ClientSession, daemon: Orchd) -> int:
    async with http.get(f"{daemon.url}/orchestrator/secure/hello") as r:
        await r.read()
        return r.status


async def test_a_replaced_ca_file_is_reread_at_a_reload(
        tmp_path: Path, upstream: tuple[web.AppRunner, int, Any]) -> None:
    runner, port, issuer = upstream
    ca_file = tmp_path / "trust.pem"
    replace(ca_file, CA("some other CA").pem)  # not the upstream's issuer
    daemon = gateway(tmp_path, port, ca_file).start()
    try:
        async with aiohttp.ClientSession() as http:
            assert await status_of(http, daemon) == 502
            replace(ca_file, issuer.pem)
            async with http.post(f"{daemon.url}/config/reload") as r:
                answer = await r.json()
                assert r.status == 200 and answer["ok"], answer
            # The reload reread the bundle before it answered.
            assert "upstream tls files reread" in daemon.log()
            assert await status_of(http, daemon) == 200

            # A bundle that does not load: the reload says which file, and the one in use
            # stays (the upstream stays trusted).
            replace(ca_file, b"-----BEGIN CERTIFICATE-----\nnot base64\n")
            async with http.post(f"{daemon.url}/config/reload") as r:
                answer = await r.json()
            assert r.status == 422 and not answer["ok"], answer
            assert answer["errors"][0]["path"] == "endpoints[0].tls.ca_file", answer
            assert str(ca_file) in answer["errors"][0]["message"], answer
            assert await status_of(http, daemon) == 200

            # Back to a bundle without the issuer, on SIGHUP: the upstream is refused again.
            replace(ca_file, CA("a third CA").pem)
            daemon.signal(signal.SIGHUP)

            async def refused() -> bool:
                return await status_of(http, daemon) == 502

            await async_wait_until(refused, 10, what="the new bundle to be in use")
    finally:
        await close_upstream(runner, daemon)
        daemon.cleanup()


async def test_a_replaced_ca_file_is_used_by_new_connections_without_a_reload(
        tmp_path: Path, upstream: tuple[web.AppRunner, int, Any]) -> None:
    runner, port, issuer = upstream
    ca_file = tmp_path / "trust.pem"
    replace(ca_file, CA("some other CA").pem)
    daemon = gateway(tmp_path, port, ca_file).start()
    try:
        async with aiohttp.ClientSession() as http:
            assert await status_of(http, daemon) == 502
            replace(ca_file, issuer.pem)

            async def trusted() -> bool:
                return await status_of(http, daemon) == 200

            # A new connection looks at the files at most once a second.
            await async_wait_until(trusted, 10, interval=0.2, what="the new bundle in use")
            assert "upstream tls files reread" in daemon.log()
            assert "reload (" not in daemon.log()  # no reload did it
    finally:
        await close_upstream(runner, daemon)
        daemon.cleanup()
