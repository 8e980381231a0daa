"""Per-core throughput and latency of orchd, side by side with nginx, Caddy and a bare
aiohttp proxy, all forwarding to the same nginx backend on loopback.

Every proxy runs alone on CPU 0 with one worker (nginx ``worker_processes 1``, Caddy
``GOMAXPROCS=1``, orchd is one process); wrk and the backend share CPU 1. Rounds are
interleaved (each round visits every proxy once per body size) and the table shows medians,
so slow drift of the machine hits every row alike: compare the ratios, not the absolute
figures. Every process started here is stopped by its pid; files live in one temp dir that
is removed at the end.

Usage: python bench/throughput.py [--quick] [--rounds N] [--duration S] [--connections C]
                               [--ceiling] [--compare DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = ROOT / ".venv" / "bin" / "python"
PROXY_CPU, LOAD_CPU = 0, 1
SIZES = {"small": 100, "big": 64 * 1024}
SIZE_LABEL = {"small": "~100 B", "big": "64 KiB"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0  # where it listens, if it is the backend

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """This process and its children (nginx's worker)."""
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            try:
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            out.append(pid)
            todo.extend(int(k) for k in kids)
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time of this process and its children."""
        ticks = 0
        for pid in self.pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            ticks += int(fields[11]) + int(fields[12])
        return ticks / CLK_TCK

    def pin(self, cpu: int) -> None:
        """Move this process, its children and all their threads to ``cpu``."""
        for pid in self.pids():
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), {cpu})

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


@dataclass
class Result:
    rps: float
    p50_us: float
    p99_us: float
    errors: int
    non2xx: int
    requests: int = 0
    cpu_us: float | None = None  # the proxy's CPU time (all its processes) per request


@dataclass
class Row:
    label: str
    port: int
    prefix: str
    proc: Proc | None = None
    results: dict[str, list[Result]] = field(default_factory=dict)
    rss: list[int] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="orchd-bench-"))
        os.chmod(self.tmp, 0o755)  # nginx workers (user nobody) read the backend's files
        self.procs: list[Proc] = []
        cpus = os.sched_getaffinity(0)
        self.pin = PROXY_CPU in cpus and LOAD_CPU in cpus
        if not self.pin:
            print("warning: fewer than 2 CPUs: running unpinned", file=sys.stderr)

    # -- processes

    def taskset(self, cpu: int, argv: list[str]) -> list[str]:
        return ["taskset", "-c", str(cpu), *argv] if self.pin else argv

    def spawn(self, name: str, cpu: int, argv: list[str],
              env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(self.taskset(cpu, argv), stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})}, cwd=self.tmp)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def wait_http(self, proc: Proc, url: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise SystemExit(f"{proc.name} exited: {proc.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{proc.name} did not answer {url} within {timeout}s")

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the backend and the proxies

    def nginx_conf(self, name: str, body: str) -> Path:
        d = self.tmp / name
        d.mkdir()
        temp = "\n".join(f"  {k}_temp_path {d}/{k};" for k in
                         ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = d / "nginx.conf"
        conf.write_text(f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temp}
  keepalive_requests 1000000;
  keepalive_timeout 120s;
{body}
}}
""")
        return conf

    def start_backend(self) -> Proc:
        www = self.tmp / "www"
        www.mkdir()
        for name, size in SIZES.items():
            (www / name).write_bytes(b"x" * (size - 1) + b"\n")
        (www / "health").write_text("ok\n")
        for p in (www, *www.iterdir()):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        port = free_port()
        conf = self.nginx_conf("backend", f"""  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {www};
    location / {{ default_type application/octet-stream; }}
  }}""")
        proc = self.spawn("backend", LOAD_CPU, [nginx_bin(), "-e", "stderr", "-c", str(conf)])
        self.wait_http(proc, f"http://127.0.0.1:{port}/health")
        proc.port = port
        return proc

    def start_nginx(self, backend: int) -> Row:
        port = free_port()
        conf = self.nginx_conf("nginx", f"""  upstream backend {{
    server 127.0.0.1:{backend};
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffer_size 16k;
      proxy_buffers 8 16k;
      proxy_busy_buffers_size 32k;
    }}
  }}""")
        proc = self.spawn("nginx", PROXY_CPU, [nginx_bin(), "-e", "stderr", "-c", str(conf)])
        self.wait_http(proc, f"http://127.0.0.1:{port}/health")
        return Row("nginx 1 worker", port, "/", proc)

    def start_caddy(self, backend: int) -> Row:
        port = free_port()
        d = self.tmp / "caddy"
        d.mkdir()
        caddyfile = d / "Caddyfile"
        caddyfile.write_text(f"""{{
  admin off
  auto_https off
  storage file_system {d}/data
}}
http://127.0.0.1:{port} {{
  reverse_proxy 127.0.0.1:{backend} {{
    transport http {{
      keepalive 2m
      keepalive_idle_conns 256
      keepalive_idle_conns_per_host 256
    }}
  }}
}}
""")
        env = {"GOMAXPROCS": "1", "HOME": str(d), "XDG_DATA_HOME": str(d),
               "XDG_CONFIG_HOME": str(d)}
        proc = self.spawn("caddy", PROXY_CPU, ["caddy", "run", "--config", str(caddyfile),
                                               "--adapter", "caddyfile"], env)
        self.wait_http(proc, f"http://127.0.0.1:{port}/health")
        return Row("Caddy GOMAXPROCS=1", port, "/", proc)

    def start_bare(self, backend: int) -> Row:
        port = free_port()
        proc = self.spawn("bare", PROXY_CPU, [str(PY), str(ROOT / "bench" / "bare_proxy.py"),
                                              str(port), f"http://127.0.0.1:{backend}"])
        self.wait_http(proc, f"http://127.0.0.1:{port}/health")
        return Row("bare aiohttp+uvloop proxy", port, "/", proc)

    def start_ceiling(self, kind: str, backend: int = 0) -> Row:
        port = free_port()
        extra = [str(backend)] if kind == "llhttp-proxy" else []
        proc = self.spawn(f"ceiling-{kind}", PROXY_CPU,
                          [str(PY), str(ROOT / "bench" / "ceiling.py"), kind, str(port), *extra])
        self.wait_http(proc, f"http://127.0.0.1:{port}/health")
        label = {"aiohttp": "ceiling: aiohttp app, constant answer, no proxying",
                 "llhttp": "ceiling: asyncio protocol + llhttp, constant answer",
                 "llhttp-proxy": "ceiling: llhttp protocol + orchd's upstream pool, "
                                 "no gateway logic"}[kind]
        return Row(label, port, "/", proc)

    def start_orchd(self, backend: int, name: str, access_log: bool,
                    tree: Path | None = None) -> Row:
        port = free_port()
        d = self.tmp / name
        d.mkdir()
        config = d / "orchestrator.yaml"
        config.write_text(f"""server:
  access_log: {str(access_log).lower()}
log_level: INFO
endpoints:
  - name: bench
    url: http://127.0.0.1:{backend}
    methods: [GET, POST]
    timeout: 10
    health_check_path: /health
health_check:
  enabled: true
  interval: 1
  timeout: 1
circuit_breaker:
  failure_threshold: 5
""")
        flags = ["--config", str(config), "--port", str(port),
                 "--state-dir", str(d / "state"), "--control-socket", str(d / "s.sock")]
        if tree is None:
            proc = self.spawn(name, PROXY_CPU, [str(ROOT / ".venv" / "bin" / "orchd"), *flags])
        else:  # another checkout (built in place): its orchd package comes first on the path
            proc = self.spawn(name, PROXY_CPU, [str(PY), "-m", "orchd", *flags],
                              env={"PYTHONPATH": str(tree)})
        self.wait_http(proc, f"http://127.0.0.1:{port}/health/ready")
        # Measure it as it runs in production: metrics served, the target actively checked.
        self.wait_http(proc, f"http://127.0.0.1:{port}/metrics")
        deadline = time.monotonic() + 20
        while True:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/health/endpoints/bench", timeout=2) as r:
                if json.load(r).get("status") == "healthy":
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: the health checks never marked the backend healthy")
            time.sleep(0.2)
        label = "orchd" + ("" if access_log else ", access log off")
        if tree is not None:
            label += f" ({tree.name})"
        return Row(label, port, "/orchestrator/bench/", proc)

    # -- load

    def wrk(self, url: str, seconds: float, connections: int, proc: Proc | None = None,
            cpu: int = LOAD_CPU) -> Result:
        argv = self.taskset(cpu, ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s",
                                  "--latency", "--timeout", "5s", url])
        before = proc.cpu_seconds() if proc is not None else 0.0
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        res = parse_wrk(out)
        if proc is not None and res.requests:
            res.cpu_us = (proc.cpu_seconds() - before) * 1e6 / res.requests
        return res

    def check(self, row: Row) -> None:
        for name, size in SIZES.items():
            url = f"http://127.0.0.1:{row.port}{row.prefix}{name}"
            with urllib.request.urlopen(url, timeout=5) as r:
                body = r.read()
            if r.status != 200 or len(body) != size:
                raise SystemExit(f"{row.label}: {url} answered {r.status}, {len(body)} bytes")


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def _us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> Result:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _us(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _us(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors = sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    m = re.search(r"(\d+) requests in", out)
    return Result(rps, p50, p99, errors, non2xx, int(m.group(1)) if m else 0)


def fmt_us(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def _cpu(res: list[Result]) -> float | None:
    values = [r.cpu_us for r in res if r.cpu_us is not None]
    return statistics.median(values) if values else None


def table(rows: list[Row], nginx: Row, caddy: Row) -> Iterator[str]:
    """Throughput ratios as measured, and CPU per request: on a shared machine a proxy may
    get less than its whole core, and CPU time per request does not depend on that."""
    yield ("| proxy (1 core) | body | req/s | p50 | p99 | errors / non-2xx "
           "| ratio to nginx | ratio to Caddy | CPU µs/req | CPU ratio to Caddy |")
    yield "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for size in SIZES:
        ref_n = statistics.median(r.rps for r in nginx.results[size])
        ref_c = statistics.median(r.rps for r in caddy.results[size])
        cpu_c = _cpu(caddy.results[size])
        for row in rows:
            res = row.results[size]
            rps = statistics.median(r.rps for r in res)
            p50 = statistics.median(r.p50_us for r in res)
            p99 = statistics.median(r.p99_us for r in res)
            err = sum(r.errors for r in res)
            bad = sum(r.non2xx for r in res)
            cpu = _cpu(res)
            cpu_cells = "| - | - |"
            if cpu is not None:
                # > 1 means this row spends less CPU per request than Caddy
                rel = f"{cpu_c / cpu:.2f}" if cpu_c else "-"
                cpu_cells = f"| {cpu:.0f} | {rel} |"
            yield (f"| {row.label} | {SIZE_LABEL[size]} | {rps:,.0f} | {fmt_us(p50)} "
                   f"| {fmt_us(p99)} | {err} / {bad} | {rps / ref_n:.2f} | {rps / ref_c:.2f} "
                   + cpu_cells)


def c1_table(c1: dict[str, list[Result]], direct: str) -> Iterator[str]:
    yield "| path | req/s | p50 | p99 | p50 added vs direct |"
    yield "|---|---:|---:|---:|---:|"
    base = statistics.median(r.p50_us for r in c1[direct])
    for label, res in c1.items():
        p50 = statistics.median(r.p50_us for r in res)
        yield (f"| {label} | {statistics.median(r.rps for r in res):,.0f} | {fmt_us(p50)} "
               f"| {fmt_us(statistics.median(r.p99_us for r in res))} "
               f"| {'-' if label == direct else fmt_us(p50 - base)} |")


def run(args: argparse.Namespace) -> int:
    bench = Bench(args)
    try:
        print(f"load average at start: {loadavg()}", flush=True)
        backend_proc = bench.start_backend()
        backend = backend_proc.port
        direct = Row("none (wrk straight at the backend)", backend, "/")
        nginx = bench.start_nginx(backend)
        caddy = bench.start_caddy(backend)
        bare = bench.start_bare(backend)
        orchd = bench.start_orchd(backend, "orchd", access_log=True)
        quiet = bench.start_orchd(backend, "orchd-nolog", access_log=False)
        rows = [direct, nginx, caddy, bare, orchd, quiet]
        if args.compare is not None:  # A/B: the same rows from another checkout, interleaved
            rows += [bench.start_orchd(backend, "orchd-b", True, args.compare),
                     bench.start_orchd(backend, "orchd-b-nolog", False, args.compare)]
        if args.ceiling:
            rows += [bench.start_ceiling("aiohttp"), bench.start_ceiling("llhttp"),
                     bench.start_ceiling("llhttp-proxy", backend)]
        for row in rows:
            bench.check(row)
            for size in SIZES:  # warm up: connections, caches, the first allocations
                bench.wrk(f"http://127.0.0.1:{row.port}{row.prefix}{size}", 1, args.connections)
        for rnd in range(args.rounds):
            order = rows if rnd % 2 == 0 else list(reversed(rows))
            for size in SIZES:
                for row in order:
                    url = f"http://127.0.0.1:{row.port}{row.prefix}{size}"
                    res = bench.wrk(url, args.duration, args.connections, row.proc)
                    row.results.setdefault(size, []).append(res)
            for row in (orchd, quiet):
                assert row.proc is not None
                row.rss.append(row.proc.rss_kib())
            print(f"round {rnd + 1}/{args.rounds} done (load {loadavg()})", flush=True)

        c1: dict[str, list[Result]] = {}
        for _ in range(args.rounds):
            for row in (direct, orchd, quiet, nginx, caddy):
                url = f"http://127.0.0.1:{row.port}{row.prefix}small"
                c1.setdefault(row.label, []).append(bench.wrk(url, args.duration, 1))
        # The same with wrk, the backend and the proxy on one core: what the proxy's own work
        # adds, without the cost of waking an idle core for each hop (large on a VM).
        c1_one: dict[str, list[Result]] = {}
        if bench.pin:
            backend_proc.pin(PROXY_CPU)
            for _ in range(args.rounds):
                for row in (direct, orchd, quiet, nginx, caddy):
                    url = f"http://127.0.0.1:{row.port}{row.prefix}small"
                    c1_one.setdefault(row.label, []).append(
                        bench.wrk(url, args.duration, 1, cpu=PROXY_CPU))
            backend_proc.pin(LOAD_CPU)

        print()
        print(f"{args.rounds} interleaved round(s) of {args.duration:g} s per row and body, "
              f"wrk -t1 -c{args.connections}; medians. Load average at end: {loadavg()}")
        print()
        for line in table(rows, nginx, caddy):
            print(line)
        print()
        print("Concurrency 1 (wrk -t1 -c1, ~100 B body), medians:")
        print()
        for line in c1_table(c1, direct.label):
            print(line)
        print()
        if c1_one:
            print("Concurrency 1 with wrk, the backend and the proxy on one core (CPU "
                  f"{PROXY_CPU}), medians:")
            print()
            for line in c1_table(c1_one, direct.label):
                print(line)
            print()
        for row in (orchd, quiet):
            print(f"{row.label}: RSS after each round (KiB): {', '.join(map(str, row.rss))}")
        failed = [r for r in rows if any(x.errors or x.non2xx
                                         for res in r.results.values() for x in res)]
        for row in failed:
            print(f"ERRORS: {row.label}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        bench.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round: a smoke check")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--ceiling", action="store_true",
                   help="add rows that answer a constant body without proxying (an aiohttp "
                        "app, a bare asyncio protocol with llhttp) and one that forwards "
                        "through orchd's upstream pool from an llhttp protocol")
    p.add_argument("--compare", type=Path, metavar="DIR",
                   help="add orchd rows run from another checkout DIR (its request path built "
                        "in place: python setup.py build_ext --inplace), for A/B figures")
    args = p.parse_args()
    if args.compare is not None:
        args.compare = args.compare.resolve()
        if not (args.compare / "orchd" / "__init__.py").is_file():
            raise SystemExit(f"--compare {args.compare}: no orchd package there")
    if args.quick:
        args.rounds, args.duration = 1, 2
    for tool in ("wrk", "caddy", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: run `make bench-deps` (as root)")
    if not Path(nginx_bin()).exists():
        raise SystemExit("nginx is missing: run `make bench-deps` (as root)")
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(run(args))
    sys.exit(130)


if __name__ == "__main__":
    main()
