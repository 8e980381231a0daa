"""System calls per proxied request: orchd next to nginx, counted by perf and by strace.

Same set-up as bench/throughput.py (whose process helpers it reuses): an nginx backend,
nginx (one worker, keep-alive to the backend) and orchd proxying to it, wrk with one thread
and 64 keep-alive connections. Each proxy in turn gets a counter attached to all its
processes and threads while wrk sends a fixed number of requests (a Lua script stops wrk at
that count); the calls counted are divided by the requests wrk saw answered. Two counters:
``perf stat`` on the ``syscalls:sys_enter_*`` tracepoints counts in the kernel and leaves
the timing as it is; ``strace -c -f`` also says which calls failed (a read that found
nothing: EAGAIN), but stops the process at every call, so more events are ready at each
``epoll_wait`` than at full speed and that call is undercounted. Counts, not speed: what a
call costs is in the throughput benchmark.

A request's minimum on a proxy is four calls: one read from the client, one write to the
upstream, one read of the answer, one write to the client. Everything above that (a read
that found nothing, ``epoll_ctl`` changes, timers, ``getpid``) is what this benchmark is for.

Usage: python bench/syscalls.py [--requests N] [--connections C] [--case CASE]...
                               [--tool perf|strace]... [--tree DIR]...
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from throughput import LOAD_CPU, Bench, Proc, Row, parse_wrk


@dataclass(frozen=True)
class Case:
    label: str
    path: str  # the backend's file
    requests: int  # how many wrk sends
    body: int = 0  # a request body of this many bytes (POST), or none (GET)


# The backend's files are bench/throughput.py's (small: ~100 B, big: 64 KiB) and one of
# 1 MiB, over the proxy's gather limit: it streams.
HUGE = 1024 * 1024
CASES = {
    "small": Case("GET, ~100 B answer", "small", 20_000),
    "post": Case("POST ~100 B body, ~100 B answer", "small", 20_000, body=100),
    "big": Case("GET, 64 KiB answer", "big", 10_000),
    "huge": Case("GET, 1 MiB answer (streamed)", "huge", 2_000),
}

# wrk's thread stops sending after ``n`` answers (this benchmark runs one thread) and
# leaves a file, at which wrk is interrupted (SIGINT: it prints what it counted, instead of
# sleeping out its duration).
WRK_STOP_AFTER = """
{request}
local n, seen = {n}, 0
function response(status, headers, body)
  seen = seen + 1
  if seen == n then
    wrk.thread:stop()
    io.open("{flag}", "w"):close()
  end
end
"""


# perf counts in the kernel and leaves the timing alone; strace stops the process at every
# call (several times slower: more events wait at each epoll_wait), but says which failed.
TOOLS = {"perf": "perf stat -e 'syscalls:sys_enter_*'", "strace": "strace -c -f"}


def parse_strace(text: str) -> dict[str, tuple[int, int]]:
    """``strace -c`` summary: syscall -> (calls, errors)."""
    counts: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) not in (5, 6) or not parts[3].isdigit():
            continue
        name = parts[-1]
        if name == "total":
            continue
        errors = int(parts[4]) if len(parts) == 6 else 0
        counts[name] = (int(parts[3]), errors)
    return counts


def parse_perf(text: str) -> dict[str, tuple[int, int]]:
    """``perf stat -x,`` of the ``syscalls:sys_enter_*`` tracepoints: syscall -> (calls, 0)
    (perf counts entries; whether a call failed is strace's to say)."""
    counts: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split(",")
        if (len(parts) > 2 and parts[2].startswith("syscalls:sys_enter_")
                and parts[0].isdigit() and int(parts[0])):
            counts[parts[2].removeprefix("syscalls:sys_enter_")] = (int(parts[0]), 0)
    return counts


def counter(tool: str, out: Path, pids: list[int]) -> list[str]:
    """The command that counts the system calls of ``pids`` (all their threads) into
    ``out`` until it is interrupted."""
    if tool == "strace":
        argv = ["strace", "-c", "-f", "-o", str(out)]
        for pid in pids:
            argv += ["-p", str(pid)]
        return argv
    return ["perf", "stat", "-x,", "-o", str(out), "-e", "syscalls:sys_enter_*",
            "-p", ",".join(map(str, pids))]


class SyscallBench(Bench):
    """bench/throughput.py's set-up, with a backend that also serves 1 MiB and answers POST
    as GET (nginx answers a POST to a static file with 405)."""

    def nginx_conf(self, name: str, body: str) -> Path:
        if name == "backend":
            body = body.replace("    location / {", "    error_page 405 =200 $uri;\n"
                                "    location / {", 1)
        return super().nginx_conf(name, body)

    def start_backend(self) -> Proc:
        proc = super().start_backend()
        huge = self.tmp / "www" / "huge"  # read by nginx at each request: added now
        huge.write_bytes(b"x" * (HUGE - 1) + b"\n")
        os.chmod(huge, 0o644)
        return proc


def wrk_script(case: Case) -> str:
    if not case.body:
        return ""
    return (f'wrk.method = "POST"\nwrk.body = string.rep("x", {case.body})\n'
            'wrk.headers["Content-Type"] = "application/octet-stream"')


def trace(bench: Bench, tool: str, proc: Proc, url: str, case: Case, requests: int,
          connections: int) -> tuple[int, dict[str, tuple[int, int]]]:
    """Requests answered, and the system calls of ``proc`` (all its processes and threads)
    while wrk sent them."""
    out = bench.tmp / f"{tool}-{proc.name}.txt"
    pids = proc.pids()
    # (warming up, "none": a counter that counts nothing, to run the same steps)
    argv = counter(tool, out, pids) if tool in TOOLS else ["sleep", "600"]
    count = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        assert count.stderr is not None
        if tool == "strace":  # it says "Process N attached" for each before it counts
            attached = 0
            deadline = time.monotonic() + 10
            while attached < len(pids) and time.monotonic() < deadline:
                line = count.stderr.readline()
                if not line:
                    break
                attached += b"attached" in line
        elif tool == "perf":  # it says nothing: give it time to open its ~700 counters
            time.sleep(2)
        flag = bench.tmp / f"done-{time.monotonic_ns()}"
        script = flag.with_suffix(".lua")
        script.write_text(WRK_STOP_AFTER.format(request=wrk_script(case), n=requests,
                                                flag=flag))
        # The duration only bounds a run that stalls: wrk stops at the count first.
        argv = bench.taskset(LOAD_CPU, ["wrk", "-t1", f"-c{connections}", "-d120s",
                                        "--latency", "--timeout", "5s", "-s", str(script),
                                        url])
        wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        while not flag.exists() and wrk.poll() is None:
            time.sleep(0.05)
        wrk.send_signal(signal.SIGINT)
        stdout, _ = wrk.communicate(timeout=30)
        res = parse_wrk(stdout)
    finally:
        count.send_signal(signal.SIGINT)
        try:
            count.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            count.kill()
            count.wait(5)
    if res.errors or res.non2xx:
        raise SystemExit(f"{proc.name}: {res.errors} socket errors, {res.non2xx} non-2xx")
    if tool not in TOOLS:
        return res.requests, {}
    text = out.read_text()
    return res.requests, parse_strace(text) if tool == "strace" else parse_perf(text)


def table(results: dict[str, tuple[int, dict[str, tuple[int, int]]]]) -> list[str]:
    """Calls per request by syscall, one column per proxy; errors (EAGAIN, mostly) apart."""
    labels = list(results)
    names = sorted({n for _, counts in results.values() for n in counts},
                   key=lambda n: -max(c.get(n, (0, 0))[0] / r for r, c in results.values()))
    lines = ["| syscall | " + " | ".join(labels) + " |",
             "|---|" + "---:|" * len(labels)]
    totals = [0.0] * len(labels)
    for name in names:
        cells = []
        for i, label in enumerate(labels):
            requests, counts = results[label]
            calls, errors = counts.get(name, (0, 0))
            totals[i] += calls / requests
            cell = f"{calls / requests:.3f}"
            if errors:
                cell += f" ({errors / requests:.3f} failed)"
            cells.append(cell)
        if all(float(c.split()[0]) < 0.001 for c in cells):
            continue
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{t:.2f}**" for t in totals) + " |")
    lines.append("| requests counted | " + " | ".join(
        f"{results[label][0]:,}" for label in labels) + " |")
    return lines


def run(args: argparse.Namespace) -> int:
    bench = SyscallBench(args)
    try:
        backend = bench.start_backend().port
        rows: list[Row] = [bench.start_nginx(backend)]
        rows += [bench.start_orchd(backend, f"orchd-{i}", access_log=True, tree=tree)
                 for i, tree in enumerate(args.trees or [None])]
        for row in rows:
            for case in args.cases:  # warm up: connections, caches, the first allocations
                assert row.proc is not None
                trace(bench, "none", row.proc, f"http://127.0.0.1:{row.port}{row.prefix}"
                      f"{case.path}", case, min(case.requests, 5_000), args.connections)
        for case in args.cases:
            for tool in args.tools:
                results: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {}
                requests = args.requests or case.requests
                for row in rows:
                    assert row.proc is not None
                    url = f"http://127.0.0.1:{row.port}{row.prefix}{case.path}"
                    results[row.label] = trace(bench, tool, row.proc, url, case, requests,
                                               args.connections)
                print(f"{case.label}: system calls per request, {TOOLS[tool]} on each proxy "
                      f"while wrk -t1 -c{args.connections} sent {requests:,} requests, "
                      "keep-alive both sides:")
                print()
                for line in table(results):
                    print(line)
                print()
        return 0
    finally:
        bench.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=0,
                   help="requests per count (default: 20,000 for ~100 B answers, fewer for "
                        "larger ones)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--case", dest="cases", action="append", choices=tuple(CASES),
                   help="what to send (repeat for several; default: all)")
    p.add_argument("--tool", dest="tools", action="append", choices=tuple(TOOLS),
                   help="how to count (repeat for both; default: both, perf first)")
    p.add_argument("--tree", dest="trees", type=Path, metavar="DIR", action="append",
                   help="run orchd from another checkout DIR (its request path built in "
                        "place: python setup.py build_ext --inplace); repeat for a column "
                        "per checkout (before and after)")
    args = p.parse_args()
    args.tls = False
    for tree in args.trees or ():
        if not (tree / "orchd" / "__init__.py").is_file():
            raise SystemExit(f"--tree {tree}: no orchd package there")
    args.trees = [tree.resolve() for tree in args.trees or ()]
    args.tools = args.tools or list(TOOLS)
    args.cases = [CASES[c] for c in args.cases or CASES]
    for tool in ("wrk", *args.tools, "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: run `make bench-deps` (as root)")
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(run(args))
    sys.exit(130)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
