"""``/consumers`` through a real orchd: admin-only (GET included), problem documents, a key
shown once and never again, kept across a restart; and ``orchctl consumers`` end to end
over the real control socket."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from orchd.auth.keys import new_key
from orchd.errors import ProblemError
from orchd.store.consumers import ConsumerRecord, KeyRecord
from orchd.store.etcd import EtcdStore
from tests.support import ROOT, Orchd, async_wait_until, base_config

TOKEN = "adm-c0n5umer5"


def orchctl(sock: object, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ORCHCTL_SOCKET", "CONFIG_PATH")}
    return subprocess.run([sys.executable, "-m", "orchctl", "--socket", str(sock), *args],
                          capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=60,
                          check=False)


async def call(http: aiohttp.ClientSession, method: str, url: str, *, token: str | None = TOKEN,
               **kw: Any) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    async with http.request(method, url, headers=headers, **kw) as r:
        return r.status, await r.json(content_type=None), r.headers


async def test_consumers_api_is_admin_only_and_durable(orchd_factory, http):
    daemon: Orchd = orchd_factory(base_config(server={"admin_token": TOKEN}))
    base = f"{daemon.url}/consumers"
    for method, path in (("GET", ""), ("GET", "/shop"), ("GET", "/shop/keys"),
                         ("POST", "")):
        status, doc, headers = await call(http, method, base + path, token=None)
        assert status == 401 and doc["status"] == 401, (method, path, doc)
        status, _, _ = await call(http, method, base + path, token="wrong")
        assert status == 403
    status, doc, _ = await call(http, "POST", base, json={"name": "shop"})
    assert status == 201 and doc["name"] == "shop", doc
    status, doc, _ = await call(http, "POST", base, json={"name": "shop"})
    assert status == 409 and doc["title"] == "Consumer exists"
    for body in ({"name": "bad name"}, {"name": "anonymous"}, {"name": "x", "extra": 1}, [1]):
        status, doc, _ = await call(http, "POST", base, json=body)
        assert status == 422 and doc["errors"], (body, doc)
    status, made, headers = await call(http, "POST", f"{base}/shop/keys")
    assert status == 201 and made["key"].startswith("ok_") and made["key_id"]
    assert headers["Cache-Control"] == "no-store"
    key = made["key"]
    status, doc, _ = await call(http, "GET", f"{base}/shop/keys")
    assert status == 200 and doc["keys"][0]["key_id"] == made["key_id"]
    assert doc["keys"][0]["prefix"] == key[:11]
    status, listed, _ = await call(http, "GET", base)
    assert listed["consumers"] == [{"name": "shop", "created": listed["consumers"][0]["created"],
                                    "keys": 1}]
    status, doc, _ = await call(http, "GET", f"{base}/nobody")
    assert status == 404 and doc["title"] == "Consumer not found"
    status, doc, _ = await call(http, "DELETE", f"{base}/shop/keys/0000")
    assert status == 404

    # Restart: the consumer and key are still there; the key was never written in clear.
    daemon.stop()
    store = (daemon.state_dir / "consumers.json").read_text()
    assert key not in store and key not in daemon.log()
    daemon.start()
    status, doc, _ = await call(http, "GET", f"{base}/shop")
    assert status == 200 and [k["key_id"] for k in doc["keys"]] == [made["key_id"]]
    assert key not in json.dumps(doc) and "hash" not in doc["keys"][0]
    status, _, _ = await call(http, "DELETE", f"{base}/shop/keys/{made['key_id']}")
    assert status == 200
    status, _, _ = await call(http, "DELETE", f"{base}/shop")
    assert status == 200
    status, doc, _ = await call(http, "GET", base)
    assert doc["consumers"] == [] and key not in daemon.log()


async def test_get_from_another_host_without_a_token_is_refused(orchd_factory, http):
    daemon: Orchd = orchd_factory(base_config())
    status, doc, _ = await call(http, "GET", f"{daemon.url}/consumers", token=None)
    assert status == 200 and doc["consumers"] == []  # loopback, no token set
    status, doc, _ = await call(http, "GET", f"{daemon.url}/consumers", token=None,
                                headers={"Host": "evil.example"})
    assert status == 403, doc


def test_orchctl_consumers_end_to_end(orchd_factory):
    daemon: Orchd = orchd_factory(base_config(server={"admin_token": TOKEN}))
    sock = daemon.socket
    proc = orchctl(sock, "consumers", "add", "shop")
    assert proc.returncode == 0, proc.stderr
    proc = orchctl(sock, "--json", "consumers", "key", "create", "shop")
    assert proc.returncode == 0, proc.stderr
    made = json.loads(proc.stdout)
    proc = orchctl(sock, "consumers", "key", "list", "shop")
    assert proc.returncode == 0 and made["key_id"] in proc.stdout
    assert made["key"] not in proc.stdout
    proc = orchctl(sock, "consumers", "list")
    assert proc.returncode == 0 and "shop" in proc.stdout
    proc = orchctl(sock, "--json", "consumers", "show", "shop")
    assert json.loads(proc.stdout)["keys"][0]["key_id"] == made["key_id"]
    proc = orchctl(sock, "consumers", "key", "revoke", "shop", made["key_id"])
    assert proc.returncode == 0 and "revoked" in proc.stdout
    proc = orchctl(sock, "consumers", "key", "revoke", "shop", made["key_id"])
    assert proc.returncode == 1 and "no key" in (proc.stdout + proc.stderr)
    proc = orchctl(sock, "consumers", "remove", "shop")
    assert proc.returncode == 0
    proc = orchctl(sock, "consumers", "show", "shop")
    assert proc.returncode == 1
    proc = orchctl(sock, "consumers", "add")
    assert proc.returncode == 2


async def test_etcd_store_shares_consumers_and_revocations(etcd_factory):
    """Two instances on one etcd: a key made on A works on B, a revocation on A is seen
    by B through its watch, a taken name is 409 on B, a new instance loads them."""
    etcd = etcd_factory(1)
    a = EtcdStore(etcd.client_urls, "/orchd-test/")
    b = EtcdStore(etcd.client_urls, "/orchd-test/")
    try:
        await a.load()
        await b.load()
        watch = b.watch().__aiter__()
        follower = asyncio.ensure_future(watch.__anext__())  # runs B's watch tasks
        await a.add_consumer(ConsumerRecord("shop", 1.0))
        made = new_key()
        await a.add_key("shop", KeyRecord(made.key_id, made.prefix, made.hash, 2.0))

        async def b_knows() -> bool:
            return b.consumers.lookup(made.key) == "shop"
        await async_wait_until(b_knows, 10)
        with pytest.raises(ProblemError) as info:
            await b.add_consumer(ConsumerRecord("shop", 3.0))
        assert info.value.status == 409
        await a.remove_key("shop", made.key_id)

        async def b_refuses() -> bool:
            return b.consumers.lookup(made.key) is None
        await async_wait_until(b_refuses, 10)
        c = EtcdStore(etcd.client_urls, "/orchd-test/")  # a new instance reads them
        await c.load()
        assert c.consumers.names() == ["shop"] and c.consumers.keys_of("shop") == []
        await c.close()
        await b.remove_consumer("shop")
        assert b.consumers.names() == []
        follower.cancel()
    finally:
        await a.close()
        await b.close()
