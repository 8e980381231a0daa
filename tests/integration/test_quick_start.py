"""docs/quick-start.md, followed as a new user would: its commands, in order, with the
executables `make run` installs (.venv/bin), and its outputs compared with what they print."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support import ROOT, free_port, short_tmpdir, wait_until

DOC = (ROOT / "docs" / "quick-start.md").read_text()
BIN = Path(sys.executable).parent  # .venv/bin: orchd, orchctl, python with aiohttp


def _get(url: str, data: bytes | None = None) -> dict[str, object]:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_the_quick_start_says_how_to_reach_the_installed_commands() -> None:
    # After `make run`, orchd, orchctl and the backend's aiohttp live in .venv only.
    make_run = DOC.index("make run")
    activate = DOC.index(". .venv/bin/activate")
    first_orchd = DOC.index("$ orchd ")
    assert make_run < activate < first_orchd
    # Section 4 starts a second orchd on make run's port: it says to stop the first.
    section4 = DOC[DOC.index("## 4."):DOC.index("## 5.")]
    assert "stop that one first" in section4


def test_the_quick_start_runs_as_written() -> None:
    work = short_tmpdir()
    backend_port, port = free_port(), free_port()
    config = work / "orchestrator.yaml"
    minimal = (ROOT / "docs" / "examples" / "minimal.yaml").read_text()
    assert "127.0.0.1:9001" in minimal
    config.write_text(minimal.replace("9001", str(backend_port)))
    backend = subprocess.Popen([str(BIN / "python"), "docs/examples/echo_backend.py",
                                str(backend_port)], cwd=ROOT)
    daemon = None
    try:
        # 3. the check, as the doc shows it
        check = subprocess.run([str(BIN / "orchd"), "--check", "--config", "orchestrator.yaml"],
                               cwd=work, capture_output=True, text=True, timeout=30, check=False)
        assert check.returncode == 0, check.stderr
        assert check.stdout.strip() in DOC, check.stdout
        # 4. start it
        sock = work / "orchd.sock"
        daemon = subprocess.Popen(
            [str(BIN / "orchd"), "--config", "orchestrator.yaml", "--state-dir", "./state",
             "--control-socket", "./orchd.sock", "--port", str(port)],
            cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return bool(_get(f"{url}/health/ready")["ready"])
            except OSError:
                return False

        wait_until(ready, 20, what="orchd to be ready")
        wait_until(lambda: _ok(f"{url}/orchestrator/echo/users/7"), 10, what="the backend")
        assert _get(f"{url}/orchestrator/echo/users/7")["path"] == "/users/7"
        # 5. orchctl add, then the file edit with the doc's pause
        env = {"ORCHCTL_SOCKET": str(sock), "PATH": f"{BIN}:/usr/bin:/bin"}
        added = subprocess.run(
            [str(BIN / "orchctl"), "endpoints", "add", "orders",
             f"http://127.0.0.1:{backend_port}/orders", "--method", "GET", "--method", "POST"],
            env=env, capture_output=True, text=True, timeout=30, check=False)
        assert added.returncode == 0, added.stderr
        assert _get(f"{url}/orchestrator/orders/new", b"{}")["path"] == "/orders/new"
        pause = re.search(r"^\$ sleep (\d+(?:\.\d+)?)", DOC, re.M)
        assert pause is not None, "the quick start waits for the watch before the request"
        with config.open("a") as f:
            f.write(f"  - name: billing\n    url: http://127.0.0.1:{backend_port}/billing\n")
        time.sleep(float(pause.group(1)))
        assert _get(f"{url}/orchestrator/billing/invoices")["path"] == "/billing/invoices"
    finally:
        for proc in (daemon, backend):
            if proc is not None:
                proc.terminate()
                proc.wait(20)


def _ok(url: str) -> bool:
    try:
        _get(url)
        return True
    except OSError:
        return False
