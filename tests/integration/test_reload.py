"""Hot reload against a real orchd: every trigger goes through the one change path, an invalid
file changes nothing and says why (with its line), editors' and Kubernetes' ways of replacing a
file are both seen, and requests under load never fail while the file is rewritten."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support import async_wait_until, base_config, get_json


def endpoint(name: str, upstream: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": f"{upstream.url}/{name}", "methods": ["GET", "POST"], **extra}


async def route_names(http: aiohttp.ClientSession, daemon: Any) -> set[str]:
    status, body = await get_json(http, f"{daemon.url}/router/routes")
    assert status == 200, body
    return {r["endpoint_id"] for r in body["routes"]}


async def wait_names(http: aiohttp.ClientSession, daemon: Any, expected: set[str],
                     timeout: float = 15.0) -> None:
    async def check() -> bool:
        return await route_names(http, daemon) == expected
    await async_wait_until(check, timeout, what=f"routes {sorted(expected)}")


async def config_status(http: aiohttp.ClientSession, daemon: Any) -> dict[str, Any]:
    status, body = await get_json(http, f"{daemon.url}/config/status")
    assert status == 200, body
    return dict(body)


async def proxied_status(http: aiohttp.ClientSession, daemon: Any, name: str) -> int:
    async with http.get(f"{daemon.url}/orchestrator/{name}/x") as r:
        await r.read()
        return r.status


class ReloadEvents:
    """The ``reload`` events of ``GET /events``, collected in the background."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._http, self._url = http, url
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def __aenter__(self) -> ReloadEvents:
        self._task = asyncio.create_task(self._read())
        await asyncio.wait_for(self._connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def wait_for(self, trigger: str, since: int = 0) -> None:
        async def seen() -> bool:
            return any(e["trigger"] == trigger for e in self.events[since:])
        await async_wait_until(seen, what=f"a reload event with trigger {trigger}")

    async def _read(self) -> None:
        import json

        async with self._http.get(f"{self._url}/events?types=reload") as resp:
            assert resp.status == 200
            async for line in resp.content:
                text = line.decode().strip()
                if text == ": connected":
                    self._connected.set()
                if text.startswith("data: "):
                    self.events.append(json.loads(text[6:]))


async def test_file_change_reloads_and_leaves_api_endpoints_alone(orchd_factory,
                                                                  upstream_factory, http):
    up = await upstream_factory()
    daemon = orchd_factory(base_config(endpoint("alpha", up)))
    async with http.post(f"{daemon.url}/registry/endpoints",
                         json={"config": endpoint("from_api", up)}) as r:
        assert r.status == 201, await r.text()

    daemon.write_config(base_config(endpoint("alpha", up), endpoint("beta", up)))
    await wait_names(http, daemon, {"alpha", "beta", "from_api"})
    last = (await config_status(http, daemon))["last_reload"]
    assert last["ok"] is True and last["trigger"] == "file"
    assert last["diff"]["added"] == ["beta"] and last["diff"]["removed"] == []
    assert last["restart_required"] == []
    assert await proxied_status(http, daemon, "beta") == 200

    daemon.write_config(base_config(endpoint("beta", up, timeout=7)))
    await wait_names(http, daemon, {"beta", "from_api"})
    last = (await config_status(http, daemon))["last_reload"]
    assert last["diff"]["removed"] == ["alpha"] and last["diff"]["changed"] == ["beta"]
    assert await proxied_status(http, daemon, "alpha") == 404
    assert await proxied_status(http, daemon, "from_api") == 200
    status, body = await get_json(http, f"{daemon.url}/registry/endpoints/from_api")
    assert status == 200 and body["source"] == "api"


async def test_sighup_and_post_reload_use_the_change_path(orchd_factory, upstream_factory,
                                                          http):
    up = await upstream_factory()
    daemon = orchd_factory(base_config(endpoint("alpha", up)))
    async with ReloadEvents(http, daemon.url) as seen:
        # SIGHUP with the file unchanged: a reload, nothing added, recorded as SIGHUP.
        daemon.signal(signal.SIGHUP)
        await seen.wait_for("SIGHUP")
        assert seen.events[-1]["ok"] is True and seen.events[-1]["added"] == []

        # The file edited, then SIGHUP at once: the change is applied, by SIGHUP or by the
        # watcher (whichever reads it first), never twice.
        before = len(seen.events)
        daemon.write_config(base_config(endpoint("alpha", up), endpoint("gamma", up)))
        daemon.signal(signal.SIGHUP)
        await wait_names(http, daemon, {"alpha", "gamma"})
        await seen.wait_for("SIGHUP", since=before)
        added = [n for e in seen.events[before:] for n in e.get("added", [])]
        assert added == ["gamma"]

        # POST /config/reload answers the diff itself.
        daemon.write_config(base_config(endpoint("gamma", up)))
        async with http.post(f"{daemon.url}/config/reload") as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
        assert answer["ok"] is True
        assert set(answer) >= {"added", "changed", "removed", "restart_required"}
        await wait_names(http, daemon, {"gamma"})
        status = await config_status(http, daemon)
        assert status["watching"] is True and status["last_reload_error"] is None
        await seen.wait_for("api")
    removed = [n for e in seen.events for n in e.get("removed", [])]
    assert removed == ["alpha"]


YAML_BROKEN = """\
log_level: INFO
health_check: {enabled: false}
endpoints:
  - name: alpha
    url: "http://127.0.0.1:1/alpha
    methods: [GET]
"""


async def test_invalid_file_keeps_running_config_and_reports_the_line(
        orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    good = base_config(endpoint("alpha", up))
    daemon = orchd_factory(good)

    # A YAML syntax error.
    daemon.write_config(YAML_BROKEN)

    async def failed() -> Any:
        status = await config_status(http, daemon)
        return status["last_reload_error"]
    error = await async_wait_until(failed, what="the reload error")
    assert "line" in error, error
    _, health = await get_json(http, f"{daemon.url}/health/status")
    assert health["last_reload"]["ok"] is False
    assert health["last_reload"]["error"] == error
    assert health["last_reload"]["errors"][0]["line"] >= 5
    assert "failed, the running configuration stays" in daemon.log()
    assert await proxied_status(http, daemon, "alpha") == 200

    # A schema error: the answer of POST /config/reload names the key and its line.
    text = yaml.safe_dump(base_config(endpoint("alpha", up), {"name": "bad", "url": "htp://x"}),
                          sort_keys=False)
    daemon.write_config(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "htp://x" in ln)
    async with http.post(f"{daemon.url}/config/reload") as r:
        assert r.status == 422
        assert r.content_type == "application/problem+json"
        problem = await r.json()
    assert problem["ok"] is False
    assert f"endpoints[1].url (line {line})" in problem["detail"], problem["detail"]
    assert {"path": "endpoints[1].url", "line": line}.items() <= problem["errors"][0].items()
    status = await config_status(http, daemon)
    assert f"(line {line})" in status["last_reload_error"]
    assert await route_names(http, daemon) == {"alpha"}
    assert await proxied_status(http, daemon, "alpha") == 200

    # Restored: the next reload succeeds and clears the error everywhere.
    daemon.write_config(base_config(endpoint("alpha", up), endpoint("beta", up)))
    await wait_names(http, daemon, {"alpha", "beta"})
    async with http.post(f"{daemon.url}/config/reload") as r:
        assert r.status == 200
        assert (await r.json())["ok"] is True
    status = await config_status(http, daemon)
    assert status["last_reload_error"] is None and status["last_reload"]["ok"] is True
    _, health = await get_json(http, f"{daemon.url}/health/status")
    assert health["last_reload"]["ok"] is True and health["last_reload"]["error"] is None


async def test_restart_only_settings_are_reported_not_applied(orchd_factory, upstream_factory,
                                                              http):
    up = await upstream_factory()
    daemon = orchd_factory(base_config(endpoint("alpha", up)))
    new_port = daemon.port + 1 if daemon.port < 65535 else daemon.port - 1
    cfg = base_config(endpoint("alpha", up), endpoint("beta", up),
                      server={"port": new_port, "host": "127.0.0.2",
                              "control_socket": str(daemon.dir / "other.sock"),
                              "state_dir": str(daemon.dir / "elsewhere")},
                      registry={"store": "etcd", "etcd": {"endpoints": ["http://127.0.0.1:1"]}})
    daemon.write_config(cfg)
    await wait_names(http, daemon, {"alpha", "beta"})
    last = (await config_status(http, daemon))["last_reload"]
    assert last["ok"] is True
    assert set(last["restart_required"]) == {"server.port", "server.host",
                                             "server.control_socket", "server.state_dir",
                                             "registry"}
    # Still on the old address, socket and state directory.
    assert await proxied_status(http, daemon, "beta") == 200
    assert daemon.socket.exists() and not (daemon.dir / "other.sock").exists()
    assert not (daemon.dir / "elsewhere").exists()
    async with http.post(f"{daemon.url}/registry/endpoints",
                         json={"config": endpoint("durable", up)}) as r:
        assert r.status == 201
    assert "durable" in (daemon.state_dir / "registry.json").read_text()


async def test_editor_saves_are_picked_up(orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    daemon = orchd_factory(base_config(endpoint("alpha", up)))
    path = daemon.config_path

    # vim-style: the original moved to a backup, a new file written, the backup deleted.
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    path.write_text(yaml.safe_dump(base_config(endpoint("alpha", up), endpoint("vim", up))))
    backup.unlink()
    await wait_names(http, daemon, {"alpha", "vim"})

    # write a temporary file and rename it over the config (most editors, Ansible, sed -i).
    tmp = path.with_name(".orchestrator.yaml.swp")
    tmp.write_text(yaml.safe_dump(base_config(endpoint("renamed", up))))
    os.replace(tmp, path)
    await wait_names(http, daemon, {"renamed"})

    # Rewritten in place in several steps: read once, whole, after the last one.
    text = yaml.safe_dump(base_config(endpoint("renamed", up), endpoint("inplace", up)))
    with open(path, "w") as f:
        for i in range(0, len(text), 16):
            f.write(text[i:i + 16])
            f.flush()
    await wait_names(http, daemon, {"renamed", "inplace"})
    status = await config_status(http, daemon)
    assert status["last_reload"]["ok"] is True, status


async def test_kubernetes_symlink_swap_is_picked_up(orchd_factory, upstream_factory, http):
    """A ConfigMap volume: ``orchestrator.yaml -> ..data/orchestrator.yaml``, ``..data`` a
    symlink to a timestamped directory, replaced atomically on every update."""
    up = await upstream_factory()
    daemon = orchd_factory(base_config(endpoint("alpha", up)), start=False)
    volume: Path = daemon.dir

    def publish(version: int, cfg: dict[str, Any]) -> None:
        stamp = volume / f"..2026_11_27_00_00_{version:02d}.000000001"
        stamp.mkdir()
        (stamp / "orchestrator.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        tmp = volume / "..data_tmp"
        tmp.symlink_to(stamp.name)
        old = (volume / "..data").resolve() if (volume / "..data").is_symlink() else None
        os.replace(tmp, volume / "..data")
        if old is not None:
            shutil.rmtree(old)

    daemon.config_path.unlink()
    publish(1, base_config(endpoint("alpha", up)))
    daemon.config_path.symlink_to("..data/orchestrator.yaml")
    daemon.start()
    assert await route_names(http, daemon) == {"alpha"}

    publish(2, base_config(endpoint("alpha", up), endpoint("second", up)))
    await wait_names(http, daemon, {"alpha", "second"})
    publish(3, base_config(endpoint("third", up)))
    await wait_names(http, daemon, {"third"})
    assert await proxied_status(http, daemon, "third") == 200
    assert (await config_status(http, daemon))["last_reload"]["trigger"] == "file"


async def test_no_failed_request_while_the_file_is_rewritten(orchd_factory, upstream_factory,
                                                             http):
    """2,000 requests (at least) at concurrency 20 while the file is rewritten 10 times; the
    endpoint under load is in every version, the others change."""
    up = await upstream_factory()
    steady = endpoint("steady", up)
    daemon = orchd_factory(base_config(steady))
    minimum, cap, deadline = 2000, 20000, time.monotonic() + 60
    results: dict[str, int] = {"ok": 0, "failed": 0}
    failures: list[str] = []
    rewrites_done = asyncio.Event()
    versions_seen: list[set[str]] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            total = results["ok"] + results["failed"]
            if total >= cap or (total >= minimum and rewrites_done.is_set()):
                return
            try:
                async with session.get(f"{daemon.url}/orchestrator/steady/load") as r:
                    await r.read()
                    if r.status == 200:
                        results["ok"] += 1
                        continue
                    failures.append(f"HTTP {r.status}")
            except aiohttp.ClientError as exc:
                failures.append(repr(exc))
            results["failed"] += 1

    async def rewriter() -> None:
        for i in range(10):
            others = [endpoint(f"v{i}_{j}", up) for j in range(i % 3 + 1)]
            daemon.write_config(base_config(*([steady, *others] if i % 2 else [*others, steady]),
                                            circuit_breaker={"failure_threshold": 5 + i}))
            expected = {"steady"} | {o["name"] for o in others}
            await wait_names(http, daemon, expected, timeout=30)
            versions_seen.append(expected)
        rewrites_done.set()

    connector = aiohttp.TCPConnector(limit=20)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(rewriter(), *(worker(session) for _ in range(20)))
    total = results["ok"] + results["failed"]
    assert len(versions_seen) == 10
    assert total >= minimum
    assert results["failed"] == 0, failures[:10]
    status = await config_status(http, daemon)
    assert status["last_reload"]["ok"] is True


async def test_a_log_level_flag_still_wins_after_a_reload(orchd_factory, upstream_factory,
                                                          http):
    up = await upstream_factory()
    daemon = orchd_factory(base_config(endpoint("alpha", up), log_level="INFO"),
                           extra_args=["--log-level", "WARNING"])
    for names in (["alpha", "beta"], ["alpha", "beta", "gamma"]):
        daemon.write_config(base_config(*(endpoint(n, up) for n in names), log_level="INFO"))
        await wait_names(http, daemon, set(names))
    log = daemon.log()
    assert "reload (file)" not in log, "a reload lowered the level set by --log-level"
    daemon.write_config("endpoints: [")
    await async_wait_until(lambda: _reload_failed(http, daemon), what="the failed reload")
    assert "reload (file) failed" in daemon.log()  # WARNING and above are still logged


async def _reload_failed(http: aiohttp.ClientSession, daemon: Any) -> bool:
    return (await config_status(http, daemon))["last_reload"]["ok"] is False
