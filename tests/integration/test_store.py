"""The embedded store: durable registrations, atomic writes, and a corrupt file stops the start."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.support import Orchd, base_config, get_json, wait_until

EXIT_STARTUP = 3


async def post(http: aiohttp.ClientSession, gw: Orchd, doc: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{gw.url}/registry/endpoints", json={"config": doc}) as r:
        body = await r.json(content_type=None)
        assert r.status == 201, body
        return body


def store_doc(gw: Orchd) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((gw.state_dir / "registry.json").read_text())
    return data


def exits_with(gw: Orchd) -> int:
    assert gw.proc is not None
    return wait_until(lambda: gw.proc.poll() is not None and (gw.proc.returncode,),
                      20, what="orchd to exit")[0]


async def test_registrations_survive_a_restart(orchd_factory: Callable[..., Orchd],
                                               upstream_factory: Any,
                                               http: aiohttp.ClientSession) -> None:
    up = await upstream_factory()
    gw = orchd_factory(base_config({"name": "from_file", "url": f"{up.url}/file"}))
    await post(http, gw, {"name": "kept", "url": f"{up.url}/kept", "methods": ["GET", "POST"]})
    await post(http, gw, {"name": "off", "url": f"{up.url}/off"})
    async with http.put(f"{gw.url}/registry/endpoints/off/status",
                        json={"status": "disabled"}) as r:
        assert r.status == 200
    _, before = await get_json(http, f"{gw.url}/registry/endpoints/kept")
    assert gw.stop() == 0

    gw.start()
    status, after = await get_json(http, f"{gw.url}/registry/endpoints/kept")
    assert status == 200
    assert after["source"] == "api"
    assert after["registration_time"] == before["registration_time"]
    assert after["methods"] == ["GET", "POST"]
    async with http.post(f"{gw.url}/orchestrator/kept/x", data=b"again") as r:
        assert r.status == 200
        assert (await r.json())["raw_path"] == "/kept/x"
    _, off = await get_json(http, f"{gw.url}/registry/endpoints/off")
    assert off["status"] == "disabled"  # what an operator set sticks across restarts
    async with http.get(f"{gw.url}/orchestrator/off/x") as r:
        assert r.status == 503


async def test_store_file_is_valid_json_after_every_write(orchd_factory: Callable[..., Orchd],
                                                          upstream_factory: Any,
                                                          http: aiohttp.ClientSession) -> None:
    up = await upstream_factory()
    gw = orchd_factory(base_config())
    for i in range(5):
        await post(http, gw, {"name": f"ep{i}", "url": f"{up.url}/{i}"})
        # a 201 means the write is on disk already: no waiting
        assert f"ep{i}" in store_doc(gw)["endpoints"]
    async with http.put(f"{gw.url}/registry/endpoints/ep1",
                        json={"config": {"name": "ep1", "url": f"{up.url}/new"}}) as r:
        assert r.status == 200
    assert store_doc(gw)["endpoints"]["ep1"]["config"]["url"] == f"{up.url}/new"
    async with http.delete(f"{gw.url}/registry/endpoints/ep2") as r:
        assert r.status == 200
    doc = store_doc(gw)
    assert sorted(doc["endpoints"]) == ["ep0", "ep1", "ep3", "ep4"]
    leftovers = [p.name for p in gw.state_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


async def test_corrupt_store_stops_the_start(orchd_factory: Callable[..., Orchd]) -> None:
    gw = orchd_factory(base_config(), start=False)
    gw.state_dir.mkdir(parents=True)
    store = gw.state_dir / "registry.json"
    garbage = b'{"format": 1, "endpoints": {"a": {"config": '
    store.write_bytes(garbage)
    gw.start(wait=False)
    assert exits_with(gw) == EXIT_STARTUP
    log = gw.log()
    assert str(store) in log
    assert "not valid JSON" in log
    assert store.read_bytes() == garbage  # never emptied or overwritten


async def test_store_with_wrong_shape_or_unreadable(orchd_factory: Callable[..., Orchd]) -> None:
    gw = orchd_factory(base_config(), start=False)
    gw.state_dir.mkdir(parents=True)
    store = gw.state_dir / "registry.json"
    store.write_text('["not", "a", "store"]')
    gw.start(wait=False)
    assert exits_with(gw) == EXIT_STARTUP
    assert "not an orchd registry store" in gw.log()
    assert store.read_text() == '["not", "a", "store"]'
    gw.stop()

    bad_entry = {"format": 1, "endpoints": {"x": {"config": {"name": "x", "url": "htp://x"},
                                                  "registration_time": 1.0}}, "admin": {}}
    store.write_text(json.dumps(bad_entry))
    gw.start(wait=False)
    assert exits_with(gw) == EXIT_STARTUP
    assert "stored endpoint 'x' is invalid" in gw.log()
    gw.stop()

    store.unlink()
    store.mkdir()  # cannot be read as a file
    gw.start(wait=False)
    assert exits_with(gw) == EXIT_STARTUP
    assert "cannot read the store file" in gw.log()


async def test_second_orchd_on_the_same_state_dir_refuses(
        orchd_factory: Callable[..., Orchd]) -> None:
    first = orchd_factory(base_config())
    second = orchd_factory(base_config(), start=False)
    second.command = lambda: [  # type: ignore[method-assign]
        sys.executable, "-m", "orchd", "--config", str(second.config_path),
        "--port", str(second.port), "--state-dir", str(first.state_dir),
        "--control-socket", str(second.socket)]
    second.start(wait=False)
    assert exits_with(second) == EXIT_STARTUP
    assert "in use by another orchd" in second.log()
    assert str(first.state_dir) in second.log()
    assert first.proc is not None and first.proc.poll() is None  # the first one is unharmed


async def test_bad_requests_leave_the_store_alone(orchd_factory: Callable[..., Orchd],
                                                  upstream_factory: Any,
                                                  http: aiohttp.ClientSession) -> None:
    up = await upstream_factory()
    gw = orchd_factory(base_config({"name": "cfg", "url": up.url}))
    await post(http, gw, {"name": "good", "url": f"{up.url}/good"})
    before = (gw.state_dir / "registry.json").read_bytes()
    bad_bodies: list[bytes] = [b"{", json.dumps({"config": {"name": "cfg", "url": up.url}})
                               .encode(), json.dumps({"config": {"name": "b", "url": "x"}})
                               .encode(), json.dumps({"config": {"name": "good",
                                                                 "url": up.url}}).encode()]
    for raw in bad_bodies:
        async with http.post(f"{gw.url}/registry/endpoints", data=raw,
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status in (400, 409, 422)
        assert (gw.state_dir / "registry.json").read_bytes() == before
        async with http.get(f"{gw.url}/orchestrator/good/x") as r:
            assert r.status == 200
