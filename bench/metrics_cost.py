"""What metrics cost on the proxy path: orchd with ``server.metrics: true`` against the same
orchd with ``server.metrics: false``, both with the access log off, so the request hook and
the metrics are the only difference.

Same set-up as bench/throughput.py (whose process helpers it reuses): orchd alone on CPU 0,
wrk and an nginx backend on CPU 1, rounds interleaved (on, off, on, off, ...) and medians
reported, so drift of the shared machine hits both rows alike. The "on" orchd is scraped
every ``--scrape-interval`` seconds during its runs (15 s, as in
docs/examples/prometheus/prometheus.yml), and the CPU time of one scrape is reported apart.

Two figures per row: requests per second, and orchd's own CPU time per request (user +
system from /proc/PID/stat over the run). On a machine shared with other work the CPU time
is the steadier of the two: other processes change how much CPU orchd gets, not how much it
spends on one request.

Usage: python bench/metrics_cost.py [--quick] [--rounds N] [--duration S] [--connections C]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import urllib.request
from pathlib import Path

from throughput import ROOT, SIZE_LABEL, SIZES, Bench, Result, Row, fmt_us, free_port, loadavg

BODY = "small"  # the per-request cost shows most on small bodies


def start_orchd(bench: Bench, backend: int, metrics: bool) -> Row:
    port = free_port()
    name = f"orchd-metrics-{'on' if metrics else 'off'}-{port}"
    d = bench.tmp / name
    d.mkdir()
    config = d / "orchestrator.yaml"
    config.write_text(f"""server:
  access_log: false
  metrics: {str(metrics).lower()}
log_level: WARNING
endpoints:
  - name: bench
    url: http://127.0.0.1:{backend}
    methods: [GET]
    timeout: 10
health_check:
  enabled: false
""")
    argv = [str(ROOT / ".venv" / "bin" / "orchd"), "--config", str(config), "--port",
            str(port), "--state-dir", str(d / "state"), "--control-socket", str(d / "s.sock")]
    proc = bench.spawn(name, 0, argv)
    bench.wait_http(proc, f"http://127.0.0.1:{port}/health/ready")
    return Row(f"metrics {'on' if metrics else 'off'}", port, "/orchestrator/bench/", proc)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Scraper:
    """Scrapes ``/metrics`` once a second while a run lasts (none when metrics are off)."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.stop = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    r.read()
                self.count += 1
            except OSError:
                pass

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def hook_cost(samples: int = 200_000) -> float:
    """Microseconds the per-request hook adds with metrics on (access log off): the exact
    code aiohttp runs once per finished request, on a real request object and a real
    ``Metrics``. With metrics off the hook is not called at all."""
    import asyncio
    import tempfile
    import timeit

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from orchd.accesslog import access_logger_class
    from orchd.events import EventBus
    from orchd.log import access_logger
    from orchd.metrics import Metrics
    from orchd.model import Config, ServerSettings
    from orchd.registry import Registry
    from orchd.state import GatewayState
    from orchd.store.file import FileStore
    from orchd.target import TargetPool
    from orchd.traffic import RequestHook

    async def measure() -> float:
        bus = EventBus()
        pool = TargetPool(bus)
        with tempfile.TemporaryDirectory() as tmp:
            state = GatewayState(boot=ServerSettings(), boot_file=ServerSettings(),
                                 config=Config(), config_path=None, bus=bus, pool=pool,
                                 registry=Registry(pool, bus), store=FileStore(tmp))
            hook = access_logger_class(RequestHook(Metrics(state).traffic, None))(
                access_logger, "")
            request = make_mocked_request("GET", "/orchestrator/bench/small")
            request["endpoint"], request["target"] = "bench", "http://127.0.0.1:9/"
            request["request_id"] = "0" * 32
            response = web.Response(body=b"x" * 100)
            seconds = timeit.timeit(lambda: hook.log(request, response, 0.0012),
                                    number=samples)
        return 1e6 * seconds / samples

    return asyncio.run(measure())


def scrape_cost(pid: int, port: int, scrapes: int = 50) -> float:
    """Milliseconds of orchd's CPU per ``/metrics`` scrape (median of back-to-back runs)."""
    url = f"http://127.0.0.1:{port}/metrics"
    costs = []
    for _ in range(5):
        before = cpu_seconds(pid)
        for _ in range(scrapes // 5):
            with urllib.request.urlopen(url, timeout=5) as r:
                r.read()
        costs.append(1000 * (cpu_seconds(pid) - before) / (scrapes // 5))
    return statistics.median(costs)


def run(args: argparse.Namespace) -> int:
    bench = Bench(args)
    try:
        backend = bench.start_backend().port
        on, off = start_orchd(bench, backend, True), start_orchd(bench, backend, False)
        url = {row.label: f"http://127.0.0.1:{row.port}{row.prefix}{BODY}" for row in (on, off)}
        for row in (on, off):
            bench.check(row)
            bench.wrk(url[row.label], 2, args.connections)  # warm up
        scrapes = 0
        cpu: dict[str, list[float]] = {on.label: [], off.label: []}
        for rnd in range(args.rounds):
            order = (on, off) if rnd % 2 == 0 else (off, on)
            for row in order:
                assert row.proc is not None
                before = cpu_seconds(row.proc.pid)
                if row is on:
                    with Scraper(f"http://127.0.0.1:{row.port}/metrics",
                                 args.scrape_interval) as scraper:
                        res = bench.wrk(url[row.label], args.duration, args.connections)
                    scrapes += scraper.count
                else:
                    res = bench.wrk(url[row.label], args.duration, args.connections)
                used = cpu_seconds(row.proc.pid) - before
                cpu[row.label].append(1e6 * used / max(1.0, res.rps * args.duration))
                row.results.setdefault(BODY, []).append(res)
                print(f"round {rnd + 1}: {row.label}: {res.rps:,.0f} req/s "
                      f"p50 {fmt_us(res.p50_us)}, {cpu[row.label][-1]:.0f} µs CPU/request",
                      file=sys.stderr)
        print(report(on, off, args, scrapes, cpu))
        hook = hook_cost()
        cpu_off = statistics.median(cpu[off.label])
        print(f"per-request hook with metrics on: {hook:.2f} µs, "
              f"{100.0 * hook / cpu_off:.2f}% of orchd's CPU per request with metrics off")
        assert on.proc is not None
        print(f"one /metrics scrape: {scrape_cost(on.proc.pid, on.port):.2f} ms of orchd's CPU")
        return 0
    finally:
        bench.cleanup()


def _median(results: list[Result], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in results)


def report(on: Row, off: Row, args: argparse.Namespace, scrapes: int,
           cpu: dict[str, list[float]]) -> str:
    lines = [
        f"orchd proxy, 1 core, body {SIZE_LABEL[BODY]}, wrk -c{args.connections}, "
        f"{args.rounds} interleaved rounds of {args.duration:g} s, medians; "
        f"load average {loadavg()}; /metrics scraped {scrapes} times during the 'on' runs "
        f"(every {args.scrape_interval:g} s)",
        "",
        "| server.metrics | req/s | CPU per request | p50 | p99 | errors / non-2xx |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in (off, on):
        res = row.results[BODY]
        lines.append(f"| {row.label.split()[-1]} | {_median(res, 'rps'):,.0f} "
                     f"| {statistics.median(cpu[row.label]):.0f} µs "
                     f"| {fmt_us(_median(res, 'p50_us'))} | {fmt_us(_median(res, 'p99_us'))} "
                     f"| {sum(r.errors for r in res)} / {sum(r.non2xx for r in res)} |")
    rps_on, rps_off = _median(on.results[BODY], "rps"), _median(off.results[BODY], "rps")
    rps_change = 100.0 * (rps_on - rps_off) / rps_off
    cpu_on, cpu_off = (statistics.median(cpu[r.label]) for r in (on, off))
    cpu_change = 100.0 * (cpu_on - cpu_off) / cpu_off
    # Each round runs "on" and "off" back to back: the median of the per-round ratios is
    # steadier than the ratio of the medians when the machine's load drifts.
    paired = statistics.median(a.rps / b.rps for a, b in zip(on.results[BODY],
                                                              off.results[BODY], strict=True))
    lines += ["", f"metrics on vs off: throughput {rps_change:+.1f}% (median of per-round "
              f"ratios: {100.0 * (paired - 1):+.1f}%), CPU per request {cpu_change:+.1f}% "
              "(budget: losing less than 5% of throughput)"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 rounds of 5 s")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--scrape-interval", type=float, default=15.0)
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration = 3, 5.0
    assert set(SIZES) >= {BODY}
    raise SystemExit(run(args))


if __name__ == "__main__":
    main()
