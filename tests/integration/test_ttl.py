"""Registrations with a ttl: alive while heartbeats come, gone from every instance after."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import aiohttp

from tests.etcd_support import etcd_config
from tests.support import ROOT, Orchd, async_wait_until, base_config

TTL = 1  # seconds (the schema's minimum)


async def post(http: aiohttp.ClientSession, url: str, body: Any = None) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def routable(http: aiohttp.ClientSession, daemon: Orchd, name: str) -> bool:
    async with http.get(f"{daemon.url}/orchestrator/{name}/x") as resp:
        return resp.status == 200


async def heartbeats_for(http: aiohttp.ClientSession, daemons: list[Orchd], name: str,
                         seconds: float, every: float = 0.25) -> None:
    """Send heartbeats (to each instance in turn) for ``seconds``, checking that the
    registration stays routable everywhere meanwhile."""
    deadline = time.monotonic() + seconds
    for i in range(int(seconds / every) + 1):
        daemon = daemons[i % len(daemons)]
        status, body = await post(http, f"{daemon.url}/registry/endpoints/{name}/heartbeat")
        assert status == 200, body
        assert body["endpoint_id"] == name and body["ttl"] == TTL
        for d in daemons:
            assert await routable(http, d, name), f"{name} vanished from {d.url}"
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(every)


async def wait_gone(http: aiohttp.ClientSession, daemon: Orchd, name: str) -> None:
    async def gone() -> bool:
        async with http.get(f"{daemon.url}/registry/endpoints/{name}") as resp:
            return resp.status == 404 and not await routable(http, daemon, name)

    await async_wait_until(gone, 10, 0.05, what=f"{name} to expire on {daemon.url}")


async def test_lease_expires_on_every_instance_when_heartbeats_stop(
        etcd_factory, orchd_factory, upstream_factory, http) -> None:
    etcd = etcd_factory(1)
    up = await upstream_factory()
    config = etcd_config(etcd.client_urls)
    a, b = orchd_factory(config), orchd_factory(config)

    status, body = await post(http, f"{a.url}/registry/endpoints",
                              {"config": {"name": "worker", "url": up.url, "ttl": TTL}})
    assert status == 201, body
    await async_wait_until(lambda: routable(http, b, "worker"), 5, 0.02, what="worker on B")
    key = "/orchd-test/endpoints/worker"
    assert etcd.keys(key)[key]["config"]["ttl"] == TTL

    # heartbeats on either instance keep it alive well past its ttl
    await heartbeats_for(http, [a, b], "worker", 2.5 * TTL)

    # they stop: it expires on both instances and in etcd
    for daemon in (a, b):
        await wait_gone(http, daemon, "worker")
    assert etcd.keys(key) == {}
    status, body = await post(http, f"{b.url}/registry/endpoints/worker/heartbeat")
    assert status == 404, body

    # the name is free again; a registration without ttl does not expire
    status, body = await post(http, f"{b.url}/registry/endpoints",
                              {"config": {"name": "worker", "url": up.url}})
    assert status == 201, body
    status, body = await post(http, f"{a.url}/registry/endpoints/worker/heartbeat")
    assert status in (404, 409), body  # 404 until A has seen it, then 409: no ttl
    await async_wait_until(lambda: routable(http, a, "worker"), 5, 0.02, what="worker on A")
    status, body = await post(http, f"{a.url}/registry/endpoints/worker/heartbeat")
    assert status == 409, body


async def test_ttl_with_the_file_store(orchd_factory, upstream_factory, http) -> None:
    up = await upstream_factory()
    daemon = orchd_factory(base_config())
    store_file = daemon.state_dir / "registry.json"

    add = subprocess.run(
        [sys.executable, "-m", "orchctl", "--socket", str(daemon.socket), "--json",
         "endpoints", "add", "job", up.url, "--ttl", str(TTL)],
        capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert add.returncode == 0, add.stderr
    async with http.get(f"{daemon.url}/registry/endpoints/job") as resp:
        assert (await resp.json())["config"]["ttl"] == TTL
    status, body = await post(http, f"{daemon.url}/registry/endpoints",
                              {"config": {"name": "steady", "url": up.url}})
    assert status == 201, body
    assert "job" in json.loads(store_file.read_text())["endpoints"]

    await heartbeats_for(http, [daemon], "job", 2.5 * TTL)

    await wait_gone(http, daemon, "job")
    assert set(json.loads(store_file.read_text())["endpoints"]) == {"steady"}
    status, body = await post(http, f"{daemon.url}/registry/endpoints/job/heartbeat")
    assert status == 404, body
    status, body = await post(http, f"{daemon.url}/registry/endpoints/steady/heartbeat")
    assert status == 409, body
    assert body["title"] == "Endpoint has no ttl"

    # after a restart a ttl registration gets a whole ttl from the start to send its next
    # heartbeat, then expires as before
    status, body = await post(http, f"{daemon.url}/registry/endpoints",
                              {"config": {"name": "job", "url": up.url, "ttl": 3}})
    assert status == 201, body
    daemon.stop()
    daemon.start()
    assert await routable(http, daemon, "job")
    status, body = await post(http, f"{daemon.url}/registry/endpoints/job/heartbeat")
    assert status == 200, body
    assert body["expires_in"] == 3
    await wait_gone(http, daemon, "job")
    assert await routable(http, daemon, "steady")
