"""Per-core throughput and latency of orchd, side by side with nginx, Caddy and a bare
aiohttp proxy, all forwarding to the same nginx backend on loopback.

Every proxy runs alone on CPU 0 with one worker (nginx ``worker_processes 1``, Caddy
``GOMAXPROCS=1``, orchd is one process); wrk and the backend share CPU 1. Rounds are
interleaved (each round visits every proxy once per body size) and the table shows medians,
so slow drift of the machine hits every row alike: compare the ratios, not the absolute
figures. Every process started here is stopped by its pid; files live in one temp dir that
is removed at the end.

With ``--tls`` (the default; ``--no-tls`` skips it) orchd, nginx and Caddy also terminate
HTTPS on their own port, with one certificate made here (ECDSA P-256, or ``--tls-key rsa``
for RSA-2048), TLS 1.2 and 1.3, the same TLS 1.2 suites (orchd's, Mozilla intermediate) and
ALPN http/1.1, forwarding over plain HTTP to the same backend; the rows are interleaved with
the plain ones in every round and printed as their own table: keep-alive at both body sizes,
and a new connection (a full handshake: wrk does not resume sessions) for every request.

Then (``--no-two-core`` skips it, ``--two-core-only`` runs nothing else) the two-core table:
nginx (``worker_processes``), HAProxy (``nbthread``), Caddy (``GOMAXPROCS``) and orchd
(``server.workers``), each with 1 and with 2, all started at once and measured in interleaved
rounds the same way. Nothing is pinned: every server, wrk (one thread) and the backend (nginx,
``worker_processes 2``) may run on both cores, so they compete for the same two: the absolute
figures are below what two cores of its own give a server, and the ratios within one run are
what count (2 workers against Caddy's, and each server's scaling, 2 ÷ 1). It also shows how the
workers share the load (CPU time per worker process) and the memory of every process (RSS and
PSS: the supervisor's and each worker's).

Usage: python bench/throughput.py [--quick] [--rounds N] [--duration S] [--connections C]
                               [--ceiling] [--compare DIR] [--no-tls] [--tls-key KIND]
                               [--no-two-core | --two-core-only]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
PY = ROOT / ".venv" / "bin" / "python"
PROXY_CPU, LOAD_CPU = 0, 1
SIZES = {"small": 100, "big": 64 * 1024}
SIZE_LABEL = {"small": "~100 B", "big": "64 KiB"}
# The HTTPS modes: keep-alive at both sizes, then one full handshake per request.
TLS_MODES = {"small": "small", "big": "big", "handshake": "small"}
TLS_LABEL = {**SIZE_LABEL, "handshake": "~100 B, new connection each"}
CLOSE = "Connection: close"
# orchd's TLS 1.2 suites (orchd/tls.py CIPHERS_TLS12), in OpenSSL's and Go's spelling.
TLS12_OPENSSL = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
TLS12_GO = ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 "
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 "
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 "
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256")
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
    scheme: str = "http"
    results: dict[str, list[Result]] = field(default_factory=dict)
    rss: list[int] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="orchd-bench-"))
        os.chmod(self.tmp, 0o755)  # nginx workers (user nobody) read the backend's files
        self.procs: list[Proc] = []
        self.cert = self.tmp / "tls" / "cert.pem"
        self.key = self.tmp / "tls" / "key.pem"
        self.client_ssl: ssl.SSLContext | None = None  # trusts self.cert, once made
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
                with urllib.request.urlopen(url, timeout=2, context=self.client_ssl) as r:
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

    # -- TLS

    def make_certificate(self, kind: str) -> None:
        """One self-signed certificate for 127.0.0.1 and localhost, shared by every HTTPS
        row, and a client context that trusts it (for the readiness checks)."""
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if kind == "rsa":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orchd bench")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost")]), critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        self.cert.parent.mkdir()
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        os.chmod(self.key, 0o600)
        self.client_ssl = ssl.create_default_context(cafile=str(self.cert))

    def negotiated(self, row: Row) -> str:
        """What a default OpenSSL client offering ALPN http/1.1 gets from the row."""
        assert self.client_ssl is not None
        ctx = ssl.create_default_context(cafile=str(self.cert))
        ctx.set_alpn_protocols(["http/1.1"])
        with socket.create_connection(("127.0.0.1", row.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            cipher = tls.cipher()
            return (f"{tls.version()} {cipher[0] if cipher else '?'} "
                    f"ALPN {tls.selected_alpn_protocol()}")

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

    def start_nginx(self, backend: int, tls: bool = False) -> Row:
        port = free_port()
        name = "nginx-tls" if tls else "nginx"
        # orchd's choices: TLS 1.2 with its suites in its order, server preference, TLS 1.3
        # with OpenSSL's default suites, no compression, session tickets on (the defaults).
        https = f""" ssl;
    ssl_certificate {self.cert};
    ssl_certificate_key {self.key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {TLS12_OPENSSL};
    ssl_prefer_server_ciphers on;""" if tls else ";"
        conf = self.nginx_conf(name, f"""  upstream backend {{
    server 127.0.0.1:{backend};
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096{https}
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffer_size 16k;
      proxy_buffers 8 16k;
      proxy_busy_buffers_size 32k;
    }}
  }}""")
        proc = self.spawn(name, PROXY_CPU, [nginx_bin(), "-e", "stderr", "-c", str(conf)])
        scheme = "https" if tls else "http"
        self.wait_http(proc, f"{scheme}://127.0.0.1:{port}/health")
        return Row("nginx 1 worker" + (", HTTPS" if tls else ""), port, "/", proc, scheme)

    def start_caddy(self, backend: int, tls: bool = False) -> Row:
        port = free_port()
        name = "caddy-tls" if tls else "caddy"
        d = self.tmp / name
        d.mkdir()
        caddyfile = d / "Caddyfile"
        scheme = "https" if tls else "http"
        # HTTP/1.1 only (no h2, no h3 listener); TLS 1.2 with orchd's suites (Go picks the
        # order itself), TLS 1.3 with Go's fixed suites; ALPN http/1.1.
        https = f"""
  tls {self.cert} {self.key} {{
    protocols tls1.2 tls1.3
    ciphers {TLS12_GO}
    alpn http/1.1
  }}""" if tls else ""
        caddyfile.write_text(f"""{{
  admin off
  auto_https off
  storage file_system {d}/data
  servers {{
    protocols h1
  }}
}}
{scheme}://127.0.0.1:{port} {{{https}
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
        proc = self.spawn(name, PROXY_CPU, ["caddy", "run", "--config", str(caddyfile),
                                            "--adapter", "caddyfile"], env)
        self.wait_http(proc, f"{scheme}://127.0.0.1:{port}/health")
        return Row("Caddy GOMAXPROCS=1" + (", HTTPS" if tls else ""), port, "/", proc, scheme)

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
                    tree: Path | None = None, tls: bool = False) -> Row:
        port = free_port()
        d = self.tmp / name
        d.mkdir()
        config = d / "orchestrator.yaml"
        https = f"""
  tls:
    certificates:
      - {{cert_file: {self.cert}, key_file: {self.key}}}
    min_version: '1.2'""" if tls else ""
        config.write_text(f"""server:
  access_log: {str(access_log).lower()}{https}
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
        scheme = "https" if tls else "http"
        self.wait_http(proc, f"{scheme}://127.0.0.1:{port}/health/ready")
        # Measure it as it runs in production: metrics served, the target actively checked.
        self.wait_http(proc, f"{scheme}://127.0.0.1:{port}/metrics")
        deadline = time.monotonic() + 20
        while True:
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/health/endpoints/bench",
                                        timeout=2, context=self.client_ssl) as r:
                if json.load(r).get("status") == "healthy":
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: the health checks never marked the backend healthy")
            time.sleep(0.2)
        label = "orchd" + ("" if access_log else ", access log off") + (", HTTPS" if tls else "")
        if tree is not None:
            label += f" ({tree.name})"
        return Row(label, port, "/orchestrator/bench/", proc, scheme)

    # -- load

    def wrk(self, url: str, seconds: float, connections: int, proc: Proc | None = None,
            cpu: int = LOAD_CPU, header: str | None = None) -> Result:
        extra = ["-H", header] if header is not None else []
        argv = self.taskset(cpu, ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s",
                                  "--latency", "--timeout", "5s", *extra, url])
        before = proc.cpu_seconds() if proc is not None else 0.0
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        res = parse_wrk(out)
        if proc is not None and res.requests:
            res.cpu_us = (proc.cpu_seconds() - before) * 1e6 / res.requests
        return res

    def check(self, row: Row) -> None:
        for name, size in SIZES.items():
            url = f"{row.scheme}://127.0.0.1:{row.port}{row.prefix}{name}"
            with urllib.request.urlopen(url, timeout=5, context=self.client_ssl) as r:
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


def table(rows: list[Row], nginx: Row, caddy: Row,
          labels: dict[str, str] = SIZE_LABEL) -> Iterator[str]:
    """Throughput ratios as measured, and CPU per request: on a shared machine a proxy may
    get less than its whole core, and CPU time per request does not depend on that."""
    yield ("| proxy (1 core) | body | req/s | p50 | p99 | errors / non-2xx "
           "| ratio to nginx | ratio to Caddy | CPU µs/req | CPU ratio to Caddy |")
    yield "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for size in labels:
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
            yield (f"| {row.label} | {labels[size]} | {rps:,.0f} | {fmt_us(p50)} "
                   f"| {fmt_us(p99)} | {err} / {bad} | {rps / ref_n:.2f} | {rps / ref_c:.2f} "
                   + cpu_cells)


def tls_summary(orchd: Row, orchd_tls: Row, caddy_tls: Row) -> Iterator[str]:
    """orchd over HTTPS against its own plain HTTP (CPU per request) and against Caddy
    over HTTPS (req/s), on the keep-alive rows."""
    for size in SIZES:
        plain, tls = _cpu(orchd.results[size]), _cpu(orchd_tls.results[size])
        rps = statistics.median(r.rps for r in orchd_tls.results[size])
        ref = statistics.median(r.rps for r in caddy_tls.results[size])
        cpu = (f"{tls / plain:.2f}x ({tls:.0f} / {plain:.0f} µs)"
               if tls is not None and plain else "-")
        yield (f"* {SIZE_LABEL[size]}, keep-alive: orchd CPU per request, HTTPS ÷ HTTP = "
               f"{cpu} (target ≤ 1.5x); orchd req/s ÷ Caddy's over HTTPS = "
               f"{rps / ref:.2f} ({rps:,.0f} / {ref:,.0f}; target ≥ 1)")


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
        tls_rows: list[Row] = []
        if args.tls:  # HTTPS: the same certificate and TLS choices for the three
            bench.make_certificate(args.tls_key)
            tls_rows = [bench.start_nginx(backend, tls=True), bench.start_caddy(backend, tls=True),
                        bench.start_orchd(backend, "orchd-tls", True, tls=True)]
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
        negotiated: dict[str, str] = {}
        for row in tls_rows:
            bench.check(row)
            negotiated[row.label] = bench.negotiated(row)
            for mode, path in TLS_MODES.items():
                bench.wrk(f"https://127.0.0.1:{row.port}{row.prefix}{path}", 1, args.connections,
                          header=CLOSE if mode == "handshake" else None)
        for rnd in range(args.rounds):
            order = rows if rnd % 2 == 0 else list(reversed(rows))
            for size in SIZES:
                for row in order:
                    url = f"http://127.0.0.1:{row.port}{row.prefix}{size}"
                    res = bench.wrk(url, args.duration, args.connections, row.proc)
                    row.results.setdefault(size, []).append(res)
            tls_order = tls_rows if rnd % 2 == 0 else list(reversed(tls_rows))
            for mode, path in TLS_MODES.items():
                for row in tls_order:
                    url = f"https://127.0.0.1:{row.port}{row.prefix}{path}"
                    res = bench.wrk(url, args.duration, args.connections, row.proc,
                                    header=CLOSE if mode == "handshake" else None)
                    row.results.setdefault(mode, []).append(res)
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
        if tls_rows:
            nginx_tls, caddy_tls, orchd_tls = tls_rows
            print(f"HTTPS ({args.tls_key.upper()} certificate, "
                  f"{'RSA-2048' if args.tls_key == 'rsa' else 'P-256'}; the proxy terminates "
                  "TLS and forwards over plain HTTP), the same rounds; the last rows open a "
                  f"new connection for every request (wrk -H '{CLOSE}': one full handshake "
                  "each, so req/s = handshakes/s):")
            print()
            for line in table(tls_rows, nginx_tls, caddy_tls, TLS_LABEL):
                print(line)
            print()
            for line in tls_summary(orchd, orchd_tls, caddy_tls):
                print(line)
            print()
            for label, what in negotiated.items():
                print(f"{label}: negotiated with an OpenSSL client: {what}")
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
        failed = [r for r in rows + tls_rows if any(x.errors or x.non2xx
                                         for res in r.results.values() for x in res)]
        for row in failed:
            print(f"ERRORS: {row.label}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        bench.cleanup()


# -- two cores, shared: every server with 1 and 2 workers, all processes on both cores

TWO_CORES = f"{PROXY_CPU},{LOAD_CPU}"
MIB = 1024.0


def proc_ticks(pid: int) -> int:
    """User + system CPU ticks of one process (all its threads), 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def proc_kib(pid: int, path: str, key: str) -> int:
    """A ``key: N kB`` line of /proc/PID/PATH (status's VmRSS, smaps_rollup's Pss)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return 0


class SharedCores(Bench):
    """The servers of the one-core table started with ``workers`` workers (threads), every
    process, wrk and the backend included, allowed on both CPUs and pinned to neither.

    One instance per worker count (its own temp dir, so each start_* names its files as
    usual); ``nginx_conf`` and ``spawn`` put the count where each server takes it: nginx's
    ``worker_processes``, Caddy's ``GOMAXPROCS``, orchd's ``server.workers`` (left out at 1,
    the default) and HAProxy's ``nbthread``."""

    def __init__(self, args: argparse.Namespace, workers: int) -> None:
        super().__init__(args)
        self.workers = workers

    def taskset(self, cpu: int, argv: list[str]) -> list[str]:
        # Both cores (a no-op on a 2-CPU machine; on a larger one, the same two CPUs).
        return ["taskset", "-c", TWO_CORES, *argv] if self.pin else argv

    def nginx_conf(self, name: str, body: str) -> Path:
        conf = super().nginx_conf(name, body)
        conf.write_text(conf.read_text().replace(
            "worker_processes 1;", f"worker_processes {self.workers};", 1))
        return conf

    def spawn(self, name: str, cpu: int, argv: list[str],
              env: dict[str, str] | None = None) -> Proc:
        if env is not None and "GOMAXPROCS" in env:  # Caddy
            env = {**env, "GOMAXPROCS": str(self.workers)}
        if name.startswith("orchd") and self.workers > 1:
            config = Path(argv[argv.index("--config") + 1])
            config.write_text(config.read_text().replace(
                "server:\n", f"server:\n  workers: {self.workers}\n", 1))
        return super().spawn(name, cpu, argv, env)

    def start_haproxy(self, backend: int) -> Row:
        """HAProxy in the foreground, ``nbthread`` threads in one process, idle connections
        to the backend shared by every client connection (as nginx's ``keepalive`` pool)."""
        port = free_port()
        d = self.tmp / "haproxy"
        d.mkdir()
        conf = d / "haproxy.cfg"
        conf.write_text(f"""global
  nbthread {self.workers}
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
frontend bench
  bind 127.0.0.1:{port} backlog 4096
  default_backend backend
backend backend
  server backend 127.0.0.1:{backend}
""")
        proc = self.spawn("haproxy", PROXY_CPU, ["haproxy", "-db", "-f", str(conf)])
        self.wait_http(proc, f"http://127.0.0.1:{port}/health")
        return Row(f"HAProxy nbthread {self.workers}", port, "/", proc)


@dataclass
class Server:
    """One server's rows in the two-core table: its 1-worker and its 2-worker instance."""
    name: str
    rows: dict[int, Row]
    # per body size and worker count: each worker's share of the workers' CPU, per round
    split: dict[tuple[str, int], list[list[float]]] = field(default_factory=dict)
    memory: dict[int, list[tuple[str, int, int]]] = field(default_factory=dict)


def process_roles(proc: Proc) -> list[tuple[int, str]]:
    """Every process of a server's tree with its role, whichever thread started it (orchd's
    fork server is started from a thread other than the main one, so ``Proc.pids`` misses
    it): the supervisor (nginx's master, orchd's), its helpers (multiprocessing's fork server
    and resource tracker), and the workers, the processes without children that serve; a
    server of one process (Caddy, HAProxy: threads) is that ``process``."""
    kids: dict[int, list[int]] = {}
    todo = [proc.pid]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            found = []
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    found += Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            kids[pid] = [int(k) for k in found]
            todo.extend(kids[pid])
    if len(kids) <= 1:
        return [(proc.pid, "process")]
    out = []
    for pid, children in kids.items():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        role = ("supervisor" if pid == proc.pid else
                "resource tracker" if "resource_tracker" in cmd else
                ("fork server" if "forkserver" in cmd else "helper") if children else
                "worker")
        out.append((pid, role))
    order = ("supervisor", "fork server", "resource tracker", "helper", "worker")
    return sorted(out, key=lambda pr: (order.index(pr[1]), pr[0]))


def memory_of(proc: Proc) -> list[tuple[str, int, int]]:
    """(role, RSS KiB, PSS KiB) of a server's processes: PSS shares the pages forked workers
    still have in common with their parent among them, so PSS adds up and RSS does not."""
    return [(role, proc_kib(pid, "status", "VmRSS:"), proc_kib(pid, "smaps_rollup", "Pss:"))
            for pid, role in process_roles(proc)]


def _median_rps(row: Row, size: str) -> float:
    return statistics.median(r.rps for r in row.results[size])


def two_core_table(direct: Row, servers: list[Server], caddy: Server) -> Iterator[str]:
    yield ("| server (2 shared cores) | body | req/s | p50 | p99 | errors / non-2xx "
           "| CPU µs/req | ratio to Caddy, same count | scaling 2 ÷ 1 |")
    yield "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for size in SIZES:
        rows = [(direct, None, None)] + [(row, server, n) for server in servers
                                         for n, row in sorted(server.rows.items())]
        for row, server, n in rows:
            res = row.results[size]
            rps = _median_rps(row, size)
            cpu = _cpu(res)
            ratio = scaling = "-"
            if server is not None and n is not None:
                if n in caddy.rows:
                    ratio = f"{rps / _median_rps(caddy.rows[n], size):.2f}"
                if n > 1 and 1 in server.rows:
                    scaling = f"{rps / _median_rps(server.rows[1], size):.2f}"
            yield (f"| {row.label} | {SIZE_LABEL[size]} | {rps:,.0f} "
                   f"| {fmt_us(statistics.median(r.p50_us for r in res))} "
                   f"| {fmt_us(statistics.median(r.p99_us for r in res))} "
                   f"| {sum(r.errors for r in res)} / {sum(r.non2xx for r in res)} "
                   f"| {'-' if cpu is None else f'{cpu:.0f}'} | {ratio} | {scaling} |")


def two_core_targets(orchd: Server, caddy: Server) -> Iterator[str]:
    """The targets of the two-core table, each read from this one run."""
    for size in SIZES:
        if 2 not in orchd.rows:
            yield f"* {SIZE_LABEL[size]}: no orchd row with 2 workers: no figures"
            continue
        o1, o2 = (_median_rps(orchd.rows[n], size) for n in (1, 2))
        c1, c2 = (_median_rps(caddy.rows[n], size) for n in (1, 2))
        yield (f"* {SIZE_LABEL[size]}: orchd 2 workers ÷ Caddy GOMAXPROCS=2 = {o2 / c2:.2f} "
               f"({o2:,.0f} / {c2:,.0f}; target ≥ 1.5); scaling 2 ÷ 1: orchd {o2 / o1:.2f}, "
               f"Caddy {c2 / c1:.2f} (target: orchd's ≥ Caddy's)")


def split_lines(servers: list[Server]) -> Iterator[str]:
    for server in servers:
        for (size, n), rounds in sorted(server.split.items()):
            busiest = [max(shares) / sum(shares) for shares in rounds if sum(shares)]
            each = " | ".join(" / ".join(f"{s:.0%}" for s in shares) for shares in rounds)
            yield (f"* {server.rows[n].label}, {SIZE_LABEL[size]}: each worker's share of all "
                   f"the server's CPU, per round: {each} (the rest: its supervisor and "
                   f"helpers); the busiest worker's share of the workers' CPU, median: "
                   f"{statistics.median(busiest) if busiest else 0:.0%}")


def memory_table(servers: list[Server]) -> Iterator[str]:
    yield "| server | processes | RSS each (MiB) | PSS each (MiB) | PSS total (MiB) |"
    yield "|---|---|---:|---:|---:|"
    for server in servers:
        for n, procs in sorted(server.memory.items()):
            roles = ", ".join(role for role, _, _ in procs)
            rss = " / ".join(f"{r / MIB:.1f}" for _, r, _ in procs)
            pss = " / ".join(f"{p / MIB:.1f}" for _, _, p in procs)
            total = sum(p for _, _, p in procs) / MIB
            yield f"| {server.rows[n].label} | {roles} | {rss} | {pss} | {total:.1f} |"


def log_problems(row: Row) -> list[str]:
    """Lines of a server's own log that speak of a failure (orchd's log: its workers')."""
    if row.proc is None or not row.proc.log.exists():
        return []
    words = ("Traceback", "ERROR", "CRITICAL", "[alert]", "[emerg]", "[crit]", "panic")
    return [line for line in row.proc.log.read_text(errors="replace").splitlines()
            if any(w in line for w in words)]


def orchd_build() -> str:
    """Which orchd the rows run (PYTHONPATH may put another tree first) and whether its
    request path is compiled (mypyc's extension modules) or pure Python."""
    out = subprocess.run([str(PY), "-c", "import orchd.upstream as u; print(u.__file__)"],
                         capture_output=True, text=True, cwd=tempfile.gettempdir())
    path = out.stdout.strip()
    if not path:
        return f"orchd does not import: {out.stderr.strip()[-300:]}"
    kind = "compiled (mypyc)" if path.endswith(".so") else "pure Python"
    return f"orchd from {Path(path).parent.parent}, {kind}"


def run_two_core(args: argparse.Namespace) -> int:
    """The two-core table: nginx, HAProxy, Caddy and orchd each with 1 and with 2 workers
    (threads), all started at once and measured in interleaved rounds like the one-core
    table, with wrk and the backend on the same two cores, none pinned."""
    if len(os.sched_getaffinity(0) & {PROXY_CPU, LOAD_CPU}) < 2:
        print(f"two-core table skipped: CPUs {TWO_CORES} are not both available")
        return 0
    benches = {n: SharedCores(args, n) for n in (1, 2)}
    notes: list[str] = []
    try:
        print(f"two-core table: load average at start: {loadavg()}; {orchd_build()}",
              flush=True)
        backend_proc = benches[2].start_backend()
        backend = backend_proc.port
        direct = Row("none (wrk straight at the backend)", backend, "/")
        nginx, caddy = Server("nginx", {}), Server("Caddy", {})
        haproxy, orchd = Server("HAProxy", {}), Server("orchd", {})
        for n, bench in benches.items():
            nginx.rows[n] = bench.start_nginx(backend)
            nginx.rows[n].label = f"nginx worker_processes {n}"
            caddy.rows[n] = bench.start_caddy(backend)
            caddy.rows[n].label = f"Caddy GOMAXPROCS={n}"
            if shutil.which("haproxy"):
                haproxy.rows[n] = bench.start_haproxy(backend)
            try:
                row = bench.start_orchd(backend, "orchd", access_log=True)
            except SystemExit as exc:
                why = " ".join(str(exc).split())
                notes.append(f"orchd with workers: {n} did not start: {why[-600:]}")
                continue
            assert row.proc is not None
            deadline = time.monotonic() + 10  # a supervisor and its n workers
            while n > 1 and time.monotonic() < deadline and sum(
                    role == "worker" for _, role in process_roles(row.proc)) < n:
                time.sleep(0.1)
            if n > 1 and sum(role == "worker" for _, role in process_roles(row.proc)) < n:
                notes.append(f"orchd with workers: {n} runs no {n} worker processes "
                             f"({', '.join(r for _, r in process_roles(row.proc))}): this "
                             "orchd has no server.workers, its row is left out")
                continue
            row.label = f"orchd workers: {n}"
            orchd.rows[n] = row
        if not haproxy.rows:
            notes.append("haproxy is missing (apt-get install haproxy): no HAProxy rows")
        servers = [s for s in (nginx, haproxy, caddy, orchd) if s.rows]
        bench = benches[2]
        plan: list[tuple[Row, Server | None, int]] = [(direct, None, 0)] + [
            (row, s, n) for s in servers for n, row in sorted(s.rows.items())]
        every = [row for row, _, _ in plan]
        for row in every:
            bench.check(row)
            for size in SIZES:  # warm up
                bench.wrk(f"http://127.0.0.1:{row.port}{row.prefix}{size}", 1, args.connections)
        for rnd in range(args.rounds):
            order = plan if rnd % 2 == 0 else list(reversed(plan))
            for size in SIZES:
                for row, server, n in order:
                    roles = process_roles(row.proc) if row.proc is not None else []
                    before = [proc_ticks(pid) for pid, _ in roles]
                    res = bench.wrk(f"http://127.0.0.1:{row.port}{row.prefix}{size}",
                                    args.duration, args.connections)
                    row.results.setdefault(size, []).append(res)
                    used = [proc_ticks(pid) - b
                            for (pid, _), b in zip(roles, before, strict=True)]
                    if roles and res.requests:  # all its processes, the workers' too
                        res.cpu_us = sum(used) / CLK_TCK * 1e6 / res.requests
                    workers = [u for (_, role), u in zip(roles, used, strict=True)
                               if role == "worker"]
                    if server is not None and len(workers) > 1 and sum(used) > 0:
                        server.split.setdefault((size, n), []).append(
                            [u / sum(used) for u in workers])
            print(f"two-core round {rnd + 1}/{args.rounds} done (load {loadavg()})", flush=True)
        for server in servers:
            for n, row in server.rows.items():
                assert row.proc is not None
                server.memory[n] = memory_of(row.proc)

        print()
        print(f"Two cores, shared: each server unpinned over both cores (CPUs {TWO_CORES}), "
              "and wrk and the backend (nginx, worker_processes 2) unpinned on the same two: "
              "everything competes for the same 2 cores, so req/s are below what two cores "
              "of its own give a server; the ratios within this run are what count. "
              f"{args.rounds} interleaved round(s) of {args.duration:g} s per row and body, "
              f"wrk -t1 -c{args.connections}; medians; CPU µs/req is all the server's "
              f"processes. Load average at end: {loadavg()}")
        print()
        for line in two_core_table(direct, servers, caddy):
            print(line)
        print()
        for line in two_core_targets(orchd, caddy):
            print(line)
        print("* per core: orchd's 'ratio to nginx' at ~100 B in the one-core table "
              "(target ≥ 0.5)")
        print()
        print("How evenly the workers share the load (CPU time of each worker process in "
              "each wrk run; 50% is an even split of two):")
        print()
        for line in split_lines(servers):
            print(line)
        print()
        print("Memory after the rounds (RSS counts the pages forked workers share with their "
              "parent in each of them; PSS divides them):")
        print()
        for line in memory_table(servers):
            print(line)
        print()
        for server in servers:
            for row in server.rows.values():
                problems = log_problems(row)
                if problems:
                    notes.append(f"{row.label}: {len(problems)} error line(s) in its log, "
                                 f"the first: {problems[0][:300]}")
        for note in notes:
            print(f"note: {note}")
        failed = [r for r in every if any(x.errors or x.non2xx
                                          for res in r.results.values() for x in res)]
        for row in failed:
            print(f"ERRORS: {row.label}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        for bench in reversed(benches.values()):
            bench.cleanup()


def run_all(args: argparse.Namespace) -> int:
    """The one-core tables, then the two-core table (each flag may leave one out)."""
    status = 0 if args.two_core_only else run(args)
    if args.two_core or args.two_core_only:
        status = run_two_core(args) or status
    return status


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
    p.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True,
                   help="HTTPS rows for orchd, nginx and Caddy (on by default; --no-tls "
                        "skips them): keep-alive at both sizes and a new connection per "
                        "request")
    p.add_argument("--tls-key", choices=("ecdsa", "rsa"), default="ecdsa",
                   help="the certificate's key: ECDSA P-256 (default) or RSA-2048")
    p.add_argument("--two-core", action=argparse.BooleanOptionalAction, default=True,
                   help="after the one-core tables, the two-core table (on by default; "
                        "--no-two-core skips it): nginx, HAProxy, Caddy and orchd with 1 and "
                        "2 workers, every process unpinned on the same two cores")
    p.add_argument("--two-core-only", action="store_true",
                   help="only the two-core table")
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
        sys.exit(run_all(args))
    sys.exit(130)


if __name__ == "__main__":
    main()
