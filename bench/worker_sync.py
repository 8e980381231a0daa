"""What a change costs with ``server.workers``: the supervisor's line to its workers.

Two parts, both printed as one table:

1. The line itself, in one process: a state message (the pickled state of a registry of
   ``--endpoints`` endpoints, as ``orchd.workers.supervisor`` sends it) sent to an echoing
   peer task and acknowledged, over a Unix socket pair (what orchd uses) and over a pair of
   pipes, ``--rounds`` times each; and the same acknowledgement with a one-byte message,
   which is the least a shared-memory table with a notification would also pay.
2. End to end: a real orchd (the tree this file is in) with ``workers: 1`` and
   ``workers: 2``: ``--registrations`` API registrations one after the other, each answered
   only after every worker applied it; the median and p99 of their answer time.

Run: ``.venv/bin/python bench/worker_sync.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchd.workers.channel import Channel  # noqa: E402


def state_payload(endpoints: int) -> dict[str, Any]:
    """A registry's worth of state, shaped as the supervisor's."""
    from orchd.loader import validate_endpoint
    from orchd.model import Config

    specs = [validate_endpoint({"name": f"ep{i}", "url": f"http://127.0.0.1:{9000 + i}",
                                "methods": ["GET", "POST"]}) for i in range(endpoints)]
    return {"config": Config(), "own_addresses": (("127.0.0.1", 8000),), "revision": 1,
            "entries": [(s.name, s, "api", time.time()) for s in specs], "admin": {},
            "targets": [(s.name, s.urls[0], "healthy", ("closed", 0.0, 0, 0.0), "")
                        for s in specs]}


async def _line_round_trips(kind: str, payload: Any, rounds: int) -> list[float]:
    loop = asyncio.get_running_loop()
    acked: asyncio.Queue[None] = asyncio.Queue()
    if kind == "socketpair":
        a, b = socket.socketpair()
        _, near = await loop.connect_accepted_socket(
            lambda: Channel(lambda m: acked.put_nowait(None), lambda: None), a)
        far_ref: list[Channel] = []
        _, far = await loop.connect_accepted_socket(
            lambda: Channel(lambda m: far_ref[0].send("ack", m[1]), lambda: None), b)
        far_ref.append(far)
    else:  # two pipes, one each way
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        near_out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w1, "wb"))
        far_out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w2, "wb"))
        near = Channel(lambda m: acked.put_nowait(None), lambda: None)
        far = Channel(lambda m: far.send("ack", m[1]), lambda: None)
        await loop.connect_read_pipe(lambda: near, os.fdopen(r2, "rb"))
        await loop.connect_read_pipe(lambda: far, os.fdopen(r1, "rb"))
        near.transport, far.transport = near_out, far_out  # type: ignore[assignment]
    times = []
    for seq in range(rounds):
        started = time.perf_counter()
        near.send("state", seq, payload)
        await acked.get()
        times.append(time.perf_counter() - started)
    near.close()
    far.close()
    return times


def line_rows(endpoints: int, rounds: int) -> list[tuple[str, str, float, float]]:
    import uvloop

    payload = state_payload(endpoints)
    size = len(pickle.dumps(("state", 0, payload), protocol=pickle.HIGHEST_PROTOCOL))
    rows = []
    for kind in ("socketpair", "pipes"):
        for what, data in ((f"state, {endpoints} endpoints ({size:,} B)", payload),
                           ("1 byte", b"x")):
            times = uvloop.run(_line_round_trips(kind, data, rounds))
            rows.append((kind, what, statistics.median(times) * 1e6,
                         sorted(times)[int(len(times) * 0.99) - 1] * 1e6))
    return rows


async def _registrations(url: str, count: int) -> list[float]:
    times = []
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            started = time.perf_counter()
            async with http.post(f"{url}/registry/endpoints", json={"config": {
                    "name": f"r{i}", "url": "http://127.0.0.1:9"}}) as r:
                assert r.status == 201, await r.text()
            times.append(time.perf_counter() - started)
    return times


def end_to_end(workers: int, count: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        config = Path(tmp, "orchestrator.yaml")
        config.write_text(yaml.safe_dump({"log_level": "WARNING",
                                          "health_check": {"enabled": False},
                                          "server": {"workers": workers, "access_log": False},
                                          "endpoints": []}))
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchd", "--config", str(config), "--port", str(port),
             "--state-dir", f"{tmp}/state", "--control-socket", "none"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    time.sleep(0.1)
            time.sleep(1.0)  # the workers, after the port opens
            times = asyncio.run(_registrations(url, count))
        finally:
            proc.terminate()
            proc.wait(30)
    ordered = sorted(times)
    return statistics.median(times) * 1e3, ordered[int(len(ordered) * 0.99) - 1] * 1e3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoints", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2000)
    p.add_argument("--registrations", type=int, default=200)
    args = p.parse_args()
    print(f"# worker line: a message and its acknowledgement, {args.rounds} rounds "
          f"({time.strftime('%Y-%m-%d %H:%M:%S')}, load {os.getloadavg()[0]:.2f})")
    print(f"{'line':<12} {'message':<36} {'median µs':>10} {'p99 µs':>10}")
    for kind, what, median, p99 in line_rows(args.endpoints, args.rounds):
        print(f"{kind:<12} {what:<36} {median:>10.1f} {p99:>10.1f}")
    print(f"\n# API registration answered after every worker applied it, {args.registrations}"
          " one after the other")
    print(f"{'workers':<8} {'median ms':>10} {'p99 ms':>10}")
    for workers in (1, 2):
        median, p99 = end_to_end(workers, args.registrations)
        print(f"{workers:<8} {median:>10.2f} {p99:>10.2f}")


if __name__ == "__main__":
    main()
