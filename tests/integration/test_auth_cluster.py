"""``rate_limit.scope: cluster`` through real orchd instances sharing a real etcd on
loopback: each instance keeps a leased ``instances/`` key, counts the others' through its
watch, and takes rate / live instances; an instance that stops (or dies, and its lease runs
out) gives its share back to the others, one that joins takes its share.

The limits here are slow (10 tokens per 10 s) so that what a burst of requests gets is the
bucket's depth: a few requests' worth of refill at most, whatever the machine's speed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from orchd.store.etcd import INSTANCE_TTL, EtcdStore
from tests.etcd_support import etcd_config
from tests.support import Orchd, async_wait_until

PREFIX = "/orchd-cluster/"
TRIES = 30  # requests in one burst: more than any bucket here holds


def limited(url: str, scope: str = "cluster") -> dict[str, Any]:
    return {"name": "api", "url": url, "methods": ["GET"],
            "rate_limit": {"rate": 10, "per": 10, "burst": 10, "key": "header:X-Tenant",
                           "scope": scope}}


async def burst(http: aiohttp.ClientSession, daemon: Orchd, tenant: str) -> tuple[int, str]:
    """Send ``TRIES`` requests one after another as ``tenant`` (a bucket of its own);
    answer how many passed and the last ``RateLimit-Limit``."""
    passed, limit = 0, ""
    for _ in range(TRIES):
        async with http.get(f"{daemon.url}/orchestrator/api/x",
                            headers={"X-Tenant": tenant}) as resp:
            await resp.read()
            assert resp.status in (200, 429), resp.status
            passed += resp.status == 200
            limit = resp.headers.get("RateLimit-Limit", "")
    return passed, limit


async def instances(http: aiohttp.ClientSession, daemon: Orchd) -> int:
    async with http.get(f"{daemon.url}/health/status") as resp:
        count: int | None = (await resp.json())["auth"].get("instances")
    assert count is not None, "no auth.instances: the guards were not given the store's count"
    return count


async def wait_instances(http: aiohttp.ClientSession, daemon: Orchd, count: int,
                         timeout: float = 10.0) -> None:
    async def check() -> bool:
        return await instances(http, daemon) == count

    await async_wait_until(check, timeout, 0.05,
                           what=f"{daemon.url} to count {count} instance(s)")


async def test_two_instances_share_a_cluster_limit_and_rescale_when_one_leaves(
        etcd_factory, orchd_factory, upstream_factory, http) -> None:
    etcd = etcd_factory(1)
    up = await upstream_factory()
    config = etcd_config(etcd.client_urls, limited(up.url), prefix=PREFIX)
    a, b = orchd_factory(config), orchd_factory(config)
    await wait_instances(http, a, 2)
    await wait_instances(http, b, 2)
    assert len(etcd.keys(PREFIX + "instances/")) == 2

    # Each takes half: 5 of the 10 tokens, and says so.
    for daemon, tenant in ((a, "t1"), (b, "t1"), (a, "t2")):
        passed, limit = await burst(http, daemon, tenant)
        assert limit == "5" and 5 <= passed <= 6, (daemon.url, tenant, passed, limit)

    # One leaves (its lease revoked as it stops): the other takes all of it.
    b.stop()
    await wait_instances(http, a, 1)
    assert len(etcd.keys(PREFIX + "instances/")) == 1
    passed, limit = await burst(http, a, "t3")
    assert limit == "10" and 10 <= passed <= 11, (passed, limit)

    # One joins: half again.
    c = orchd_factory(config)
    await wait_instances(http, a, 2)
    await wait_instances(http, c, 2)
    passed, limit = await burst(http, a, "t4")
    assert limit == "5" and 5 <= passed <= 6, (passed, limit)


async def test_a_dead_instance_leaves_when_its_lease_runs_out(
        etcd_factory, orchd_factory, upstream_factory, http) -> None:
    etcd = etcd_factory(1)
    up = await upstream_factory()
    config = etcd_config(etcd.client_urls, limited(up.url),
                         {"name": "own", "url": up.url, "methods": ["GET"],
                          "rate_limit": {"rate": 10, "per": 10}}, prefix=PREFIX)
    a, b = orchd_factory(config), orchd_factory(config)
    await wait_instances(http, a, 2)
    async with http.get(f"{a.url}/orchestrator/own/x") as resp:
        assert resp.headers["RateLimit-Limit"] == "10"  # scope: instance is not shared
    b.kill()  # no goodbye: etcd drops its key when the lease runs out
    await wait_instances(http, a, 1, timeout=INSTANCE_TTL + 10.0)
    passed, limit = await burst(http, a, "t1")
    assert limit == "10" and 10 <= passed <= 11, (passed, limit)


async def test_the_store_counts_instances_through_leases(etcd_factory) -> None:
    """The store on its own: each keeps its key alive and follows the others'."""
    etcd = etcd_factory(1)
    stores = [EtcdStore(etcd.client_urls, PREFIX) for _ in range(3)]
    followers: list[asyncio.Task[None]] = []

    async def follow(store: EtcdStore) -> None:
        async for _ in store.watch():
            pass

    async def counts() -> list[int]:
        return [s.instances.count for s in stores]

    try:
        for store in stores:
            await store.load()
            followers.append(asyncio.create_task(follow(store)))
        await async_wait_until(lambda: _all(counts, 3), 10.0, what="3 instances each")
        keys = etcd.keys(PREFIX + "instances/")
        assert sorted(k.rsplit("/", 1)[1] for k in keys) == sorted(
            s.instances.own for s in stores)
        assert all(set(v) == {"host", "pid", "started"} for v in keys.values())
        started = time.monotonic()
        await stores.pop().close()  # revokes its lease: the others see it at once
        await async_wait_until(lambda: _all(counts, 2), 5.0, what="2 instances each")
        # A renewal outlasts the TTL: the key is still there after it.
        await asyncio.sleep(max(0.0, INSTANCE_TTL + 1.0 - (time.monotonic() - started)))
        assert len(etcd.keys(PREFIX + "instances/")) == 2
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        for store in stores:
            await store.close()


async def _all(counts: Any, n: int) -> bool:
    return all(c == n for c in await counts())
