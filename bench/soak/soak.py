"""A bounded soak: mixed traffic through a real orchd on loopback, then its resource figures.

Traffic, from a fixed number of client workers until the duration is up:
  normal    GET/POST through the proxy to an echo upstream
  failing   an upstream answering 500, and an endpoint whose port refuses connections
  slow      an upstream that takes 200 ms to answer
  streaming a 1 MiB chunked answer, read to the end; an SSE-style trickle cut by the client
  admin     registrations and removals through the API, and reloads (the file rewritten,
            then POST /config/reload), every second
Prints the number of requests, the failures by cause, and orchd's RSS and open descriptors
after the warm-up and at the end (after the traffic stops and idle connections expire).
Exit status 1 when RSS grew by 10% or more after the warm-up, or descriptors did not come
back to their baseline.

Usage: python bench/soak/soak.py [--duration 600] [--workers 8] [--warmup 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import Orchd, Upstream, base_config, free_port  # noqa: E402


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid: int, upstream_port: int) -> tuple[int, int]:
    """Open descriptors: (all but pooled upstream connections, pooled upstream connections).

    Idle keep-alive connections to the upstream come and go with the load (the pool keeps
    them for reuse), so they are counted apart."""
    pooled: set[str] = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if int(cols[2].rsplit(":", 1)[1], 16) == upstream_port:
                    pooled.add(f"socket:[{cols[9]}]")
    links = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            links.append(str(fd.readlink()))
        except OSError:
            continue
    upstream = sum(1 for link in links if link in pooled)
    return len(links) - upstream, upstream


def upstream_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body or b"ok")

    async def fail(_request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        return web.Response(text="slow")

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(16):
            await resp.write(b"s" * 65536)
        await resp.write_eof()
        return resp

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(50):
                await resp.write(f"data: {i}\n\n".encode())
                await asyncio.sleep(0.02)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away and orchd closed this stream: what is tested
        return resp

    app = web.Application(client_max_size=16 * 1024**2)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_get("/fail", fail)
    app.router.add_get("/slow", slow)
    app.router.add_get("/stream", stream)
    app.router.add_get("/trickle", trickle)
    return app


def config(up: str, dead: str, generation: int) -> dict[str, object]:
    return base_config(
        {"name": "app", "url": f"{up}/echo", "methods": ["GET", "POST"]},
        {"name": "fail", "url": f"{up}/fail", "retries": 0},
        {"name": "slow", "url": f"{up}/slow", "timeout": 5},
        {"name": "stream", "url": f"{up}/stream"},
        {"name": "trickle", "url": f"{up}/trickle"},
        {"name": "dead", "url": dead, "retries": 0},
        {"name": f"gen{generation % 2}", "url": f"{up}/echo"},
        circuit_breaker={"failure_threshold": 10000},
        server={"access_log": False},
    )


class Tally:
    def __init__(self) -> None:
        self.requests = 0
        self.causes: collections.Counter[str] = collections.Counter()

    def outcome(self, kind: str, status: int, expected: int | tuple[int, ...]) -> None:
        self.requests += 1
        allowed = expected if isinstance(expected, tuple) else (expected,)
        if status not in allowed:
            self.causes[f"{kind}: HTTP {status} (expected {expected})"] += 1

    def error(self, kind: str, exc: BaseException) -> None:
        self.requests += 1
        self.causes[f"{kind}: {type(exc).__name__}"] += 1


async def worker(n: int, base: str, until: float, tally: Tally) -> None:
    # The failing endpoints open their breakers once failure_threshold (10,000) failures in
    # a row are reached: 503 is then their designed answer.
    plan: list[tuple[str, str, str, int | tuple[int, ...]]] = [
            ("normal", "GET", "app/x?i=1", 200), ("normal", "POST", "app/post", 200),
            ("normal", "GET", "app/y", 200), ("failing", "GET", "fail", (500, 503)),
            ("failing", "GET", "dead", (502, 503)), ("slow", "GET", "slow", 200),
            ("streaming", "GET", "stream", 200), ("normal", "GET", "app/z", 200),
            ("sse-cut", "GET", "trickle", 200)]
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        i = n
        while time.monotonic() < until:
            kind, method, path, expected = plan[i % len(plan)]
            i += 1
            try:
                data = b"p" * 4096 if method == "POST" else None
                async with s.request(method, f"{base}/orchestrator/{path}", data=data) as r:
                    if kind == "sse-cut":
                        await r.content.readline()  # the client goes away mid-stream
                        r.close()
                    else:
                        await r.read()
                    tally.outcome(kind, r.status, expected)
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.error(kind, exc)


async def admin(gw: Orchd, up: str, dead: str, until: float, tally: Tally) -> int:
    generation = 0
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < until:
            generation += 1
            name = f"reg{generation % 50}"
            body = {"config": {"name": name, "url": f"{up}/echo"}}
            try:
                async with s.post(f"{gw.url}/registry/endpoints", json=body) as r:
                    tally.outcome("register", r.status, 201)
                async with s.get(f"{gw.url}/orchestrator/{name}/hello") as r:
                    tally.outcome("registered-route", r.status, 200)
                async with s.delete(f"{gw.url}/registry/endpoints/{name}") as r:
                    tally.outcome("remove", r.status, 200)
                gw.write_config(config(up, dead, generation))
                async with s.post(f"{gw.url}/config/reload") as r:
                    ok = r.status == 200 and (await r.json()).get("ok") is True
                    tally.outcome("reload", 200 if ok else r.status, 200)
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.error("admin", exc)
            await asyncio.sleep(1.0)
    return generation


async def main(args: argparse.Namespace) -> int:
    upstream = await Upstream(upstream_app()).start()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    gw = Orchd(config(upstream.url, dead, 0))
    gw.start()
    assert gw.proc is not None
    pid = gw.proc.pid
    try:
        tally = Tally()
        warm_until = time.monotonic() + args.warmup
        await asyncio.gather(*(worker(n, gw.url, warm_until, tally)
                               for n in range(args.workers)))
        await asyncio.sleep(1)
        port = upstream.port
        rss0, (fds0, pool0) = rss_kib(pid), fds(pid, port)
        print(f"after {args.warmup:g}s warm-up ({tally.requests} requests): "
              f"RSS {rss0} KiB, open fds {fds0} (+{pool0} pooled upstream connections)",
              flush=True)
        tally = Tally()
        started = time.monotonic()
        until = started + args.duration
        results = await asyncio.gather(admin(gw, upstream.url, dead, until, tally),
                                       *(worker(n, gw.url, until, tally)
                                         for n in range(args.workers)))
        elapsed = time.monotonic() - started
        # Idle keep-alive connections from the clients are gone; let orchd notice.
        deadline = time.monotonic() + 30
        while fds(pid, port)[0] > fds0 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        rss1, (fds1, pool1) = rss_kib(pid), fds(pid, port)
    finally:
        code = gw.stop()
        gw.cleanup()
        await upstream.stop()
    growth = (rss1 - rss0) / rss0 * 100
    print(f"duration {elapsed:.0f}s, {args.workers} workers, {results[0]} admin cycles "
          f"(register, route, remove, rewrite + reload)")
    print(f"requests: {tally.requests} ({tally.requests / elapsed:.0f}/s)")
    print("failures by cause (expected answers, such as the 500s and 502s of the failing "
          "endpoints, are not failures):")
    for cause, count in sorted(tally.causes.items()) or [("none", 0)]:
        print(f"  {cause}: {count}")
    print(f"RSS:      {rss0} KiB -> {rss1} KiB ({growth:+.1f}%)")
    print(f"open fds: {fds0} -> {fds1} (pooled upstream connections: {pool0} -> {pool1})")
    print(f"orchd exit status on SIGTERM: {code}")
    ok = growth < 10 and fds1 <= fds0 and code == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of traffic")
    parser.add_argument("--workers", type=int, default=8, help="concurrent clients")
    parser.add_argument("--warmup", type=float, default=20, help="seconds before the baseline")
    sys.exit(asyncio.run(main(parser.parse_args())))
