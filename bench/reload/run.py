"""Reload benchmark: a paced load through orchd while its config is rewritten, it is sent
SIGHUP and it is restarted (``orchctl restart``), all on loopback.

An aiohttp client sends GET requests at a fixed rate (open loop: one every 1/rate s, at most
``--concurrency`` outstanding) to an endpoint that is in every version of the file, for
``--duration`` seconds. Meanwhile, spread evenly over the run, the file is rewritten
``--rewrites`` times (another endpoint added or removed each time, written to a temporary file
and renamed over the config, as editors do; each rewrite waits until the routing table shows
it), ``--sighups`` SIGHUPs are sent, and ``--restarts`` restarts are run with ``orchctl
restart`` (each waits until the new process serves and the old one has exited).

A request belongs to "during reloads" when it was sent within ``--window`` seconds after a
rewrite or SIGHUP, or between the start of a restart and ``--window`` seconds after the old
process exited; all others are "without". Prints total requests, non-2xx answers, socket
errors (refused, reset, disconnected), and latency p50/p99 for both sets. Exit status 1 when
any request failed.

The upstream is a separate aiohttp process (uvloop), so the client and orchd each have
their own process; everything is stopped and removed at the end.

Usage: python bench/reload/run.py [--duration 60] [--rate 1000] [--rewrites 30] [--sighups 10]
                                  [--restarts 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support import Orchd, base_config, free_port  # noqa: E402


def serve_upstream(port: int) -> None:
    """The upstream process: 200 "ok" for any GET."""
    import uvloop
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                handle_signals=True)


@dataclass
class Sample:
    sent: float
    latency: float
    status: int  # 0: socket error
    error: str = ""


@dataclass
class Windows:
    spans: list[tuple[float, float]] = field(default_factory=list)

    def add(self, start: float, end: float) -> None:
        self.spans.append((start, end))

    def covers(self, t: float) -> bool:
        return any(a <= t <= b for a, b in self.spans)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.samples: list[Sample] = []
        self.windows = Windows()
        self.done = {"rewrite": 0, "sighup": 0, "restart": 0}
        self.pids: list[int] = []
        self.restart_seconds: list[float] = []

    async def load(self, url: str, session: aiohttp.ClientSession, until: float) -> None:
        interval = 1.0 / self.args.rate
        gate = asyncio.Semaphore(self.args.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        n = 0
        while True:
            due = start + n * interval
            if due >= until:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            task = asyncio.create_task(self.one(session, url, gate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.gather(*tasks)

    async def one(self, session: aiohttp.ClientSession, url: str,
                  gate: asyncio.Semaphore) -> None:
        sent = time.perf_counter()
        try:
            async with session.get(url) as resp:
                await resp.read()
                self.samples.append(Sample(sent, time.perf_counter() - sent, resp.status))
        except (aiohttp.ClientError, OSError) as exc:
            self.samples.append(Sample(sent, time.perf_counter() - sent, 0, repr(exc)))
        finally:
            gate.release()

    async def disrupt(self, daemon: Orchd, upstream: str, http: aiohttp.ClientSession,
                      start: float) -> None:
        a = self.args
        # Each kind spread evenly over the run, the kinds interleaved.
        counts = {"rewrite": a.rewrites, "sighup": a.sighups, "restart": a.restarts}
        plan = sorted(((k + 0.5) / n, kind) for kind, n in counts.items() for k in range(n))
        margin = 3.0
        span = a.duration - 2 * margin
        for fraction, kind in plan:
            at = start + margin + fraction * span
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = time.perf_counter()
            if kind == "rewrite":
                version = self.done["rewrite"]
                extra = [{"name": f"extra{version}_{j}", "url": upstream}
                         for j in range(version % 4)]
                cfg = base_config({"name": "steady", "url": upstream}, *extra,
                                  server={"access_log": False})
                daemon.write_config(cfg)
                await wait_routes(http, daemon.url, {"steady"} | {e["name"] for e in extra})
            elif kind == "sighup":
                os.kill(self.current_pid(daemon), signal.SIGHUP)
            else:
                await self.restart(daemon)
            self.windows.add(t0, time.perf_counter() + a.window)
            self.done[kind] += 1

    def current_pid(self, daemon: Orchd) -> int:
        return self.pids[-1] if self.pids else daemon.proc.pid  # type: ignore[union-attr]

    async def restart(self, daemon: Orchd) -> None:
        old = self.current_pid(daemon)
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchctl", "--socket", str(daemon.socket), "--json",
            "restart", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=str(ROOT))
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"orchctl restart failed ({proc.returncode}): {out!r} {err!r}")
        new = int(json.loads(out)["pid"])
        self.pids.append(new)
        deadline = time.monotonic() + 60
        while _alive(old):
            if time.monotonic() > deadline:
                raise SystemExit(f"the old orchd (pid {old}) did not exit")
            await asyncio.sleep(0.05)
        self.restart_seconds.append(time.perf_counter() - t0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


async def wait_routes(http: aiohttp.ClientSession, url: str, names: set[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        async with http.get(f"{url}/router/routes") as resp:
            body = await resp.json()
        if {r["endpoint_id"] for r in body["routes"]} == names:
            return
        await asyncio.sleep(0.02)
    raise SystemExit(f"the rewrite to {sorted(names)} was not applied within 10 s")


def report(bench: Bench, elapsed: float) -> bool:
    samples = bench.samples
    during = [s for s in samples if bench.windows.covers(s.sent)]
    without = [s for s in samples if not bench.windows.covers(s.sent)]
    non2xx = [s for s in samples if s.status and not 200 <= s.status < 300]
    errors = [s for s in samples if s.status == 0]
    a = bench.args

    def lat(group: list[Sample], q: float) -> str:
        return f"{percentile([s.latency * 1000 for s in group if s.status], q):8.2f} ms"

    print(f"orchd reload benchmark: {a.duration:g} s at {a.rate} req/s offered "
          f"(concurrency cap {a.concurrency}), loopback")
    print(f"  disruptions applied : {bench.done['rewrite']} rewrites, {bench.done['sighup']} "
          f"SIGHUPs, {bench.done['restart']} restarts (orchctl restart: "
          + ", ".join(f"{s:.2f}s" for s in bench.restart_seconds) + ")")
    print(f"  total requests      : {len(samples)} ({len(samples) / elapsed:.0f} req/s achieved)")
    print(f"  non-2xx             : {len(non2xx)}")
    print(f"  socket errors       : {len(errors)}")
    print(f"  during reloads      : {len(during):6d} requests   p50 {lat(during, 50)}   "
          f"p99 {lat(during, 99)}")
    print(f"  without             : {len(without):6d} requests   p50 {lat(without, 50)}   "
          f"p99 {lat(without, 99)}")
    print(f"  load average        : {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs)")
    for s in (non2xx + errors)[:10]:
        print(f"    failed: status {s.status} {s.error}")
    return not non2xx and not errors


async def run(args: argparse.Namespace) -> int:
    port = free_port()
    upstream = multiprocessing.get_context("spawn").Process(
        target=serve_upstream, args=(port,), daemon=True)
    upstream.start()
    up_url = f"http://127.0.0.1:{port}"
    daemon = Orchd(base_config({"name": "steady", "url": up_url},
                               server={"access_log": False}))
    bench = Bench(args)
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with http.get(up_url) as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the upstream did not start") from None
                await asyncio.sleep(0.05)
            daemon.start()
            connector = aiohttp.TCPConnector(limit=args.concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                start = time.perf_counter()
                until = start + args.duration
                await asyncio.gather(
                    bench.load(f"{daemon.url}/orchestrator/steady/bench", session, until),
                    bench.disrupt(daemon, up_url, http, start))
                elapsed = time.perf_counter() - start
        ok = report(bench, elapsed)
    finally:
        for pid in bench.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        daemon.stop()
        for pid in bench.pids:
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        daemon.cleanup()
        upstream.terminate()
        upstream.join(10)
    return 0 if ok else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--rate", type=int, default=1000, help="requests per second offered")
    p.add_argument("--concurrency", type=int, default=100, help="outstanding requests cap")
    p.add_argument("--rewrites", type=int, default=30)
    p.add_argument("--sighups", type=int, default=10)
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--window", type=float, default=0.5,
                   help="seconds after a disruption that count as 'during reloads'")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
