"""Registry propagation between two orchd instances sharing etcd.

For each of N registrations: POST it to instance A, take the time its 201 arrives, then ask
instance B for the endpoint in a tight loop (each request sent as soon as the previous one is
answered) until B routes it to the upstream; the figure is the time from A's 201 to B's first
routed answer. Prints p50, p90, p99 and max over the N registrations, and the same for the
registration call itself on A. Everything runs on loopback: a real etcd (one member, or three
with --members 3) started on free ports with its own data directory, two orchd processes and
one aiohttp upstream; all are stopped and their directories removed at the end.

Usage: python bench/propagation.py [--count 200] [--members 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.etcd_support import EtcdCluster, etcd_config  # noqa: E402
from tests.support import Orchd, Upstream, echo_app  # noqa: E402

PER_REGISTRATION_LIMIT = 5.0  # seconds; a registration slower than this aborts the run


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def line(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{label:<28} p50 {percentile(ms, 50):7.2f} ms   p90 {percentile(ms, 90):7.2f} ms"
            f"   p99 {percentile(ms, 99):7.2f} ms   max {max(ms):7.2f} ms"
            f"   mean {statistics.fmean(ms):7.2f} ms")


async def measure(a: Orchd, b: Orchd, upstream: Upstream, count: int) -> None:
    propagation: list[float] = []
    registration: list[float] = []
    polls = 0
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            name = f"bench{i}"
            body = {"config": {"name": name, "url": upstream.url}}
            sent = time.perf_counter()
            async with http.post(f"{a.url}/registry/endpoints", json=body) as resp:
                if resp.status != 201:
                    raise SystemExit(f"registration {name} refused: {await resp.text()}")
            acknowledged = time.perf_counter()
            registration.append(acknowledged - sent)
            while True:
                polls += 1
                async with http.get(f"{b.url}/orchestrator/{name}/") as resp:
                    await resp.read()
                    if resp.status == 200:
                        break
                if time.perf_counter() - acknowledged > PER_REGISTRATION_LIMIT:
                    raise SystemExit(f"{name} not routable on B after {PER_REGISTRATION_LIMIT}s")
            propagation.append(time.perf_counter() - acknowledged)
    print(f"{count} registrations, {polls} requests to B")
    print(line("201 on A -> routed on B", propagation))
    print(line("registration on A (POST)", registration))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--members", type=int, default=1, choices=(1, 3))
    args = parser.parse_args()

    etcd = EtcdCluster(args.members)
    daemons: list[Orchd] = []
    upstream = Upstream(echo_app())
    try:
        etcd.start()
        await upstream.start()
        config = etcd_config(etcd.client_urls, prefix="/orchd-bench/")
        for _ in range(2):
            daemon = Orchd(config)
            daemons.append(daemon)
            daemon.start()
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        print(f"etcd {args.members} member(s), orchd A {daemons[0].url}, "
              f"B {daemons[1].url}, load average {load}")
        await measure(daemons[0], daemons[1], upstream, args.count)
    finally:
        await upstream.stop()
        for daemon in daemons:
            daemon.cleanup()
        etcd.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
