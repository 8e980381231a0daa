"""Several orchd instances sharing one registry through a real etcd on loopback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from orchd.errors import ProblemError
from orchd.store import Record, StoreEvent
from orchd.store.etcd import EtcdStore
from tests.etcd_support import TcpRelay, etcd_config
from tests.support import Orchd, async_wait_until

PROPAGATION = 1.0  # seconds: a change made on one instance is routable on the others


def endpoint(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"config": {"name": name, "url": url, "methods": ["GET", "POST"], **extra}}


async def register(http: aiohttp.ClientSession, daemon: Orchd, name: str, url: str,
                   **extra: Any) -> tuple[int, Any]:
    async with http.post(f"{daemon.url}/registry/endpoints",
                         json=endpoint(name, url, **extra)) as resp:
        return resp.status, await resp.json(content_type=None)


async def routed_to(http: aiohttp.ClientSession, daemon: Orchd, name: str) -> str | None:
    """Which upstream port answered a request for ``name`` on ``daemon`` (None: not routed)."""
    async with http.get(f"{daemon.url}/orchestrator/{name}/probe") as resp:
        if resp.status != 200:
            return None
        return str((await resp.json())["headers"]["Host"])


async def wait_routed(http: aiohttp.ClientSession, daemon: Orchd, name: str,
                      host: str | None, timeout: float = PROPAGATION) -> None:
    async def check() -> bool:
        return await routed_to(http, daemon, name) == host

    await async_wait_until(check, timeout, 0.02,
                           what=f"{name} routed to {host} on {daemon.url}")


async def store_status(http: aiohttp.ClientSession, daemon: Orchd) -> dict[str, Any]:
    async with http.get(f"{daemon.url}/health/status") as resp:
        store: dict[str, Any] = (await resp.json())["store"]
        return store


async def wait_store(http: aiohttp.ClientSession, daemon: Orchd, status: str,
                     timeout: float = 15.0) -> None:
    async def check() -> bool:
        return (await store_status(http, daemon))["status"] == status

    await async_wait_until(check, timeout, 0.05, what=f"store {status} on {daemon.url}")


async def register_until_accepted(http: aiohttp.ClientSession, daemon: Orchd, name: str,
                                  url: str, timeout: float = 15.0) -> None:
    """Register, retrying while the store answers 503 (e.g. during a leader election)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = await register(http, daemon, name, url)
        if status == 201:
            return
        assert status == 503, body
        assert time.monotonic() < deadline, f"{name} still refused: {body}"
        await asyncio.sleep(0.1)


async def test_two_instances_share_registrations(etcd_factory, orchd_factory,
                                                 upstream_factory, http) -> None:
    etcd = etcd_factory(1)
    up1, up2 = await upstream_factory(), await upstream_factory()
    host1, host2 = f"127.0.0.1:{up1.port}", f"127.0.0.1:{up2.port}"
    config = etcd_config(etcd.client_urls)
    a, b = orchd_factory(config), orchd_factory(config)

    # register on A: routable on B
    status, body = await register(http, a, "users", up1.url)
    assert status == 201, body
    await wait_routed(http, b, "users", host1)
    async with http.get(f"{b.url}/registry/endpoints/users") as resp:
        assert (await resp.json())["source"] == "api"

    # the name is taken on every instance
    status, body = await register(http, b, "users", up2.url)
    assert status == 409, body

    # update on B: A follows
    async with http.put(f"{b.url}/registry/endpoints/users",
                        json=endpoint("users", up2.url)) as resp:
        assert resp.status == 200, await resp.text()
    await wait_routed(http, a, "users", host2)

    # administrative state travels too
    async with http.put(f"{a.url}/registry/endpoints/users/status",
                        json={"status": "disabled"}) as resp:
        assert resp.status == 200, await resp.text()

    async def disabled_on_b() -> bool:
        async with http.get(f"{b.url}/orchestrator/users/x") as resp:
            return resp.status == 503

    await async_wait_until(disabled_on_b, PROPAGATION, 0.02, what="users disabled on B")
    async with http.put(f"{b.url}/registry/endpoints/users/status",
                        json={"status": "active"}) as resp:
        assert resp.status == 200
    await wait_routed(http, a, "users", host2)

    # delete on A: gone on B
    async with http.delete(f"{a.url}/registry/endpoints/users") as resp:
        assert resp.status == 200
    await wait_routed(http, b, "users", None)
    async with http.get(f"{b.url}/registry/endpoints/users") as resp:
        assert resp.status == 404

    # a restarted instance comes back with every registration, including those made
    # while it was down
    for i in range(3):
        status, body = await register(http, a if i % 2 else b, f"svc{i}", up1.url)
        assert status == 201, body
    b.stop()
    for i in range(3, 6):
        status, body = await register(http, a, f"svc{i}", up2.url)
        assert status == 201, body
    b.start()
    for i in range(6):
        assert await routed_to(http, b, f"svc{i}") == (host1 if i < 3 else host2)
    async with http.get(f"{b.url}/registry/endpoints") as resp:
        names = {e["endpoint_id"] for e in (await resp.json())["endpoints"]}
    assert names == {f"svc{i}" for i in range(6)}
    assert set(etcd.keys("/orchd-test/endpoints/")) == {
        f"/orchd-test/endpoints/svc{i}" for i in range(6)}


async def test_cluster_member_loss_outage_and_recovery(etcd_factory, orchd_factory,
                                                       upstream_factory, http) -> None:
    etcd = etcd_factory(3)
    up = await upstream_factory()
    host = f"127.0.0.1:{up.port}"
    urls = etcd.client_urls
    a = orchd_factory(etcd_config(urls))
    b = orchd_factory(etcd_config([urls[2]]))  # B knows one member only
    acknowledged: set[str] = set()

    for i in range(4):
        status, body = await register(http, a if i % 2 else b, f"before{i}", up.url)
        assert status == 201, body
        acknowledged.add(f"before{i}")

    # one member killed (the first, which A talks to): A fails over, B is unaffected;
    # attempts during a leader election may be refused (503), none accepted is lost
    etcd.kill(0)
    for i in range(6):
        name = f"during{i}"
        status, body = await register(http, a if i % 2 else b, name, up.url)
        assert status in (201, 503), body
        if status == 201:
            acknowledged.add(name)
    await register_until_accepted(http, a, "after_kill_a", up.url)
    await register_until_accepted(http, b, "after_kill_b", up.url)
    acknowledged |= {"after_kill_a", "after_kill_b"}
    stored = {k.rsplit("/", 1)[1] for k in etcd.keys("/orchd-test/endpoints/")}
    assert acknowledged <= stored
    for daemon in (a, b):
        for name in acknowledged:
            await wait_routed(http, daemon, name, host, timeout=5)

    # every member down: routing goes on with the last known registry, writes get 503
    # naming the store, and the store shows degraded
    etcd.kill(1)
    etcd.kill(2)
    for daemon in (a, b):
        await wait_store(http, daemon, "degraded")
        for name in sorted(acknowledged):
            assert await routed_to(http, daemon, name) == host
        status, body = await register(http, daemon, "refused", up.url)
        assert status == 503, body
        assert "etcd" in body["detail"]
        async with http.delete(f"{daemon.url}/registry/endpoints/before0") as resp:
            assert resp.status == 503
            assert resp.content_type == "application/problem+json"
        async with http.get(f"{daemon.url}/health/status") as resp:
            health = await resp.json()
        assert health["store"]["type"] == "etcd"
        assert health["system_status"] == "degraded"
    assert await routed_to(http, a, "refused") is None

    # two members back (B's is still down): A recovers and writes again; B keeps routing
    # what it knew
    etcd.restart(0, wait=False)
    etcd.restart(1, wait=False)
    etcd.wait_healthy(etcd.members[0])
    await wait_store(http, a, "ok")
    await register_until_accepted(http, a, "meanwhile", up.url)
    async with http.delete(f"{a.url}/registry/endpoints/before0") as resp:
        assert resp.status == 200
    assert (await store_status(http, b))["status"] == "degraded"
    assert await routed_to(http, b, "before0") == host
    assert await routed_to(http, b, "meanwhile") is None

    # B's member back: B resynchronises on its own
    etcd.restart(2)
    await wait_store(http, b, "ok")
    await wait_routed(http, b, "meanwhile", host, timeout=10)
    await wait_routed(http, b, "before0", None, timeout=10)
    for name in acknowledged - {"before0"}:
        assert await routed_to(http, b, name) == host
        assert await routed_to(http, a, name) == host
    status, body = await register(http, b, "after_recovery", up.url)
    assert status == 201, body
    await wait_routed(http, a, "after_recovery", host)


async def test_watch_resumes_after_compaction(etcd_factory, orchd_factory,
                                              upstream_factory, http) -> None:
    etcd = etcd_factory(1)
    up = await upstream_factory()
    host = f"127.0.0.1:{up.port}"
    relay = TcpRelay(etcd.members[0].client_port).start()
    try:
        a = orchd_factory(etcd_config(etcd.client_urls))
        b = orchd_factory(etcd_config([relay.url]))
        for name in ("kept", "dropped"):
            status, body = await register(http, a, name, up.url)
            assert status == 201, body
            await wait_routed(http, b, name, host)

        relay.cut()  # B loses etcd; A goes on
        await wait_store(http, b, "degraded")
        status, body = await register(http, a, "added", up.url)
        assert status == 201, body
        async with http.delete(f"{a.url}/registry/endpoints/dropped") as resp:
            assert resp.status == 200
        etcd.compact()  # the revisions B has not seen are gone from etcd's history
        assert await routed_to(http, b, "dropped") == host

        relay.restore()
        await wait_store(http, b, "ok")
        await wait_routed(http, b, "added", host, timeout=10)
        await wait_routed(http, b, "dropped", None, timeout=10)
        assert await routed_to(http, b, "kept") == host
        assert "compacted" in b.log()
    finally:
        relay.stop()


async def test_an_invalid_entry_written_by_another_instance_is_skipped_at_start(
        etcd_factory, orchd_factory, upstream_factory, http) -> None:
    # etcd is shared: an entry this instance cannot use (a newer writer's, a hand edit) is
    # logged and skipped, as the watch does; the other registrations are served.
    etcd = etcd_factory(1)
    up = await upstream_factory()
    writer = EtcdStore(etcd.client_urls, "/orchd-test/")
    try:
        await writer.load()
        await writer.put("good", Record({"name": "good", "url": up.url}, 1.0))
        await writer.put("bad", Record({"name": "bad", "url": "htp://nowhere"}, 2.0))
    finally:
        await writer.close()
    gw = orchd_factory(etcd_config(etcd.client_urls))
    await wait_routed(http, gw, "good", f"127.0.0.1:{up.port}")
    async with http.get(f"{gw.url}/registry/endpoints/bad") as resp:
        assert resp.status == 404
    assert "stored endpoint 'bad' is invalid, ignored" in gw.log()
    assert "endpoints/bad" in str(etcd.keys("/orchd-test/"))  # left for its writer to fix


async def test_unreachable_etcd_at_start_is_a_startup_failure(orchd_factory) -> None:
    from tests.support import free_port

    daemon = orchd_factory(etcd_config([f"http://127.0.0.1:{free_port()}"]), start=False)
    daemon.start(wait=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(20) == 3
    assert "etcd is unreachable" in daemon.log()


async def test_store_sees_other_writers_and_leases(etcd_factory) -> None:
    etcd = etcd_factory(1)
    one = EtcdStore(etcd.client_urls, "/orchd-unit/", probe_interval=0.2)
    two = EtcdStore(etcd.client_urls, "/orchd-unit/", probe_interval=0.2)
    late = EtcdStore(etcd.client_urls, "/orchd-unit/")  # loads, never follows the watch
    seen_one, seen_two = one.watch(), two.watch()
    try:
        for store in (one, two, late):
            assert (await store.load()).endpoints == {}

        async def next_change(events: Any, name: str) -> StoreEvent:
            """The next event for ``name`` (a store may also see the echo of its own
            writes when the watch outruns the write's answer: applying it changes nothing)."""
            while True:
                event: StoreEvent = await asyncio.wait_for(events.__anext__(), 10)
                if event.kind != "status" and event.name == name:
                    return event

        record = Record({"name": "x", "url": "http://127.0.0.1:9"}, 1.0)
        await one.put("x", record)
        event = await next_change(seen_two, "x")
        assert (event.name, event.record, event.kind) == ("x", record, "endpoint")
        assert not two.is_stale(event)
        assert one.is_stale(StoreEvent("x", record, revision=event.revision - 1))

        # a name taken by another instance that this one has not heard of yet: 409, not a
        # silent overwrite
        with pytest.raises(ProblemError) as taken:
            await late.put("x", Record({"name": "x", "url": "http://127.0.0.1:8"}, 2.0))
        assert taken.value.status == 409
        # nor one whose watch has brought the name but whose registry has not applied it
        with pytest.raises(ProblemError) as taken:
            await two.put("x", Record({"name": "x", "url": "http://127.0.0.1:8"}, 2.0))
        assert taken.value.status == 409
        assert etcd.keys("/orchd-unit/")["/orchd-unit/endpoints/x"] == record.as_json()
        # a replacement keeps the registration time
        replaced = Record({"name": "x", "url": "http://127.0.0.1:7"}, record.registration_time)
        await two.put("x", replaced)
        assert (await next_change(seen_one, "x")).record == replaced

        await two.delete("x")
        event = await next_change(seen_one, "x")
        assert (event.name, event.record) == ("x", None)

        # a lease: renewed while heartbeats come, deleted by etcd when they stop
        await one.put("t", Record({"name": "t", "url": "http://127.0.0.1:9", "ttl": 1}, 3.0))
        assert (await next_change(seen_two, "t")).record is not None
        assert await two.renew("t") >= 1
        event = await next_change(seen_two, "t")
        assert (event.name, event.record) == ("t", None)
        with pytest.raises(LookupError):
            await one.renew("t")

    finally:
        await seen_one.aclose()
        await seen_two.aclose()
        for store in (one, two, late):
            await store.close()
