"""What active health checks cost: orchd with 1,000 endpoints probed every second.

Starts a few aiohttp backends on loopback (in a child process, so their work is not counted
as orchd's), writes a configuration with ``--endpoints`` endpoints spread over them
(``health_check_path: /health``, ``interval: 1``), starts orchd, lets it run for
``--duration`` seconds and reports:

* event loop lag inside orchd (p50, p99, max): the ``health_monitoring.event_loop_lag``
  block of ``GET /health``, sampled by orchd itself every 100 ms over the last 60 s;
* orchd's CPU share over the run, from ``/proc/<pid>/stat`` (utime + stime), as a percentage
  of one core;
* probes sent per second and how many endpoints were healthy at the end.

The figures are meaningful for the compiled build only (setup.py's mypyc modules, the probes'
upstream pool among them); the first line says which one the tree at hand holds. orchd is run
from this tree (``python -m orchd`` in its directory).

With ``--baseline`` it first runs the same endpoints with health checks disabled for the
same duration, so the difference is what the checks cost.

Usage: python bench/health_checks.py [--endpoints 1000] [--duration 60] [--backends 4]
       [--interval 1] [--baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import Orchd, free_port  # noqa: E402


def serve_backends(ports: list[int], ready: Any) -> None:
    """Child process: one aiohttp server per port answering every path with 200."""
    import uvloop

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def main() -> None:
        for port in ports:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", ok)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
        ready.set()
        await asyncio.Event().wait()

    uvloop.run(main())


def build_of(root: Path) -> str:
    """Whether orchd in ``root`` runs compiled: mypyc's extension of the upstream pool."""
    compiled = list((root / "orchd").glob("upstream.*.so"))
    return "compiled (mypyc)" if compiled else "pure Python: build_ext --inplace first"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def config(ports: list[int], endpoints: int, interval: float, enabled: bool) -> dict[str, Any]:
    return {
        "log_level": "WARNING",
        "server": {"access_log": False},
        "health_check": {"enabled": enabled, "interval": interval, "timeout": 2,
                         "healthy_threshold": 2, "unhealthy_threshold": 3},
        "endpoints": [
            {"name": f"ep{i:04d}", "url": f"http://127.0.0.1:{ports[i % len(ports)]}/svc/{i}",
             "health_check_path": "/health"}
            for i in range(endpoints)
        ],
    }


async def run_once(ports: list[int], args: argparse.Namespace, enabled: bool
                   ) -> dict[str, Any]:
    daemon = Orchd(config(ports, args.endpoints, args.interval, enabled))
    try:
        daemon.start(timeout=60)
        assert daemon.proc is not None
        pid = daemon.proc.pid
        async with aiohttp.ClientSession() as http:
            async def health() -> dict[str, Any]:
                async with http.get(f"{daemon.url}/health") as r:
                    body: dict[str, Any] = await r.json()
                    return body

            start_probes = (await health())["health_monitoring"]["probes"]
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(args.duration)
            cpu1, wall1 = cpu_seconds(pid), time.monotonic()
            monitoring = (await health())["health_monitoring"]
            async with http.get(f"{daemon.url}/health/summary") as r:
                summary = await r.json()
        return {
            "checks": "on" if enabled else "off",
            "cpu_share": 100.0 * (cpu1 - cpu0) / (wall1 - wall0),
            "lag": monitoring["event_loop_lag"],
            "probes_per_s": (monitoring["probes"] - start_probes) / (wall1 - wall0),
            "healthy": summary["healthy_endpoints"] - summary.get("unknown_endpoints", 0),
            "total": summary["total_endpoints"],
        }
    finally:
        daemon.cleanup()


def report(row: dict[str, Any], duration: float) -> str:
    lag = row["lag"]
    return (f"checks {row['checks']:>3}  {duration:.0f}s  cpu {row['cpu_share']:5.1f}% of a core"
            f"  loop lag p50 {lag['p50_ms']:.2f} ms  p99 {lag['p99_ms']:.2f} ms"
            f"  max {lag['max_ms']:.2f} ms ({lag['samples']} samples)"
            f"  probes {row['probes_per_s']:.0f}/s  healthy {row['healthy']}/{row['total']}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--backends", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--baseline", action="store_true",
                        help="first run with health checks disabled, for comparison")
    args = parser.parse_args()

    ports = [free_port() for _ in range(args.backends)]
    ready = multiprocessing.Event()
    backends = multiprocessing.Process(target=serve_backends, args=(ports, ready), daemon=True)
    backends.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the backends did not start")
        print(f"orchd with {args.endpoints} endpoints over {args.backends} backends, "
              f"health checks every {args.interval:g}s, {os.cpu_count()} CPUs; orchd from {ROOT}, "
              f"{build_of(ROOT)}", flush=True)
        runs = [False, True] if args.baseline else [True]
        for enabled in runs:
            load = os.getloadavg()[0]
            row = await run_once(ports, args, enabled)
            print(f"{report(row, args.duration)}  (load average {load:.2f} before, "
                  f"{os.getloadavg()[0]:.2f} after)", flush=True)
    finally:
        backends.terminate()
        backends.join(5)


if __name__ == "__main__":
    asyncio.run(main())
