"""Packaging and the shortest path through the product: install, check, start, proxy."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from orchd import __version__
from tests.support import ROOT, base_config

BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_python_m_orchd_version() -> None:
    proc = run(sys.executable, "-m", "orchd", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"orchd {__version__}"


def test_console_scripts_declared_and_installed() -> None:
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")
               if ep.name in ("orchd", "orchctl")}
    assert scripts["orchd"] == "orchd.cli:main"
    assert scripts["orchctl"] == "orchctl.main:main"
    orchd = BIN / "orchd"
    assert orchd.is_file()
    proc = run(str(orchd), "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"orchd {__version__}"
    assert (BIN / "orchctl").is_file()


def test_main_py_check_on_the_example_config() -> None:
    proc = run(sys.executable, "main.py", "--check", "-c", "etc/orchestrator.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "configuration etc/orchestrator.yaml is valid (2 endpoints)" in proc.stdout


async def test_proxy_roundtrip(orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    daemon = orchd_factory(base_config({"name": "echo", "url": f"{up.url}/api",
                                        "methods": ["GET", "POST"]}))
    async with http.post(f"{daemon.url}/orchestrator/echo/items/1?a=1&a=2",
                         data=b"hello", headers={"Authorization": "Bearer abc"}) as r:
        assert r.status == 200
        body = await r.json()
        assert r.headers["X-Endpoint-ID"] == "echo"
        assert r.headers["X-Request-ID"]
    assert body["raw_path"] == "/api/items/1?a=1&a=2"
    assert body["body"] == "hello"
    assert body["headers"]["Authorization"] == "Bearer abc"
    assert body["headers"]["X-Request-ID"] == r.headers["X-Request-ID"]
    async with http.get(f"{daemon.url}/health") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "healthy"
