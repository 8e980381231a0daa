"""``server.workers``: one supervisor and N worker processes on the public port, one gateway
to everyone outside (design section 14).

Which worker answered is told by the request ID orchd gives each request (``X-Request-ID``):
its first 16 hex digits are per process. A new connection per request lets the kernel
spread requests over the workers' sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.lifecycle import control
from tests.integration.rawhttp import connect, endpoint, read_answer
from tests.integration.test_restart import Load, alive, orchctl, restart_under_load
from tests.support import async_wait_until, base_config, free_port, wait_until
from tests.tls_support import CA, write_pair

WORKERS = 2
MAX_TRIES = 200  # new connections tried before a test gives up finding every worker


def worker_pids(daemon: Any) -> list[int]:
    """The workers' pids the supervisor logged when it started them."""
    match = re.search(r"with \d+ workers \(pids ([\d ]+)\)", daemon.log())
    assert match, daemon.log()[-2000:]
    return [int(p) for p in match.group(1).split()]


def worker_of(rid: str) -> str:
    return rid[:16]


async def get_fresh(url: str, **kw: Any) -> tuple[int, str, Any]:
    """One request on a connection of its own: (status, answering worker, JSON body)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (aiohttp.ClientSession(connector=connector) as session,
                session.get(url, **kw) as r):
        body = await r.json(content_type=None)
        rid = r.headers.get("X-Request-ID") or body.get("headers", {}).get("X-Request-ID", "")
        return r.status, worker_of(rid), body


async def every_worker(url: str, check: Any, want: int = WORKERS) -> dict[str, int]:
    """New connections until ``want`` workers have answered; ``check(status, body)`` holds
    for every answer. Answers per worker."""
    seen: dict[str, int] = {}
    for _ in range(MAX_TRIES):
        status, worker, body = await get_fresh(url)
        assert check(status, body), (status, body)
        seen[worker] = seen.get(worker, 0) + 1
        if len(seen) >= want:
            return seen
    raise AssertionError(f"only {len(seen)} of {want} workers answered in {MAX_TRIES} tries")


def requests_total(text: str, name: str) -> int:
    return sum(int(float(v)) for v in re.findall(
        rf'^orchd_requests_total\{{[^}}]*endpoint="{name}"[^}}]*\}} (\S+)$', text, re.M))


async def test_a_registration_is_routable_on_every_worker_at_its_201(
        orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    daemon = orchd_factory(base_config(endpoint("svc", up.url), server={"workers": WORKERS}))
    assert len(worker_pids(daemon)) == WORKERS
    async with http.post(f"{daemon.url}/registry/endpoints",
                         json={"config": {"name": "fresh", "url": up.url}}) as r:
        assert r.status == 201, await r.text()
    # At once, on every worker: never a 404.
    await every_worker(f"{daemon.url}/orchestrator/fresh/x", lambda s, b: s == 200)

    # A drain and a removal likewise.
    async with http.delete(f"{daemon.url}/registry/endpoints/fresh") as r:
        assert r.status == 200, await r.text()
    await every_worker(f"{daemon.url}/orchestrator/fresh/x", lambda s, b: s == 404)

    # A reload of the file, likewise, answered after every worker has it.
    cfg = base_config(endpoint("svc", up.url), endpoint("added", up.url),
                      server={"workers": WORKERS})
    daemon.write_config(cfg)
    async with http.post(f"{daemon.url}/config/reload") as r:
        assert r.status == 200, await r.text()
    await every_worker(f"{daemon.url}/orchestrator/added/x", lambda s, b: s == 200)


async def test_a_trip_is_in_force_on_every_worker_and_failures_count_once(
        orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every attempt is refused
    daemon = orchd_factory(base_config(
        endpoint("svc", up.url),
        endpoint("dead", dead, circuit_breaker={"failure_threshold": 6, "reset_timeout": 300}),
        server={"workers": WORKERS}))

    async with http.post(f"{daemon.url}/health/circuit-breakers/svc/trip") as r:
        assert r.status == 200, await r.text()
    await every_worker(f"{daemon.url}/orchestrator/svc/x", lambda s, b: s == 503)
    async with http.post(f"{daemon.url}/health/circuit-breakers/svc/reset") as r:
        assert r.status == 200
    await every_worker(f"{daemon.url}/orchestrator/svc/x", lambda s, b: s == 200)

    # Failures seen by either worker count on the one breaker: it opens after 6 in all,
    # although no worker saw 6 itself.
    failures: dict[str, int] = {}
    for _ in range(40):
        status, worker, _ = await get_fresh(f"{daemon.url}/orchestrator/dead/x")
        if status == 503:
            break
        assert status == 502, status
        failures[worker] = failures.get(worker, 0) + 1
    assert sum(failures.values()) >= 6, failures
    assert len(failures) == WORKERS and max(failures.values()) < 6, failures
    async with http.get(f"{daemon.url}/health/circuit-breakers/dead") as r:
        row = await r.json()
    assert row["state"] == "open" and row["failure_count"] >= 6, row
    await every_worker(f"{daemon.url}/orchestrator/dead/x", lambda s, b: s == 503)


async def test_metrics_and_counts_are_the_instances(orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    daemon = orchd_factory(base_config(endpoint("svc", up.url), server={"workers": WORKERS}))
    seen: dict[str, int] = {}
    for _ in range(40):
        status, worker, _ = await get_fresh(f"{daemon.url}/orchestrator/svc/x")
        assert status == 200
        seen[worker] = seen.get(worker, 0) + 1
    assert len(seen) == WORKERS, seen
    async with http.get(f"{daemon.url}/metrics") as r:
        text = await r.text()
    assert requests_total(text, "svc") == 40, text[:3000]

    async def target_counts() -> bool:
        async with http.get(f"{daemon.url}/health/endpoints/svc") as r:
            body = await r.json()
        return body["targets"][0]["requests"] == 40
    await async_wait_until(target_counts, 10, what="the target's request count to be 40")


async def test_a_killed_worker_is_replaced_and_only_its_connections_fail(
        orchd_factory, upstream_factory):
    up = await upstream_factory()
    daemon = orchd_factory(base_config(endpoint("svc", up.url), server={"workers": WORKERS}))
    request = b"GET /orchestrator/svc/x HTTP/1.1\r\nHost: localhost\r\n\r\n"

    # Keep-alive connections on both workers.
    conns: list[tuple[str, asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(MAX_TRIES):
        reader, writer = await connect(daemon.port)
        writer.write(request)
        answer = await read_answer(reader)
        assert answer.status == 200
        conns.append((worker_of(json.loads(answer.body)["headers"]["X-Request-ID"]),
                      reader, writer))
        if len(conns) >= 8 and len({w for w, _, _ in conns}) == WORKERS:
            break
    assert len({w for w, _, _ in conns}) == WORKERS

    victim = worker_pids(daemon)[0]
    os.kill(victim, signal.SIGKILL)
    load = Load(f"{daemon.url}/orchestrator/svc/x", concurrency=4, cap=400, seconds=20)
    runner = asyncio.create_task(load.run())  # new connections while it is replaced

    # The victim's connections are cut; the other worker's go on.
    failed, served = set(), set()
    for worker, reader, writer in conns:
        try:
            writer.write(request)
            await writer.drain()
            answer = await read_answer(reader, timeout=5)
            ok = answer.status == 200
        except (OSError, asyncio.IncompleteReadError):
            ok = False
        (served if ok else failed).add(worker)
        writer.close()
    assert len(failed) == 1 and len(served) == 1 and not failed & served, (failed, served)

    await async_wait_until(lambda: _true("replaced by pid" in daemon.log()), 10,
                           what="the worker to be replaced")
    await runner
    assert load.failed == [] and load.refused == 0, (load.failed[:5], load.refused)
    replaced = re.search(r"worker \d+ replaced by pid (\d+) in (\d+) ms", daemon.log())
    assert replaced is not None
    print(f"worker replaced in {replaced.group(2)} ms; {load.ok} requests on new connections, "
          "none failed")
    new_pid = int(replaced.group(1))
    assert alive(new_pid) and not alive(victim)
    await every_worker(f"{daemon.url}/orchestrator/svc/x", lambda s, b: s == 200)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon.url}/health/status") as r:
            workers = (await r.json())["workers"]
        assert workers["live"] == WORKERS and workers["replaced"] == 1, workers
        assert new_pid in workers["pids"] and victim not in workers["pids"], workers
        async with http.get(f"{daemon.url}/metrics") as r:
            text = await r.text()
        assert "orchd_workers 2.0" in text and "orchd_worker_replacements_total 1.0" in text
    code, out, err = await orchctl(daemon, "status")
    assert code == 0 and "workers: 2 of 2 running, 1 replacement since start" in out, (out, err)


async def _true(value: bool) -> bool:
    return value


async def test_the_workers_never_outlive_the_supervisor(orchd_factory, upstream_factory):
    up = await upstream_factory()
    # --workers, as gunicorn and uvicorn users would pass it, overrides the file's setting.
    daemon = orchd_factory(base_config(endpoint("svc", up.url)),
                           extra_args=["--workers", str(WORKERS)])
    pids = worker_pids(daemon)
    assert len(pids) == WORKERS
    assert all(alive(p) for p in pids)
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait(10)

    async def workers_gone() -> bool:
        return not any(alive(p) for p in pids)
    await async_wait_until(workers_gone, 15, what="the workers to exit")


async def test_graceful_stop_and_restart_with_workers(orchd_factory, upstream_factory):
    from tests.integration.lifecycle import lifecycle_app

    release = asyncio.Event()
    up = await upstream_factory()
    slow_up = await upstream_factory(lifecycle_app(release))
    daemon = orchd_factory(base_config(endpoint("svc", up.url), endpoint("slow", slow_up.url),
                                       server={"workers": WORKERS}))
    old_workers = worker_pids(daemon)
    successor: list[int] = []
    try:
        await _restart_then_stop(daemon, old_workers, release, successor)
    finally:
        for pid in successor:  # not our child: the restart's launcher started it
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


async def _restart_then_stop(daemon: Any, old_workers: list[int], release: asyncio.Event,
                             successor: list[int]) -> None:
    # orchctl restart under load: none fails; the new supervisor has workers of its own.
    load = Load(f"{daemon.url}/orchestrator/svc/ping", concurrency=8, cap=20000, seconds=90)
    new_pid = await restart_under_load(daemon, load, successor)
    assert load.failed == [] and load.refused == 0, (load.failed[:5], load.refused)
    wait_until(lambda: not any(alive(p) for p in old_workers), 15,
               what="the old workers to exit")
    _, info = await control(daemon, "GET", "/control/info")
    assert info["pid"] == new_pid

    # A graceful stop lets a request in flight on a worker finish.
    async def slow_request() -> tuple[int, str]:
        async with (aiohttp.ClientSession() as session,
                    session.get(f"{daemon.url}/orchestrator/slow/slow") as r):
            return r.status, await r.text()

    slow = asyncio.create_task(slow_request())
    await asyncio.sleep(0.5)
    os.kill(new_pid, signal.SIGTERM)
    await asyncio.sleep(0.5)
    release.set()
    assert await slow == (200, "slow and complete")

    async def gone() -> bool:
        return not alive(new_pid)
    await async_wait_until(gone, 30, what="the new orchd to exit")


async def test_https_and_the_admin_api_through_a_worker(orchd_factory, upstream_factory,
                                                         tmp_path: Path):
    """A worker terminates TLS and relays the admin API to the supervisor, which knows the
    client's address (loopback trust) and that it came over https (same-origin check)."""
    ca = CA()
    cert, key = write_pair(tmp_path / "tls", "site", ca.issue("localhost", "127.0.0.1"))
    up = await upstream_factory()
    daemon = orchd_factory(base_config(endpoint("svc", up.url), server={
        "workers": WORKERS, "tls": {"certificates": [
            {"cert_file": str(cert), "key_file": str(key)}]}}), start=False)
    daemon.start(wait=False)
    await async_wait_until(lambda: _true("ready (pid" in daemon.log()), 30,
                           what="orchd to be ready")
    base = f"https://127.0.0.1:{daemon.port}"
    ctx: ssl.SSLContext = ca.client_context()
    connector = aiohttp.TCPConnector(ssl=ctx)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{base}/orchestrator/svc/x") as r:
            assert r.status == 200
            assert (await r.json())["headers"]["X-Forwarded-Proto"] == "https"
        origin = {"Origin": f"https://127.0.0.1:{daemon.port}"}
        async with session.post(f"{base}/registry/endpoints", headers=origin,
                                json={"config": {"name": "viatls", "url": up.url}}) as r:
            assert r.status == 201, await r.text()
        async with session.post(f"{base}/registry/endpoints",
                                headers={"Origin": "https://evil.example"},
                                json={"config": {"name": "cross", "url": up.url}}) as r:
            assert r.status == 403, await r.text()
    log = daemon.log()
    assert re.search(r'127\.0\.0\.1 "POST /registry/endpoints" 201', log), log[-2000:]


async def test_a_rate_limit_holds_for_the_instance_not_per_worker(orchd_factory,
                                                                  upstream_factory):
    """Each worker takes its share of an endpoint's rate (design section 14: one gateway):
    a client whose requests land on both workers gets the limit once, not once a worker."""
    up = await upstream_factory()
    ep = endpoint("svc", up.url, rate_limit={"rate": 10, "per": 60, "burst": 10,
                                             "key": "header:X-Tenant"})
    daemon = orchd_factory(base_config(ep, server={"workers": WORKERS}))
    passed: dict[str, int] = {}
    limits = set()
    for _ in range(60):
        connector = aiohttp.TCPConnector(force_close=True)
        async with (aiohttp.ClientSession(connector=connector) as session,
                    session.get(f"{daemon.url}/orchestrator/svc/x",
                                headers={"X-Tenant": "acme"}) as r):
            await r.read()
            assert r.status in (200, 429), r.status
            worker = worker_of(r.headers.get("X-Request-ID", ""))
            passed[worker] = passed.get(worker, 0) + (r.status == 200)
            limits.add(r.headers.get("RateLimit-Limit"))
    assert len(passed) == WORKERS, passed
    assert 10 <= sum(passed.values()) <= 12, passed  # not 20: once for the instance
    assert limits == {"5"}, limits  # each worker's share

    # A request the workers relay to the supervisor (Expect: 100-continue) meets a worker's
    # share there too, not the whole rate again on top of the workers'.
    relayed: list[int] = []
    relayed_limits = set()
    for _ in range(10):
        connector = aiohttp.TCPConnector(force_close=True)
        async with (aiohttp.ClientSession(connector=connector) as session,
                    session.post(f"{daemon.url}/orchestrator/svc/x", data=b"{}",
                                 expect100=True, headers={"X-Tenant": "acme"}) as r):
            await r.read()
            assert r.status in (200, 429), r.status
            relayed.append(r.status)
            relayed_limits.add(r.headers.get("RateLimit-Limit"))
    assert relayed_limits == {"5"}, relayed_limits
    assert 1 <= relayed.count(200) <= 6, relayed


async def test_nothing_is_imported_from_the_working_directory(
        orchd_factory, upstream_factory, tmp_path: Path) -> None:
    """The fork server and multiprocessing's resource tracker are new interpreters started
    with ``python -c``, whose module path begins with the working directory: a package there
    named like one they import ran inside orchd. Two such directories: ``multiprocessing``
    (ran code at every start) and ``orchd/state`` (with an editable install, it took the
    place of orchd's own package in the fork server, and the workers never started)."""
    cwd = tmp_path / "cwd"
    marker = tmp_path / "imported"
    (cwd / "multiprocessing").mkdir(parents=True)
    (cwd / "multiprocessing" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n")
    (cwd / "orchd" / "state").mkdir(parents=True)
    up = await upstream_factory()
    daemon = orchd_factory(base_config(endpoint("svc", up.url), server={"workers": WORKERS}),
                           cwd=cwd)
    assert len(worker_pids(daemon)) == WORKERS
    await every_worker(f"{daemon.url}/orchestrator/svc/x", lambda s, b: s == 200)
    assert not marker.exists(), "a module in orchd's working directory was imported"

    # A fork server that died is started again on the same path: its workers went with it
    # (their exit status came through it), and their successors come from the new one.
    assert daemon.proc is not None
    fork_server = fork_server_of(daemon.proc.pid)
    os.kill(fork_server, signal.SIGKILL)
    wait_until(lambda: daemon.log().count("replaced by pid") >= WORKERS, 20,
               what="both workers replaced")
    assert fork_server_of(daemon.proc.pid) != fork_server
    await every_worker(f"{daemon.url}/orchestrator/svc/x", lambda s, b: s == 200)
    assert not marker.exists(), "a module in orchd's working directory was imported"


def fork_server_of(supervisor: int) -> int:
    """The pid of the supervisor's fork server (its child running multiprocessing's)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == supervisor and b"multiprocessing.forkserver" in cmdline:
            return int(proc.name)
    raise AssertionError(f"no fork server among the children of {supervisor}")
